//! `kubectl peers` on the hub, as the user runs it from the laptop: every member Connected,
//! with a handshake age, an RTT (QUIC: quinn's estimate; WireGuard: the last handshake's round
//! trip, timed by the dataplane core on the hub's side too) and byte counters, in the table and
//! in `-o json`.

use std::path::Path;

use fleetboard_tests::user_shell::UserShell;

/// The table's columns, in order.
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

/// A member's live counters, from `kubectl peers -o json`.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub rx: u64,
    pub tx: u64,
}

/// Checks every column of every member's row in `kubectl peers` (table and JSON): the member
/// is listed, not the hub, with a block holding `node_block` (one of its nodes'), an endpoint, `transport`, Connected, a recent
/// handshake, an RTT and byte counters. Returns each member's counters (in `members`' order).
pub fn check(
    user: &UserShell,
    hub_kubeconfig: &Path,
    members: &[(&str, ipnet::Ipv4Net)],
    transport: &str,
) -> anyhow::Result<Vec<Counters>> {
    let table = user.run(hub_kubeconfig, "kubectl peers -n fleetboard-system")?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    anyhow::ensure!(header == COLUMNS, "kubectl peers header:\n{table}");
    let json = user.run(hub_kubeconfig, "kubectl peers -n fleetboard-system -o json")?;
    let doc: serde_json::Value = serde_json::from_str(&json)?;
    let rows = doc["clusters"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no clusters in:\n{json}"))?;
    let mut out = Vec::new();
    for (id, block) in members {
        let row = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.first() == Some(id))
            .ok_or_else(|| anyhow::anyhow!("{id} missing:\n{table}"))?;
        // CLUSTER HUB CIDRS ENDPOINT TRANSPORT CONNECTED <age> ago RTT RX TX AGE
        anyhow::ensure!(
            row.len() == 12
                && row[1] == "no"
                && row[2].split(',').any(|c| c
                    .parse::<ipnet::Ipv4Net>()
                    .is_ok_and(|n| n.contains(&block.network())))
                && row[3] != "-"
                && row[4] == transport
                && row[5] == "True"
                && row[7] == "ago"
                && row[8] != "-"
                && row[9..11].iter().all(|c| *c != "-"),
            "{id}'s row {row:?}:\n{table}"
        );
        let j = rows
            .iter()
            .find(|r| r["cluster"] == *id)
            .ok_or_else(|| anyhow::anyhow!("{id} missing in -o json:\n{json}"))?;
        // QUIC's handshake age is its connection's.
        let rtt_ok = j["rttMicros"].as_u64().is_some();
        let (rx, tx) = (j["rxBytes"].as_u64(), j["txBytes"].as_u64());
        anyhow::ensure!(
            j["connected"] == "True"
                && j["handshakeAgeSeconds"].as_i64().is_some_and(|a| a >= 0)
                && rtt_ok
                && rx.is_some()
                && tx.is_some(),
            "{id} in -o json: {j}"
        );
        out.push(Counters {
            rx: rx.unwrap_or_default(),
            tx: tx.unwrap_or_default(),
        });
    }
    Ok(out)
}
