//! Turns the raw runs of perf/run.sh (JSON lines `{"case","run","metric","value"}`) into
//! `results.json` (every run, medians, min-max), the harness section of `RESULTS.md`
//! (between `<!-- harness:begin -->` and `<!-- harness:end -->`, the rest of the file is kept)
//! and `results.png` (bar chart).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fleetboard_perf::stats::Summary;
use serde::Deserialize;

mod chart {
    include!("../chart.rs");
}

#[derive(Parser)]
#[command(about = "Report of perf/run.sh: table, JSON and chart")]
struct Args {
    /// The runs, one JSON object per line.
    #[arg(long)]
    runs: PathBuf,
    /// Run description (JSON object: command, machine, date, commit, versions, ...).
    #[arg(long)]
    meta: PathBuf,
    /// Markdown file whose harness section is replaced.
    #[arg(long)]
    markdown: PathBuf,
    /// JSON output.
    #[arg(long)]
    json: PathBuf,
    /// PNG output.
    #[arg(long)]
    png: PathBuf,
}

#[derive(Deserialize)]
struct Run {
    case: String,
    run: u32,
    metric: String,
    value: f64,
}

/// Cases in table order: id and label.
const CASES: &[(&str, &str)] = &[
    ("raw", "raw veth (no tunnel)"),
    ("fb-wg", "fleetboard wg"),
    ("fb-quic", "fleetboard quic"),
    ("fb-wg-relay", "fleetboard wg, relayed by hub (end to end)"),
    (
        "fb-wg-hub-decrypt",
        "fleetboard wg, hub decrypts + re-encrypts",
    ),
    ("wireguard-go", "wireguard-go"),
    ("boringtun", "boringtun-cli"),
];

type Table = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let text = std::fs::read_to_string(&a.runs).with_context(|| a.runs.display().to_string())?;
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&a.meta).with_context(|| a.meta.display().to_string())?,
    )?;
    let mut table: Table = BTreeMap::new();
    let mut raw_runs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: Run = serde_json::from_str(line).with_context(|| format!("bad run line: {line}"))?;
        raw_runs.push(
            serde_json::json!({"case": r.case, "run": r.run, "metric": r.metric, "value": r.value}),
        );
        table
            .entry(r.case)
            .or_default()
            .entry(r.metric)
            .or_default()
            .push(r.value);
    }
    let sum = |case: &str, metric: &str| -> Option<Summary> {
        table
            .get(case)
            .and_then(|m| m.get(metric))
            .and_then(|v| Summary::of(v))
    };

    // JSON: every run plus the summaries.
    let mut summaries = serde_json::Map::new();
    for (case, metrics) in &table {
        let mut m = serde_json::Map::new();
        for (metric, values) in metrics {
            if let Some(s) = Summary::of(values) {
                m.insert(metric.clone(), serde_json::to_value(s)?);
            }
        }
        summaries.insert(case.clone(), m.into());
    }
    let json = serde_json::json!({"meta": meta, "summary": summaries, "runs": raw_runs});
    std::fs::write(&a.json, serde_json::to_string_pretty(&json)? + "\n")?;

    let md = markdown(&meta, &sum);
    let old = std::fs::read_to_string(&a.markdown).unwrap_or_default();
    std::fs::write(&a.markdown, splice(&old, &md))?;

    let bars: Vec<chart::Bar> = CASES
        .iter()
        .filter(|(id, _)| table.contains_key(*id))
        .map(|(id, _)| chart::Bar {
            label: id.to_string(),
            tcp1: sum(id, "tcp1_gbps"),
            tcp4: sum(id, "tcp4_gbps"),
            rtt_p50: sum(id, "rtt_p50_us"),
            rtt_p99: sum(id, "rtt_p99_us"),
        })
        .collect();
    let title = format!(
        "FleetBoard vs userspace tunnels ({})",
        meta["date"].as_str().unwrap_or("")
    );
    chart::draw(&a.png, &title, &bars)?;
    println!(
        "perf-report: wrote {}, {}, {}",
        a.markdown.display(),
        a.json.display(),
        a.png.display()
    );
    Ok(())
}

const BEGIN: &str = "<!-- harness:begin -->";
const END: &str = "<!-- harness:end -->";

/// Replaces the harness section of `old` with `section` (appended when absent).
fn splice(old: &str, section: &str) -> String {
    let new = format!("{BEGIN}\n{section}{END}");
    match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], new, &old[e + END.len()..]),
        _ if old.trim().is_empty() => format!("# Performance\n\n{new}\n"),
        _ => format!("{}\n\n{new}\n", old.trim_end()),
    }
}

