//! Data-path probes through the in-memory mesh: the tunnel address answers ping, probes are
//! timed, a dead peer's loss goes to 1.0, and junk to the probe address is counted.

use std::time::Duration;

use fleetboard_dataplane_core::config::ProbeSettings;
use fleetboard_dataplane_core::probe::PROBE_PORT;

use crate::mesh::{Mesh, ipv4_udp, key};

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..].copy_from_slice(payload);
    p
}

fn echo_request(src: [u8; 4], dst: [u8; 4], seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"fleetboard ping");
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

/// A UDP datagram with a correct checksum (or a wrong one with `bad`).
fn udp(src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8], bad: bool) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = vec![0u8; len];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u[8..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    pseudo.extend_from_slice(&u);
    let c = checksum(&pseudo, 0) ^ u16::from(bad);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

/// hub_and_spokes; a and b know the hub's probe address, probes every 100 ms over 5.
fn probing_mesh() -> Mesh {
    let mut m = Mesh::hub_and_spokes();
    for i in 0..3 {
        let mut c = m.nodes[i].dp.config().clone();
        c.probe = ProbeSettings {
            interval_ms: 100,
            window: 5,
            timeout_ms: 300,
            dead_after_ms: 300,
        };
        for p in &mut c.peers {
            if p.public_key == key(1).public_key() {
                p.probe_address = Some("100.64.0.1".parse().unwrap());
            }
        }
        m.nodes[i].dp.apply_config(c).unwrap();
    }
    m.greet_hub();
    m
}

#[test]
fn tunnel_addresses_answer_ping_through_the_hub_without_touching_a_tun() {
    let mut m = probing_mesh();
    let hub_tun = m.nodes[0].tun_out.len();
    // a pings b's tunnel address (decrypted and re-encrypted by the hub), then the hub's.
    for (seq, dst) in [(1u16, [100, 64, 2, 1]), (2, [100, 64, 0, 1])] {
        m.send_tun(1, &echo_request([100, 64, 1, 1], dst, seq));
        m.run();
        let reply = m.nodes[1].tun_out.pop().expect("echo reply on a's TUN");
        assert_eq!(reply[9], 1, "ICMP");
        assert_eq!(&reply[12..16], &dst, "from the pinged address");
        assert_eq!(reply[20], 0, "an echo reply");
        assert_eq!(&reply[26..28], &seq.to_be_bytes(), "same sequence number");
    }
    assert!(m.nodes[2].tun_out.is_empty(), "b's kernel saw nothing");
    assert_eq!(m.nodes[0].tun_out.len(), hub_tun, "nor did the hub's");
    assert_eq!(m.nodes[2].dp.status().probes.echo_requests, 1);
    // Other traffic to the tunnel address still goes to the kernel.
    let other = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"for the kernel");
    m.send_tun(1, &other);
    m.run();
    assert_eq!(m.nodes[2].tun_out, vec![other]);
}

#[test]
fn probes_are_timed_and_a_dead_peer_reaches_full_loss() {
    let mut m = probing_mesh();
    for _ in 0..10 {
        m.tick(Duration::from_millis(100));
    }
    let now = m.now;
    // a and b probe the hub; the hub learnt both addresses from their probes.
    for i in [1, 2] {
        let st = m.nodes[i].dp.status_at(now);
        let hub = &st.peers[0];
        assert_eq!(hub.probe_loss, Some(0.0), "{hub:?}");
        assert!(hub.probe_rtt_p50_micros.is_some(), "{hub:?}");
        assert!(hub.probe_last_reply_millis_ago.unwrap() <= 100, "{hub:?}");
        assert_eq!(hub.probe_alive, Some(true), "{hub:?}");
    }
    let st = m.nodes[0].dp.status_at(now);
    for p in &st.peers {
        assert!(p.probe_address.is_some(), "hub learnt {:?}", p.name);
        assert_eq!(p.probe_loss, Some(0.0), "{p:?}");
    }
    assert!(
        st.probes.replies >= 10 && st.probes.requests_answered >= 10,
        "{st:?}"
    );
    assert_eq!((st.probes.malformed, st.probes.unexpected), (0, 0));

    // b dies: nothing reaches it any more.
    m.nodes.remove(2);
    for _ in 0..10 {
        m.tick(Duration::from_millis(100));
    }
    let st = m.nodes[0].dp.status_at(m.now);
    let b = st
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("n3"))
        .unwrap();
    let a = st
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("n2"))
        .unwrap();
    assert_eq!(b.probe_loss, Some(1.0), "{b:?}");
    assert_eq!(b.probe_alive, Some(false), "{b:?}");
    assert_eq!(a.probe_alive, Some(true), "{a:?}");
    assert_eq!(b.probe_rtt_p50_micros, None);
    assert!(b.probe_last_reply_millis_ago.unwrap() >= 900, "{b:?}");
    assert_eq!(a.probe_loss, Some(0.0), "a is still fine: {a:?}");
}

