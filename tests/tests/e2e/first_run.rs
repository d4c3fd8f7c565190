//! The demo's process-only setup (`scripts/demo.sh --processes` = `fleetboard-first-run
//! --processes`) works: three clusters, charts installed with helm, hub and agents joined as
//! processes, `kubectl peers` shows the hub and both members, every column filled as a user
//! reads it, traffic flows between them and a throughput is printed. The default demo (real
//! nodes) is the setup `kube_fleet::` tests; `scripts/demo.sh --exit` runs it end to end.
//!
//! Needs root, the workspace binaries (`cargo build --workspace --bins`) and the Kubernetes
//! test tools (`tests/k8s/tools ensure`).

use std::collections::BTreeMap;
use std::process::Command;

use fleetboard_tests::binaries::bin;
use fleetboard_tests::netns::require_net_admin;

/// The columns of `kubectl peers`, in order.
const COLUMNS: [&str; 11] = [
    "CLUSTER",
    "HUB",
    "CIDRS",
    "ENDPOINT",
    "TRANSPORT",
    "CONNECTED",
    "HANDSHAKE",
    "RTT",
    "RX",
    "TX",
    "AGE",
];

/// The `kubectl peers` table in `out`: one map from column to cell per row, by cluster. The
/// cells are cut at the header's column starts (a cell may hold a space: `5s ago`).
fn peers_table(out: &str) -> BTreeMap<String, BTreeMap<&'static str, String>> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("CLUSTER "));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no `kubectl peers` table in:\n{out}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        COLUMNS,
        "{header}"
    );
    let mut starts: Vec<usize> = Vec::new();
    for c in COLUMNS {
        let from = starts.last().map_or(0, |s| s + 1);
        starts.push(from + header[from..].find(c).unwrap());
    }
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let cell = |i: usize| {
            let end = starts.get(i + 1).copied().unwrap_or(line.len());
            line.get(starts[i]..end.min(line.len()))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let row: BTreeMap<&'static str, String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, cell(i)))
            .collect();
        rows.insert(row["CLUSTER"].clone(), row);
    }
    rows
}

/// `42s`, `5m12s`, `3h`, `2d4h`: an age as kubectl prints it.
fn is_age(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.split(|c: char| c.is_ascii_digit())
            .filter(|u| !u.is_empty())
            .all(|u| ["s", "m", "h", "d"].contains(&u))
}

/// A number followed by one of `units`.
fn is_figure(s: &str, units: &[&str]) -> bool {
    units.iter().any(|u| {
        s.strip_suffix(u)
            .is_some_and(|n| n.parse::<f64>().is_ok_and(|v| v >= 0.0))
    })
}

#[test]
fn first_run_brings_up_a_cluster_set_and_moves_traffic() {
    require_net_admin();
    let out = Command::new(bin("fleetboard-first-run"))
        .args(["--processes", "--exit", "--seconds", "2"])
        .env("FLEETBOARD_BIN_DIR", bin("fleetboard").parent().unwrap())
        .output()
        .expect("running fleetboard-first-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "first run failed:\n{stdout}\n{stderr}"
    );
    // `kubectl peers` lists the hub and both members, and nothing else.
    let rows = peers_table(&stdout);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["a", "b", "hub"],
        "{stdout}"
    );
    for (cluster, row) in &rows {
        let hub = cluster == "hub";
        let bad = |column: &str| format!("{cluster}'s {column} {:?} in:\n{stdout}", row[column]);
        assert_eq!(row["HUB"], if hub { "yes" } else { "no" }, "{}", bad("HUB"));
        assert!(
            row["CIDRS"]
                .split(',')
                .all(|c| c.parse::<ipnet::IpNet>().is_ok()),
            "{}",
            bad("CIDRS")
        );
        assert!(
            row["ENDPOINT"].parse::<std::net::SocketAddr>().is_ok(),
            "{}",
            bad("ENDPOINT")
        );
        assert_eq!(row["TRANSPORT"], "wg", "{}", bad("TRANSPORT"));
        assert!(is_age(&row["AGE"]), "{}", bad("AGE"));
        // The hub is up; every member connected to it.
        assert_eq!(row["CONNECTED"], "True", "{}", bad("CONNECTED"));
        if hub {
            // The hub has no tunnel to itself: no handshake, round trip or bytes.
            for column in ["HANDSHAKE", "RTT", "RX", "TX"] {
                assert_eq!(row[column], "-", "{}", bad(column));
            }
            continue;
        }
        // A member: a recent handshake, its round trip, the hub's byte counters (the table is
        // printed before the iperf3 run: the counts themselves may still be 0).
        assert!(
            row["HANDSHAKE"].strip_suffix(" ago").is_some_and(is_age),
            "{}",
            bad("HANDSHAKE")
        );
        assert!(is_figure(&row["RTT"], &["us", "ms", "s"]), "{}", bad("RTT"));
        for column in ["RX", "TX"] {
            assert!(
                is_figure(&row[column], &["B", "KiB", "MiB", "GiB", "TiB"]),
                "{}",
                bad(column)
            );
        }
    }
    let rate = stdout
        .lines()
        .find_map(|l| l.strip_prefix("throughput a -> b over wg via the hub: "))
        .and_then(|r| r.strip_suffix(" Gbit/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no throughput line in:\n{stdout}\n{stderr}"));
    assert!(rate > 0.0, "no traffic moved: {rate}");
}