fn cell(s: Option<Summary>, digits: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.runs == 1 || s.min == s.max => format!("{:.*}", digits, s.median),
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
    }
}

fn markdown(meta: &serde_json::Value, sum: &dyn Fn(&str, &str) -> Option<Summary>) -> String {
    let m = |k: &str| meta[k].as_str().unwrap_or("?").to_string();
    let mut s = String::new();
    s += &format!(
        "## Side by side: fleetboard vs wireguard-go vs boringtun-cli\n\n\
         Command (as root, from the repository root): `{}`\n\n\
         Run {} at `{}`: {} run(s) per case, {} s per iperf3 test, UDP at {} \
         (1400-byte datagrams inside the tunnel). {}\n\n\
         Machine: {}\n\n\
         Versions: {}\n\n",
        m("command"),
        m("date"),
        m("commit"),
        meta["runs"],
        meta["duration"],
        m("udp_rate"),
        m("note"),
        m("machine"),
        m("versions"),
    );
    s += "Cells: median (min–max) over the runs. RTT: `perf-probe` UDP echo, one probe at a time, \
          64-byte payload. CPU s/GB: user+system CPU of the tunnel processes (from \
          `/proc/<pid>/stat`) during the TCP tests divided by the bytes moved (kernel softirq work \
          on their behalf is not included; for raw veth there is no tunnel process). RSS: idle = \
          VmRSS after the tunnel is up, peak = VmHWM after the run, the largest tunnel process \
          (relay: hub included). Drops: `nstat` UdpRcvbufErrors (+Udp6) summed over the \
          namespaces during the TCP tests / during the UDP test; TCP retransmits from iperf3.\n\n";
    s += "| case | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP loss % | RTT p50 µs | RTT p99 µs | \
          added p50 µs | CPU s/GB | RSS idle MiB | RSS peak MiB | UdpRcvbufErrors TCP / UDP | TCP retransmits 1 / 4 |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let raw_p50 = sum("raw", "rtt_p50_us").map(|x| x.median);
    for (id, label) in CASES {
        if sum(id, "tcp1_gbps").is_none() && sum(id, "rtt_p50_us").is_none() {
            continue;
        }
        let added = match (sum(id, "rtt_p50_us"), raw_p50) {
            (Some(p), Some(r)) if *id != "raw" => format!("{:.0}", p.median - r),
            _ => "–".into(),
        };
        s += &format!(
            "| {label} | {} | {} | {} | {} | {} | {added} | {} | {} | {} | {} / {} | {} / {} |\n",
            cell(sum(id, "tcp1_gbps"), 2),
            cell(sum(id, "tcp4_gbps"), 2),
            cell(sum(id, "udp_loss_pct"), 2),
            cell(sum(id, "rtt_p50_us"), 0),
            cell(sum(id, "rtt_p99_us"), 0),
            cell(sum(id, "cpu_s_per_gb"), 2),
            cell(sum(id, "rss_idle_mib"), 1),
            cell(sum(id, "rss_peak_mib"), 1),
            cell(sum(id, "rcvbuf_tcp"), 0),
            cell(sum(id, "rcvbuf_udp"), 0),
            cell(sum(id, "tcp1_retrans"), 0),
            cell(sum(id, "tcp4_retrans"), 0),
        );
    }
    if CASES
        .iter()
        .any(|(id, _)| sum(id, "rtt_run_us_per_probe").is_some())
    {
        s += "\n### Where the RTT goes (tunnel processes, per probe round trip)\n\n\
              From `/proc/<pid>/task/*/schedstat` around the RTT probe: time running on a CPU, \
              time runnable but waiting for one, and wake-ups. What the added RTT has beyond \
              them is wake-up latency the scheduler does not count (idle exit, IPIs) plus the \
              kernel's own path (veth, UDP, TUN).\n\n\
              | case | added p50 µs | running µs | run-queue wait µs | wake-ups |\n|---|---|---|---|---|\n";
        for (id, label) in CASES {
            if sum(id, "rtt_run_us_per_probe").is_none() {
                continue;
            }
            let added = match (sum(id, "rtt_p50_us"), raw_p50) {
                (Some(p), Some(r)) => format!("{:.0}", p.median - r),
                _ => "–".into(),
            };
            s += &format!(
                "| {label} | {added} | {} | {} | {} |\n",
                cell(sum(id, "rtt_run_us_per_probe"), 1),
                cell(sum(id, "rtt_runq_us_per_probe"), 1),
                cell(sum(id, "rtt_wakeups_per_probe"), 1),
            );
        }
    }
    s += "\n### Targets of issue 9 (ratios of medians, this run)\n\n";
    s += "| target | measured | met |\n|---|---|---|\n";
    let med = |c: &str, k: &str| sum(c, k).map(|x| x.median);
    let mut ratio = |name: &str, num: Option<f64>, den: Option<f64>, want: f64| {
        let (v, ok) = match (num, den) {
            (Some(n), Some(d)) if d > 0.0 => {
                let r = n / d;
                (
                    format!("{r:.2}×"),
                    if r >= want {
                        "yes".to_string()
                    } else {
                        format!("no, {:.0} % short", (1.0 - r / want) * 100.0)
                    },
                )
            }
            _ => ("–".into(), "not measured".into()),
        };
        s += &format!("| {name} | {v} | {ok} |\n");
    };
    ratio(
        "fleetboard wg / wireguard-go, TCP 1 stream ≥ 1.5×",
        med("fb-wg", "tcp1_gbps"),
        med("wireguard-go", "tcp1_gbps"),
        1.5,
    );
    ratio(
        "fleetboard wg / boringtun-cli, TCP 1 stream ≥ 10×",
        med("fb-wg", "tcp1_gbps"),
        med("boringtun", "tcp1_gbps"),
        10.0,
    );
    ratio(
        "fleetboard wg / wireguard-go, TCP 4 streams ≥ 1.5×",
        med("fb-wg", "tcp4_gbps"),
        med("wireguard-go", "tcp4_gbps"),
        1.5,
    );
    ratio(
        "fleetboard quic / wireguard-go, TCP 1 stream ≥ 1.0×",
        med("fb-quic", "tcp1_gbps"),
        med("wireguard-go", "tcp1_gbps"),
        1.0,
    );
    ratio(
        "fleetboard wg relayed / direct, TCP 1 stream ≥ 0.8×",
        med("fb-wg-relay", "tcp1_gbps"),
        med("fb-wg", "tcp1_gbps"),
        0.8,
    );
    // CPU per GB does not depend on how much CPU the machine had spare: on a shared machine
    // it is the fairest comparison (lower is better; the ratio is "times less CPU").
    for (other, label) in [
        ("wireguard-go", "wireguard-go"),
        ("boringtun", "boringtun-cli"),
    ] {
        let (v, ok) = match (med("fb-wg", "cpu_s_per_gb"), med(other, "cpu_s_per_gb")) {
            (Some(f), Some(o)) if f > 0.0 => (format!("{:.2}× less", o / f), "(no target)".into()),
            _ => ("–".to_string(), "not measured".to_string()),
        };
        s += &format!("| fleetboard wg CPU per GB vs {label} | {v} | {ok} |\n");
    }
    let mut limit = |name: &str, v: Option<f64>, max: f64, unit: &str| {
        let (val, ok) = match v {
            Some(v) => (
                format!("{v:.1} {unit}"),
                if v <= max {
                    "yes".to_string()
                } else {
                    format!("no, {:.1} {unit} over", v - max)
                },
            ),
            None => ("–".into(), "not measured".into()),
        };
        s += &format!("| {name} | {val} | {ok} |\n");
    };
    limit(
        "fleetboard wg added RTT p50 over raw veth ≤ 100 µs",
        med("fb-wg", "rtt_p50_us").zip(raw_p50).map(|(a, b)| a - b),
        100.0,
        "µs",
    );
    limit(
        "fleetboard wg RSS idle ≤ 20 MiB",
        med("fb-wg", "rss_idle_mib"),
        20.0,
        "MiB",
    );
    limit(
        "fleetboard wg RSS under load ≤ 64 MiB",
        med("fb-wg", "rss_peak_mib"),
        64.0,
        "MiB",
    );
    // During the UDP test iperf3's own receiving socket overflows too (raw veth shows it):
    // the TCP tests are the ones where only the tunnels' sockets can drop.
    limit(
        "fleetboard wg UdpRcvbufErrors during the TCP tests = 0",
        med("fb-wg", "rcvbuf_tcp"),
        0.0,
        "",
    );
    s += "\n![chart](results.png)\n\n";
    s
}