#[test]
fn malformed_and_unexpected_packets_to_the_probe_address_are_counted_never_delivered() {
    let mut m = probing_mesh();
    let hub_tun = m.nodes[0].tun_out.len();
    let (a, hub) = ([100, 64, 1, 1], [100, 64, 0, 1]);
    let mut bad_ip = udp(a, hub, PROBE_PORT, &[0; 12], false);
    bad_ip[10] ^= 1; // IPv4 header checksum
    let mut short = echo_request(a, hub, 9);
    short[22] ^= 0xff; // ICMP checksum
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (udp(a, hub, PROBE_PORT, b"0123456789ab", true), "malformed"),
        (bad_ip, "malformed"),
        (short, "malformed"),
        (udp(a, hub, PROBE_PORT, b"not a probe", false), "unexpected"),
        (udp(a, hub, PROBE_PORT, &[], false), "unexpected"),
        // A well-formed reply to a probe the hub never sent.
        (
            udp(
                a,
                hub,
                PROBE_PORT,
                &fleetboard_dataplane_core::probe::Message {
                    kind: fleetboard_dataplane_core::probe::Kind::Reply,
                    seq: 77,
                }
                .encode(),
                false,
            ),
            "unexpected",
        ),
    ];
    for (pkt, kind) in &cases {
        let before = m.nodes[0].dp.status().probes;
        m.send_tun(1, pkt);
        m.run();
        let after = m.nodes[0].dp.status().probes;
        let (mb, ub) = (before.malformed, before.unexpected);
        let (ma, ua) = (after.malformed, after.unexpected);
        match *kind {
            "malformed" => assert_eq!((ma, ua), (mb + 1, ub), "{pkt:02x?}"),
            _ => assert_eq!((ma, ua), (mb, ub + 1), "{pkt:02x?}"),
        }
    }
    assert_eq!(m.nodes[0].tun_out.len(), hub_tun, "none reached the kernel");
    // Truncated junk of every length: never a panic.
    let full = udp(a, hub, PROBE_PORT, b"0123456789ab", false);
    for n in 20..full.len() {
        let mut p = full[..n].to_vec();
        p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        m.send_tun(1, &p);
        m.run();
    }
}

#[test]
fn a_round_to_more_peers_than_socket_slots_sends_every_probe() {
    use fleetboard_dataplane_core::{Dataplane, MAX_PACKET, SecretKey};
    const PEERS: usize = 600;
    let mut c = crate::mesh::config(1, "100.64.0.1/10", vec![]);
    for i in 0..PEERS {
        let mut b = [7u8; 32];
        b[1..3].copy_from_slice(&(i as u16).to_le_bytes()); // byte 0 is clamped
        let (hi, lo) = (65 + i / 256, i % 256);
        let mut p = crate::mesh::peer(1, None, &[&format!("100.{hi}.{lo}.0/24")]);
        p.public_key = SecretKey::from_random_bytes(b).public_key();
        p.probe_address = Some(format!("100.{hi}.{lo}.1").parse().unwrap());
        c.peers.push(p);
    }
    let now = std::time::Instant::now();
    let mut dp = Dataplane::new(c, now).unwrap();
    dp.handle_timeout(now);
    let mut out = vec![0u8; MAX_PACKET];
    let mut packets = 0;
    while dp.poll_probe(now, &mut out).is_some() {
        packets += 1;
    }
    let st = dp.status();
    assert_eq!(st.probes.requests_sent, PEERS as u64, "{:?}", st.probes);
    assert_eq!(st.probes.unexpected, 0, "{:?}", st.probes);
    assert_eq!(packets, PEERS, "every probe left the interface");
}

