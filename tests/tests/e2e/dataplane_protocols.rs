//! ICMP echo, UDP and the IPv6 overlay cross the hub relay.

use std::time::Duration;

use crate::dataplane_support::*;
use fleetboard_dataplane::core::Transport;
use fleetboard_tests::process::{ChildGuard, wait_for};

#[test]
fn icmp_udp_and_ipv6_cross_the_hub() {
    icmp_udp_ipv6(Transport::Wg);
}

#[test]
fn quic_icmp_udp_and_ipv6_cross_the_hub() {
    icmp_udp_ipv6(Transport::Quic);
}

fn icmp_udp_ipv6(transport: Transport) {
    let t = Topology::up_with(transport);
    // ICMP both ways, v4 and v6, and to the hub itself.
    t.a.wait_ping(B_V4, &t.logs());
    t.b.wait_ping(A_V4, &t.logs());
    t.a.wait_ping(HUB_V4, &t.logs());
    t.a.wait_ping(B_V6, &t.logs());
    t.b.wait_ping(A_V6, &t.logs());

    // UDP, v4 and v6: a receiver on gw-b gets a datagram sent from gw-a.
    for (dst, recv_addr) in [
        (B_V4.to_string(), format!("UDP4-RECV:{{port}},bind={B_V4}")),
        (
            format!("[{B_V6}]"),
            format!("UDP6-RECV:{{port}},bind=[{B_V6}]"),
        ),
    ] {
        let port = 6000 + (std::process::id() % 1000) as u16;
        let out = t.dir.0.join(format!("udp-{port}-{}.txt", dst.len()));
        let mut recv = t.b.ns.command("socat");
        recv.args([
            "-u",
            &recv_addr.replace("{port}", &port.to_string()),
            &format!("OPEN:{},creat,append", out.display()),
        ]);
        let _r = ChildGuard::spawn("udp-recv", recv, &t.dir.0.join("udp-recv.log")).unwrap();
        wait_for(
            "udp datagram at gw-b",
            DEADLINE,
            Duration::from_millis(300),
            || {
                let mut send = t.a.ns.command("socat");
                send.args(["-u", "-", &format!("UDP-SENDTO:{dst}:{port}")]);
                send.stdin(std::process::Stdio::piped());
                let mut c = send.spawn()?;
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"hello over udp\n")?;
                c.wait()?;
                Ok(std::fs::read_to_string(&out)
                    .ok()
                    .filter(|s| s.contains("hello over udp")))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
    }

    // The TUN carries only the configured IPv6 addresses: no link-local one, from which the
    // kernel would solicit routers for ever (packets no peer routes, counted as drops).
    for node in [&t.hub, &t.a, &t.b] {
        let dev = &node.config.interface.name;
        let v6 = node.ns.ip(&["-6", "addr", "show", "dev", dev]).unwrap();
        assert!(
            !v6.contains("fe80"),
            "{}: link-local on {dev}:\n{v6}",
            node.name
        );
    }
    let b_v6 =
        t.b.ns
            .ip(&["-6", "addr", "show", "dev", &t.b.config.interface.name]);
    assert!(
        b_v6.unwrap().contains(B_V6),
        "gw-b keeps its configured IPv6 address"
    );
}
