//! A 64 MiB TCP transfer from gw-a to gw-b through the hub relay arrives byte-identical.

mod dataplane_support;

use dataplane_support::*;
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
    let gw_a = s
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("gw-a"))
        .unwrap();
    let gw_b = s
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("gw-b"))
        .unwrap();
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
