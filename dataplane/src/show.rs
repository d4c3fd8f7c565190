//! `fleetboard dataplane show`: the status in the style of `wg show`.

use std::fmt::Write as _;

use fleetboard_dataplane_core::DataplaneStatus;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// A round-trip time from microseconds: `850 us`, `1.25 ms`, `32.1 ms`, `1.20 s`.
fn rtt(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros} us"),
        1_000..10_000 => format!("{:.2} ms", micros as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1} ms", micros as f64 / 1e3),
        _ => format!("{:.2} s", micros as f64 / 1e6),
    }
}

/// `100.64.0.1: rtt p50 1.25 ms, loss 0%, last reply 0.3 s ago`.
fn probe(p: &fleetboard_dataplane_core::PeerStatus, addr: std::net::IpAddr) -> String {
    let mut s = format!("{addr}:");
    match p.probe_rtt_p50_micros {
        Some(r) => {
            let _ = write!(s, " rtt p50 {},", rtt(r));
        }
        None => s.push_str(" no reply in the window,"),
    }
    if let Some(l) = p.probe_loss {
        let _ = write!(s, " loss {:.0}%,", l * 100.0);
    }
    match p.probe_last_reply_millis_ago {
        Some(ms) => {
            let _ = write!(s, " last reply {:.1} s ago", ms as f64 / 1e3);
        }
        None => s.push_str(" never answered"),
    }
    if p.probe_alive == Some(false) {
        s.push_str(" (DEAD)");
    }
    s
}

/// Formats the status like `wg show`.
pub fn format(s: &DataplaneStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "interface: {}", s.interface);
    let _ = writeln!(o, "  public key: {}", s.public_key);
    let _ = writeln!(o, "  listening port: {}", s.listen_port);
    let _ = writeln!(o, "  routes: {}", s.routes);
    if let Some(a) = s.probe_address {
        let c = &s.probes;
        let _ = writeln!(
            o,
            "  probes on {a}: {} sent, {} replies, {} answered, {} echo, {} malformed, {} unexpected",
            c.requests_sent,
            c.replies,
            c.requests_answered,
            c.echo_requests,
            c.malformed,
            c.unexpected
        );
    }
    if s.relayed_packets > 0 {
        let _ = writeln!(
            o,
            "  relayed: {} packets, {} bytes (forwarded end to end, not decrypted)",
            s.relayed_packets, s.relayed_bytes
        );
    }
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(r, v)| format!("{}={v}", r.as_str()))
        .collect();
    let _ = writeln!(
        o,
        "  drops: {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    );
    for p in &s.peers {
        let _ = writeln!(o);
        let _ = writeln!(o, "peer: {}", p.public_key);
        if let Some(n) = &p.name {
            let _ = writeln!(o, "  name: {n}");
        }
        let _ = writeln!(o, "  transport: {}", p.transport);
        if let Some(v) = p.via {
            let _ = writeln!(o, "  via relay: {v}");
        }
        if let Some(e) = p.endpoint {
            let _ = writeln!(o, "  endpoint: {e}");
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(
            o,
            "  allowed ips: {}",
            if ips.is_empty() {
                "(none)".into()
            } else {
                ips.join(", ")
            }
        );
        match p.last_handshake_secs_ago {
            Some(s) => {
                let _ = writeln!(o, "  latest handshake: {s} seconds ago");
            }
            None => {
                let _ = writeln!(o, "  latest handshake: (none)");
            }
        }
        if let Some(r) = p.rtt_micros {
            // wg: the latest handshake's round trip; quic: the connection's estimate.
            let _ = writeln!(o, "  rtt: {}", rtt(r));
        }
        if let Some(a) = p.probe_address {
            let _ = writeln!(o, "  probe: {}", probe(p, a));
        }
        let c = &p.counters;
        let _ = writeln!(
            o,
            "  transfer: {} received, {} sent",
            bytes(c.rx_bytes),
            bytes(c.tx_bytes)
        );
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(o, "  persistent keepalive: every {k} seconds");
        }
        if let Some(m) = p.max_packet {
            let _ = writeln!(o, "  tunnel mtu: {m}");
        }
        let pd: Vec<String> = c
            .drops
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(r, v)| format!("{}={v}", r.as_str()))
            .collect();
        if !pd.is_empty() {
            let _ = writeln!(o, "  drops: {}", pd.join(" "));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_figures_and_a_dead_peer_are_shown() {
        let drops = vec![0u64; fleetboard_dataplane_core::drop::DROP_REASONS];
        let st: DataplaneStatus = serde_json::from_value(serde_json::json!({
            "public_key": fleetboard_dataplane_core::SecretKey::from_random_bytes([1; 32])
                .public_key().to_base64(),
            "listen_port": 31820, "interface": "fb0", "routes": 1,
            "drops": drops,
            "probe_address": "100.64.1.1",
            "probes": { "requests_sent": 9, "replies": 7, "requests_answered": 8,
                "echo_requests": 2, "malformed": 1, "unexpected": 0 },
            "peers": [{
                "public_key": fleetboard_dataplane_core::SecretKey::from_random_bytes([2; 32])
                    .public_key().to_base64(),
                "name": "hub", "transport": "wg", "endpoint": null, "allowed_ips": [],
                "last_handshake_secs_ago": null, "persistent_keepalive": null,
                "counters": { "rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0, "tx_packets": 0,
                    "drops": drops },
                "probe_address": "100.64.0.1", "probe_rtt_p50_micros": 1250,
                "probe_loss": 0.5, "probe_last_reply_millis_ago": 4200, "probe_alive": false
            }]
        }))
        .unwrap();
        let text = format(&st);
        assert!(
            text.contains(
                "probes on 100.64.1.1: 9 sent, 7 replies, 8 answered, 2 echo, 1 malformed, 0 unexpected"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "probe: 100.64.0.1: rtt p50 1.25 ms, loss 50%, last reply 4.2 s ago (DEAD)"
            ),
            "{text}"
        );
    }

    #[test]
    fn rtt_is_printed_in_readable_units() {
        assert_eq!(rtt(850), "850 us");
        assert_eq!(rtt(1_250), "1.25 ms");
        assert_eq!(rtt(32_100), "32.1 ms");
        assert_eq!(rtt(1_200_000), "1.20 s");
    }
}
