//! A 64 MiB TCP transfer from gw-a to gw-b through the hub relay arrives byte-identical.

use crate::dataplane_support::*;
use fleetboard_dataplane::core::Transport;

#[test]
fn tcp_64mib_through_the_hub_arrives_byte_identical() {
    relay_64mib(Transport::Wg);
}

#[test]
fn quic_tcp_64mib_through_the_hub_arrives_byte_identical() {
    relay_64mib(Transport::Quic);
}

fn relay_64mib(transport: Transport) {
    let t = Topology::up_with(transport);
    let (file, want) = random_file(&t.dir.0, 64);
    let got = tcp_transfer(&t.dir.0, &t.a, &t.b, B_V4, &file);
    assert_eq!(
        got,
        want,
        "checksum at gw-b differs from gw-a's\n{}",
        t.logs()
    );

    // It went through the hub's relay: the hub received and sent at least 64 MiB.
    let s = t.hub.status();
    let gw_a = peer_named(&s, "gw-a");
    let gw_b = peer_named(&s, "gw-b");
    assert!(
        gw_a.counters.rx_bytes >= 64 << 20,
        "hub rx from gw-a: {:?}",
        gw_a.counters
    );
    assert!(
        gw_b.counters.tx_bytes >= 64 << 20,
        "hub tx to gw-b: {:?}",
        gw_b.counters
    );
}

/// The members keep a WireGuard session with each other; the hub only forwards their
/// ciphertext (it has no key to read it) and says so in its counters.
#[test]
fn end_to_end_relay_64mib_arrives_and_the_hub_only_forwards() {
    let mut t = Topology::new_with(true, Transport::Wg);
    t.hub.config.relay = true;
    let hub_key = t.hub.key.public_key();
    let (ka, kb) = (t.a.key.clone(), t.b.key.clone());
    for (from, name, key, cidrs) in [
        (&mut t.a, "gw-b", kb, ["100.64.2.0/24", "fd00:64:2::/48"]),
        (&mut t.b, "gw-a", ka, ["100.64.1.0/24", "fd00:64:1::/48"]),
    ] {
        let mut p = peer(name, &key, None, &cidrs);
        p.via = Some(hub_key);
        p.persistent_keepalive = Some(5);
        from.config.peers.push(p);
    }
    t.start();
    t.a.wait_ping(B_V4, &t.logs());
    t.b.wait_ping(A_V6, &t.logs());

    let (file, want) = random_file(&t.dir.0, 64);
    let got = tcp_transfer(&t.dir.0, &t.a, &t.b, B_V4, &file);
    assert_eq!(got, want, "checksum at gw-b differs\n{}", t.logs());

    let hub = t.hub.status();
    assert!(
        hub.relayed_bytes >= 64 << 20,
        "hub relayed only {} bytes\n{}",
        hub.relayed_bytes,
        t.logs()
    );
    let metrics = t.hub.http_get("/metrics");
    assert!(
        metrics.contains("fleetboard_relayed_packets_total"),
        "{metrics}"
    );
    // gw-b decrypted it from gw-a's own session, and never took the hub's address for gw-a.
    let b = t.b.status();
    let a_at_b = peer_named(&b, "gw-a");
    assert!(
        a_at_b.counters.rx_bytes >= 64 << 20,
        "{:?}",
        a_at_b.counters
    );
    assert_eq!(a_at_b.via, Some(hub_key));
    assert_eq!(a_at_b.endpoint, None);
    let show = fleetboard_dataplane::show::format(&hub);
    assert!(show.contains("relayed:"), "{show}");
}