/// A hub replica takes over the hub's key behind the same endpoint (a load balancer in front
/// of hub replicas): it has no session, so the spokes' data is dropped until they handshake
/// again. WireGuard's timers would do that after 15 s; the spokes' probes say the hub is
/// dead after 300 ms here, and a new handshake follows at once.
#[test]
fn a_peer_replaced_behind_the_same_endpoint_is_handshaken_again_once_probes_say_dead() {
    let mut m = probing_mesh();
    for _ in 0..5 {
        m.tick(Duration::from_millis(100));
    }
    let hub_probe = |m: &Mesh, i: usize| {
        m.nodes[i]
            .dp
            .status()
            .peers
            .into_iter()
            .find(|p| p.public_key == key(1).public_key())
            .expect("the hub peer")
    };
    assert_eq!(hub_probe(&m, 1).probe_alive, Some(true), "probes answered");

    // The new replica: same key, same address, no session; it learns the spokes' endpoints
    // only from their handshakes.
    let cfg = m.nodes[0].dp.config().clone();
    m.nodes[0].dp = fleetboard_dataplane_core::Dataplane::new(cfg, m.now).unwrap();
    m.nodes[0].tun_out.clear();
    let replaced = m.now;
    let pkt = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"after the takeover");
    let mut delivered = None;
    while m.now < replaced + Duration::from_secs(10) {
        m.tick(Duration::from_millis(100));
        m.send_tun(1, &pkt);
        m.run();
        if m.nodes[2].tun_out.last() == Some(&pkt) {
            delivered = Some(m.now - replaced);
            break;
        }
    }
    let took = delivered.expect("a's packets reach b through the new hub within 10 s");
    println!("replaced hub reached again after {took:?} (probes dead after 300 ms)");
    assert!(
        took <= Duration::from_secs(2),
        "took {took:?}: the spokes waited for WireGuard's own timers"
    );
}

/// A QUIC peer whose probes go unanswered is handed to the driver to connect anew, at most
/// once per `PROBE_DEAD_REHANDSHAKE`; an answering one never is.
#[test]
fn a_quic_peer_dead_by_its_probes_is_reconnected_every_two_seconds() {
    use crate::mesh::{config, peer};
    use fleetboard_dataplane_core::peer::PROBE_DEAD_REHANDSHAKE;
    use fleetboard_dataplane_core::{Dataplane, Transport};
    use std::time::Instant;

    let mut p = peer(3, Some("198.18.0.3:31820"), &["100.64.2.0/24"]);
    p.transport = Some(Transport::Quic);
    p.fingerprint = Some("ab".repeat(32));
    p.probe_address = Some("100.64.2.1".parse().unwrap());
    let mut cfg = config(1, "100.64.1.1/10", vec![p]);
    cfg.quic.certificate = Some("/etc/fleetboard/quic.crt".into());
    cfg.quic.private_key = Some("/etc/fleetboard/quic.key".into());
    cfg.probe = ProbeSettings {
        interval_ms: 200,
        window: 10,
        timeout_ms: 500,
        dead_after_ms: 1000,
    };
    let start = Instant::now();
    let mut dp = Dataplane::new(cfg, start).unwrap();
    let quic = dp.peer_by_key(&key(3).public_key()).unwrap();
    let mut buf = vec![0u8; fleetboard_dataplane_core::MAX_PACKET];
    let mut reconnects = Vec::new();
    let mut now = start;
    while now < start + Duration::from_secs(6) {
        now += Duration::from_millis(50);
        dp.handle_timeout(now);
        // The probes leave as plaintext for the QUIC transport, and nothing answers them.
        while dp.poll_probe(now, &mut buf).is_some() {}
        while let Some(id) = dp.poll_reconnect() {
            assert_eq!(id, quic);
            reconnects.push(now - start);
        }
    }
    assert!(
        (2..=4).contains(&reconnects.len()),
        "reconnects at {reconnects:?}"
    );
    assert!(
        reconnects[0] <= Duration::from_millis(1500),
        "{reconnects:?}"
    );
    for w in reconnects.windows(2) {
        assert!(w[1] - w[0] >= PROBE_DEAD_REHANDSHAKE, "{reconnects:?}");
    }
}
