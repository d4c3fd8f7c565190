//! `fleetboard-first-run`: the newcomer's first run, on this one machine.
//!
//! Brings up a hub cluster and two member clusters (a real kube-apiserver + etcd each, nodes as
//! network namespaces on a private underlay in 198.18.0.0/24), installs the hub chart and the
//! agent chart with `helm` exactly as the hub chart's NOTES.txt tells a user to, starts
//! `fleetboard hub` and one `fleetboard agent` per node as processes inside the node
//! namespaces, prints `kubectl peers`, then moves traffic between the members through the hub
//! and prints the throughput. Everything is torn down on exit (Ctrl-C, or `--exit`).
//!
//! Run it with `scripts/demo.sh` (builds everything first). Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fleetboard_tests::binaries::bin;
use fleetboard_tests::fleet::{Fleet, FleetOptions};
use fleetboard_tests::kube::eventually;

/// The newcomer's first run: hub + 2 member clusters, charts, agents, traffic.
#[derive(Parser, Debug)]
struct Args {
    /// Tunnel transport: wg or quic.
    #[arg(long, default_value = "wg", value_parser = ["wg", "quic"])]
    transport: String,
    /// Seconds of iperf3 traffic between the members.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Tear down right after the traffic instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The `fleetboard` and `kubectl-peers` binaries of the same build sit next to this one.
    if std::env::var_os("FLEETBOARD_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        let dir: PathBuf = exe.parent().context("binary folder")?.to_path_buf();
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("FLEETBOARD_BIN_DIR", dir) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn step(t0: Instant, what: &str) {
    println!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
}

async fn run(args: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let transport: &'static str = if args.transport == "quic" {
        "quic"
    } else {
        "wg"
    };
    step(
        t0,
        "starting 3 clusters (hub, a, b), installing the charts with helm, starting hub and agents",
    );
    let fleet = Fleet::start(
        FleetOptions {
            transport,
            helm: true,
            ..FleetOptions::default()
        },
        Vec::new(),
    )
    .await?;
    step(t0, "waiting for both members to connect to the hub");
    let a1 = fleet.node("a1");
    let b1 = fleet.node("b1");
    let deadline = Duration::from_secs(180);
    let every = Duration::from_millis(500);
    let (ip_a, ip_b) = eventually(
        "node addresses in both members",
        deadline,
        every,
        || async {
            Ok(
                match (fleet.tun_ip("a1").await?, fleet.tun_ip("b1").await?) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.logs()))?;
    eventually(
        &format!("{ip_a} reaching {ip_b}"),
        deadline,
        every,
        || async { Ok(fleet.nodes[a1].ping_once(&ip_b).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.logs()))?;
    step(
        t0,
        "member a reaches member b through the hub; `kubectl peers` on the hub:",
    );
    // Give the hub one status round so the table shows live handshakes.
    let peers = eventually(
        "kubectl peers showing both members connected",
        deadline,
        every,
        || async {
            let out = std::process::Command::new(bin("kubectl-peers"))
                .arg("--kubeconfig")
                .arg(fleet.hub.cluster.kubeconfig())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let connected = text.lines().filter(|l| l.contains("True")).count();
            Ok((out.status.success() && connected >= 2).then_some(text))
        },
    )
    .await
    .unwrap_or_else(|e| format!("({e})\n"));
    println!("{peers}");

    step(
        t0,
        &format!(
            "iperf3 for {}s: node a1 ({ip_a}) -> node b1 ({ip_b})",
            args.seconds
        ),
    );
    let b_ns = &fleet.nodes[b1].ns;
    let mut server = b_ns
        .command("iperf3")
        .args(["-s", "-1", "-B", &ip_b])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (apt install iperf3)")?;
    let result = eventually("iperf3 run", Duration::from_secs(60), every, || async {
        let out = fleet.nodes[a1]
            .ns
            .command("iperf3")
            .args(["-c", &ip_b, "-t", &args.seconds.to_string(), "-J"])
            .output()?;
        if !out.status.success() {
            return Ok(None); // server not listening yet
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["end"]["sum_received"]["bits_per_second"].as_f64())
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    match result {
        Ok(bps) => println!(
            "throughput a -> b over {transport} via the hub: {:.2} Gbit/s",
            bps / 1e9
        ),
        Err(e) => println!("iperf3 failed: {e}"),
    }
    step(t0, "done");
    if !args.exit {
        println!(
            "The cluster set keeps running. Hub kubeconfig: {}\nPress Ctrl-C to tear everything down.",
            fleet.hub.cluster.kubeconfig().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(fleet);
    Ok(())
}
