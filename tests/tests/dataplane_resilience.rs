//! Bad and broken conditions: a restarted hub, a wrong key, garbage on the UDP port.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::*;
use fleetboard_dataplane::core::DropReason;
use fleetboard_tests::netns::Netns;
use fleetboard_tests::process::{ChildGuard, wait_for};

#[test]
fn traffic_resumes_by_itself_after_the_hub_restarts() {
    let mut t = Topology::up();
    t.b.wait_ping(A_V4, &t.logs());
    t.hub.kill();
    assert!(!t.a.ping_once(B_V4), "hub is down, nothing can pass");
    t.hub.start();
    // No action on gw-a or gw-b: their keepalive timers notice and handshake again.
    t.a.wait_ping(B_V4, &t.logs());
    t.b.wait_ping(A_V4, &t.logs());
}

#[test]
fn a_peer_with_a_wrong_key_gets_nothing_through() {
    let mut t = Topology::new(true);
    // gw-b runs with a key the hub does not know (the hub expects another one for gw-b).
    t.b.config.private_key = random_key();
    t.start();
    t.a.wait_ping(HUB_V4, &t.logs());
    wait_for(
        "hub counts the unknown key",
        DEADLINE,
        Duration::from_millis(200),
        || {
            // gw-b keeps trying (keepalive); every attempt is refused and counted.
            let _ = t.b.ping_once(A_V4);
            Ok((t.hub.status().drops.get(DropReason::UnknownPeer) >= 2).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
    for _ in 0..3 {
        assert!(!t.b.ping_once(A_V4), "wrong key got through to gw-a");
        assert!(!t.b.ping_once(HUB_V4), "wrong key got through to the hub");
    }
    let s = t.hub.status();
    let gw_b = s
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("gw-b"))
        .unwrap();
    assert_eq!(
        gw_b.counters.rx_packets, 0,
        "nothing accepted from the wrong key: {gw_b:?}"
    );
    // gw-a is unaffected.
    t.a.wait_ping(HUB_V4, &t.logs());
}

#[test]
fn garbage_udp_during_a_transfer_is_counted_and_the_transfer_completes() {
    let t = Topology::up();
    // An attacker on the underlay.
    let evil = Netns::new("evil").unwrap();
    t.underlay
        .attach(&evil, "eth0", &["198.18.0.66/24"])
        .unwrap();
    let script = "while true; do head -c 200 /dev/urandom | socat -u - UDP-SENDTO:198.18.0.1:31820; \
                  printf '\\001\\000\\000\\000garbage' | socat -u - UDP-SENDTO:198.18.0.1:31820; \
                  printf '\\004\\000\\000\\000\\001\\002\\003\\004truncated-data-message-with-bad-tag' | socat -u - UDP-SENDTO:198.18.0.1:31820; done";
    let mut cmd = evil.command("bash");
    cmd.args(["-c", script]);
    let _flood = ChildGuard::spawn("garbage", cmd, &t.dir.0.join("garbage.log")).unwrap();

    let (file, want) = random_file(&t.dir.0, 16);
    let got = tcp_transfer(&t.dir.0, &t.a, &t.b, B_V4, &file);
    assert_eq!(got, want, "transfer corrupted under garbage\n{}", t.logs());

    let metrics = t.hub.http_get("/metrics");
    let count = |reason: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("fleetboard_drops_total{{reason=\"{reason}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("malformed") + count("unknown_peer") + count("unauthenticated") > 0,
        "garbage not counted:\n{metrics}"
    );
}
