//! MTU done right over QUIC: gw-a's TUN has a 1500-byte MTU, more than the QUIC tunnel
//! carries, so the dataplane must answer oversized don't-fragment packets with ICMP
//! "fragmentation needed" and clamp the MSS of TCP SYNs; a bulk TCP transfer that would stall
//! on a black hole completes.

use std::time::Duration;

use crate::dataplane_support::*;
use fleetboard_dataplane::core::Transport;
use fleetboard_tests::process::wait_for;

#[test]
fn quic_oversized_packets_get_icmp_too_big_and_tcp_completes_from_a_1500_mtu_sender() {
    let mut t = Topology::new_with(true, Transport::Quic);
    t.a.config.interface.mtu = 1500;
    t.start();
    t.a.wait_ping(B_V4, &t.logs());

    // A 1500-byte don't-fragment ping: the dataplane answers "fragmentation needed" with the
    // tunnel's real size, and the kernel then refuses such packets locally with that MTU.
    let out = wait_for(
        "frag-needed reaches the sender",
        DEADLINE,
        Duration::from_millis(300),
        || {
            let o =
                t.a.ns
                    .command("ping")
                    .args([
                        "-M", "do", "-s", "1472", "-c", "2", "-i", "0.3", "-W", "1", B_V4,
                    ])
                    .output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(text.contains("mtu").then_some(text))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
    let mtu: u32 = out
        .split("mtu")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start_matches([' ', '=', ':'])
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or_else(|| panic!("no mtu in ping output: {out}"));
    assert!((1280..1500).contains(&mtu), "reported mtu {mtu}: {out}");
    eprintln!("ping reported mtu {mtu}");

    // Bulk TCP from the 1500-MTU side (its SYN says MSS 1460) completes byte-identical.
    let (file, want) = random_file(&t.dir.0, 16);
    let got = tcp_transfer(&t.dir.0, &t.a, &t.b, B_V4, &file);
    assert_eq!(got, want, "transfer through the tunnel\n{}", t.logs());
}
