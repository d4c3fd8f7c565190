//! Bad and broken conditions: a restarted hub, a wrong key, garbage on the UDP port.

use std::time::Duration;

use crate::dataplane_support::*;
use fleetboard_dataplane::core::{DropReason, Transport};
use fleetboard_tests::netns::Netns;
use fleetboard_tests::process::{ChildGuard, wait_for};

#[test]
fn traffic_resumes_by_itself_after_the_hub_restarts() {
    hub_restart(Transport::Wg);
}

#[test]
fn quic_traffic_resumes_by_itself_after_the_hub_restarts() {
    hub_restart(Transport::Quic);
}

/// The hub's process restarts on the same address with the same key (a crash and a restart
/// in place, or a standby replica behind the same load balancer address): its sessions are
/// gone. The gateways probe the hub as the agents configure them (5 probes a second, dead
/// after 1 s) and start a new session once their probes say the hub is dead.
fn hub_restart(transport: Transport) {
    let mut t = Topology::new_with(true, transport);
    for gw in [&mut t.a, &mut t.b] {
        gw.config.probe.interval_ms = 200;
        gw.config.probe.dead_after_ms = 1000;
        for p in &mut gw.config.peers {
            if p.name.as_deref() == Some("hub") {
                p.probe_address = Some(HUB_V4.parse().unwrap());
            }
        }
    }
    t.start();
    t.a.wait_ping(B_V4, &t.logs());
    t.b.wait_ping(A_V4, &t.logs());
    t.hub.kill();
    assert!(!t.a.ping_once(B_V4), "hub is down, nothing can pass");
    let restarted = std::time::Instant::now();
    t.hub.start();
    // No action on gw-a or gw-b: their probes (and timers) notice and they reconnect.
    t.a.wait_ping(B_V4, &t.logs());
    let took = restarted.elapsed();
    t.b.wait_ping(A_V4, &t.logs());
    println!(
        "hub restarted in place ({transport:?}): gw-a reaches gw-b again {took:.1?} after the restart"
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?} after the restart: the gateways waited for their idle timers (15-20 s)\n{}",
        t.logs()
    );
}

#[test]
fn a_peer_with_a_wrong_key_gets_nothing_through() {
    wrong_key(Transport::Wg);
}

#[test]
fn quic_a_peer_with_a_wrong_certificate_gets_nothing_through() {
    wrong_key(Transport::Quic);
}

fn wrong_key(transport: Transport) {
    let mut t = Topology::new_with(true, transport);
    // gw-b runs with a key the hub does not know (the hub expects another one for gw-b).
    let refused = match transport {
        Transport::Wg => {
            t.b.config.private_key = random_key();
            DropReason::UnknownPeer
        }
        Transport::Quic => {
            // A new certificate/key for gw-b: the hub pinned the old one.
            quic_identity(&t.dir.0, "gw-b");
            DropReason::Unauthenticated
        }
    };
    t.start();
    t.a.wait_ping(HUB_V4, &t.logs());
    wait_for(
        "hub counts the unknown key",
        DEADLINE,
        Duration::from_millis(200),
        || {
            // gw-b keeps trying (keepalive); every attempt is refused and counted.
            let _ = t.b.ping_once(A_V4);
            Ok((t.hub.status().drops.get(refused) >= 2).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
    for _ in 0..3 {
        assert!(!t.b.ping_once(A_V4), "wrong key got through to gw-a");
        assert!(!t.b.ping_once(HUB_V4), "wrong key got through to the hub");
    }
    let s = t.hub.status();
    let gw_b = peer_named(&s, "gw-b");
    assert_eq!(
        gw_b.counters.rx_packets, 0,
        "nothing accepted from the wrong key: {gw_b:?}"
    );
    // gw-a is unaffected.
    t.a.wait_ping(HUB_V4, &t.logs());
}

#[test]
fn garbage_udp_during_a_transfer_is_counted_and_the_transfer_completes() {
    garbage(Transport::Wg);
}

#[test]
fn quic_garbage_udp_during_a_transfer_is_counted_and_the_transfer_completes() {
    garbage(Transport::Quic);
}

fn garbage(transport: Transport) {
    let t = Topology::up_with(transport);
    let port = match transport {
        Transport::Wg => 31820,
        Transport::Quic => 31821,
    };
    // The hub's drops by what garbage is counted as: WireGuard's parser sees every datagram;
    // QUIC's endpoint counts those for a connection ID it never issued (quinn drops the ones
    // it cannot parse before asking; the flood has plenty of both).
    let counted = |metrics: &str| -> u64 {
        let count = |reason: &str| -> u64 {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("fleetboard_drops_total{{reason=\"{reason}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match transport {
            Transport::Wg => count("malformed") + count("unknown_peer") + count("unauthenticated"),
            Transport::Quic => count("unknown_peer"),
        }
    };
    let before = counted(&t.hub.http_get("/metrics"));
    // An attacker on the underlay.
    let evil = Netns::new("evil").unwrap();
    t.underlay
        .attach(&evil, "eth0", &["198.18.0.66/24"])
        .unwrap();
    let script = format!(
        "while true; do head -c 200 /dev/urandom | socat -u - UDP-SENDTO:198.18.0.1:{port}; \
                  printf '\\001\\000\\000\\000garbage' | socat -u - UDP-SENDTO:198.18.0.1:{port}; \
                  printf '\\004\\000\\000\\000\\001\\002\\003\\004truncated-data-message-with-bad-tag' | socat -u - UDP-SENDTO:198.18.0.1:{port}; done"
    );
    let mut cmd = evil.command("bash");
    cmd.args(["-c", &script]);
    let _flood = ChildGuard::spawn("garbage", cmd, &t.dir.0.join("garbage.log")).unwrap();

    let (file, want) = random_file(&t.dir.0, 16);
    let got = tcp_transfer(&t.dir.0, &t.a, &t.b, B_V4, &file);
    assert_eq!(got, want, "transfer corrupted under garbage\n{}", t.logs());

    // The flood goes on: its datagrams are counted (not just survived).
    wait_for(
        "the hub counting the garbage",
        DEADLINE,
        Duration::from_millis(200),
        || Ok((counted(&t.hub.http_get("/metrics")) > before).then_some(())),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e} ({before} before the flood):\n{}\n{}",
            t.hub.http_get("/metrics"),
            t.logs()
        )
    });
}
