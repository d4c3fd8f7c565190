//! Data-path probes (issue 18 item 1), with real dataplanes in namespaces: every tunnel
//! address answers ping through the tunnel (answered by the dataplane's probe interface, not
//! the kernel), status shows probe RTT and zero loss on a clean link, and a killed peer's
//! loss goes to 1.0 within seconds.

use std::time::{Duration, Instant};

use crate::dataplane_support::*;
use fleetboard_dataplane::core::config::ProbeSettings;
use fleetboard_dataplane::core::{DataplaneStatus, Transport};
use fleetboard_tests::process::wait_for;

/// Probes every 100 ms over the last 10, lost after 500 ms, dead after 300 ms without an
/// answer: a dead peer is reported dead about 0.3 s after its last answer and shows 100 % loss
/// once the window turned over (about 1 s).
const SETTINGS: ProbeSettings = ProbeSettings {
    interval_ms: 100,
    window: 10,
    timeout_ms: 500,
    dead_after_ms: 300,
};

#[test]
fn wg_tunnel_addresses_answer_ping_and_probes_see_a_dead_peer() {
    probes(Transport::Wg, false);
}

#[test]
fn quic_tunnel_addresses_answer_ping_and_probes_see_a_dead_peer() {
    probes(Transport::Quic, false);
}

#[test]
fn wg_end_to_end_relayed_peers_probe_each_other_through_the_hub() {
    probes(Transport::Wg, true);
}

fn probes(transport: Transport, end_to_end: bool) {
    let started = Instant::now();
    let mut t = Topology::new_with(true, transport);
    let hub_key = t.hub.key.public_key();
    let (ka, kb) = (t.a.key.clone(), t.b.key.clone());
    for n in [&mut t.hub, &mut t.a, &mut t.b] {
        n.config.probe = SETTINGS;
        for p in &mut n.config.peers {
            if p.public_key == hub_key {
                p.probe_address = Some(HUB_V4.parse().unwrap());
            }
        }
    }
    if end_to_end {
        // gw-a and gw-b keep their own session; the hub only forwards its ciphertext.
        t.hub.config.relay = true;
        for (from, name, key, v4, cidrs) in [
            (
                &mut t.a,
                "gw-b",
                kb,
                B_V4,
                ["100.64.2.0/24", "fd00:64:2::/48"],
            ),
            (
                &mut t.b,
                "gw-a",
                ka,
                A_V4,
                ["100.64.1.0/24", "fd00:64:1::/48"],
            ),
        ] {
            let mut p = peer(name, &key, None, &cidrs);
            p.via = Some(hub_key);
            p.persistent_keepalive = Some(5);
            p.probe_address = Some(v4.parse().unwrap());
            from.config.peers.push(p);
        }
    }
    t.start();

    // (a) Every tunnel address answers ping from the other nodes, through the tunnel.
    for (from, to) in [
        (&t.a, B_V4),
        (&t.b, A_V4),
        (&t.a, HUB_V4),
        (&t.b, HUB_V4),
        (&t.hub, A_V4),
        (&t.hub, B_V4),
    ] {
        from.wait_ping(to, &t.logs());
    }
    for n in [&t.hub, &t.a, &t.b] {
        let p = n.status().probes;
        assert!(
            p.echo_requests >= 2,
            "{}: the dataplane answered only {} echo requests\n{}",
            n.name,
            p.echo_requests,
            t.logs()
        );
    }

    // (b) Probe RTT and zero loss on a clean link, both ways (the hub learnt the gateways'
    // addresses from their probes).
    let mut clean = vec![
        (&t.hub, "gw-a"),
        (&t.hub, "gw-b"),
        (&t.a, "hub"),
        (&t.b, "hub"),
    ];
    if end_to_end {
        clean.extend([(&t.a, "gw-b"), (&t.b, "gw-a")]);
    }
    for (n, peer) in &clean {
        let st = wait_for(
            &format!("{} probes {peer}", n.name),
            DEADLINE,
            Duration::from_millis(200),
            || {
                let st = n.status();
                let p = peer_named(&st, peer);
                let full = p.probe_last_reply_millis_ago.is_some_and(|a| a < 1000);
                Ok((full
                    && p.probe_alive == Some(true)
                    && p.probe_loss == Some(0.0)
                    && p.probe_rtt_p50_micros.is_some())
                .then_some(st))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
        let p = peer_named(&st, peer);
        println!(
            "{transport} {}: probe {} -> {peer} ({:?}): rtt p50 {} us, loss {:?}",
            if end_to_end { "end-to-end" } else { "via hub" },
            n.name,
            p.probe_address,
            p.probe_rtt_p50_micros.unwrap(),
            p.probe_loss
        );
    }
    let metrics = t.hub.http_get("/metrics");
    for m in [
        "fleetboard_peer_probe_rtt_p50_seconds{peer=\"gw-a\"",
        "fleetboard_peer_probe_up{peer=\"gw-b\"",
        "fleetboard_peer_probe_loss_ratio{peer=\"gw-b\"",
        "fleetboard_probe_packets_total{event=\"request_answered\"}",
    ] {
        assert!(metrics.contains(m), "no {m} in\n{metrics}");
    }
    let hub = t.hub.status();
    assert_eq!(
        (hub.probes.malformed, hub.probes.unexpected),
        (0, 0),
        "{:?}",
        hub.probes
    );

    // (c) gw-b dies: its probe loss goes to 1.0 and its last reply ages, within seconds.
    let killed = Instant::now();
    t.b.kill();
    let mut dead = vec![(&t.hub, "gw-b")];
    if end_to_end {
        dead.push((&t.a, "gw-b"));
    }
    for (n, peer) in &dead {
        let st: DataplaneStatus = wait_for(
            &format!("{} reports {peer} dead", n.name),
            DEADLINE,
            Duration::from_millis(20),
            || {
                let st = n.status();
                Ok((peer_named(&st, peer).probe_alive == Some(false)).then_some(st))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
        let took = killed.elapsed();
        let age = peer_named(&st, peer).probe_last_reply_millis_ago.unwrap();
        println!(
            "{transport}: {} reports {peer} dead (probe_alive false) {:.2} s after the kill \
             (last reply {age} ms ago; dead after {} ms)",
            n.name,
            took.as_secs_f64(),
            SETTINGS.dead_after_ms
        );
        assert!(
            age >= 300,
            "dead with a reply {age} ms ago (whole milliseconds)"
        );
        assert!(took < Duration::from_secs(10), "dead only after {took:?}");
    }
    for (n, peer) in dead {
        let st: DataplaneStatus = wait_for(
            &format!("{} sees {peer} dead", n.name),
            DEADLINE,
            Duration::from_millis(50),
            || {
                let st = n.status();
                let p = peer_named(&st, peer);
                Ok((p.probe_loss == Some(1.0)).then_some(st))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
        let took = killed.elapsed();
        let p = peer_named(&st, peer);
        let age = p.probe_last_reply_millis_ago.unwrap();
        println!(
            "{transport}: {} sees {peer} at 100% probe loss {:.2} s after the kill (last reply \
             {age} ms ago; window {} x {} ms, timeout {} ms)",
            n.name,
            took.as_secs_f64(),
            SETTINGS.window,
            SETTINGS.interval_ms,
            SETTINGS.timeout_ms
        );
        assert!(age >= 1000, "last reply {age} ms ago");
        assert!(
            took < Duration::from_secs(20),
            "loss reached 1.0 only after {took:?}"
        );
    }
    // gw-a is unaffected.
    let st = t.hub.status();
    let a = peer_named(&st, "gw-a");
    assert_eq!(
        (a.probe_loss, a.probe_alive),
        (Some(0.0), Some(true)),
        "{st:?}"
    );
    println!("test took {:.1} s", started.elapsed().as_secs_f64());
}
