//! Property tests over the packet entry points: arbitrary bytes never panic and are counted.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use fleetboard_dataplane_core::{
    Action, Dataplane, MAX_PACKET, PeerConfig, SecretKey, Transport, icmp, mss, relay,
};
use proptest::prelude::*;

use crate::mesh::{config, peer};

/// Node 1 (100.64.0.1/10) with one peer, node 2 at 198.18.0.2:31820 (the mesh's helpers).
fn dp() -> Dataplane {
    let peer = PeerConfig {
        persistent_keepalive: None,
        ..peer(2, Some("198.18.0.2:31820"), &["100.64.1.0/24", "fd00::/8"])
    };
    Dataplane::new(config(1, "100.64.0.1/10", vec![peer]), Instant::now()).unwrap()
}

/// `dp()` as a relay with a second peer (key 3, 198.18.0.3:31820).
fn relay_dp() -> Dataplane {
    let d = dp();
    let mut cfg = d.config().clone();
    let mut second = cfg.peers[0].clone();
    second.public_key = SecretKey::from_random_bytes([3; 32]).public_key();
    second.endpoint = Some("198.18.0.3:31820".parse().unwrap());
    second.allowed_ips = vec!["100.64.2.0/24".parse().unwrap()];
    cfg.peers.push(second);
    cfg.relay = true;
    Dataplane::new(cfg, Instant::now()).unwrap()
}

/// A relay message for this node (key 1), a peer (keys 2, 3) or nobody, with any body.
fn relayish() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(to, mut v)| {
        let mut p = vec![0xfb];
        match to {
            0 => p.extend_from_slice(&[0x5a; 7]),
            k => p.extend_from_slice(&SecretKey::from_random_bytes([k; 32]).public_key().0[..7]),
        }
        p.append(&mut v);
        p
    })
}

/// A datagram that starts like a WireGuard message (type 1..=4, zero reserved bytes).
fn wgish() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=4, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(t, mut v)| {
        let mut p = vec![t, 0, 0, 0];
        p.append(&mut v);
        p
    })
}

proptest! {
    #[test]
    fn handle_udp_never_panics(data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..2000), wgish()]) {
        let mut d = dp();
        let mut out = vec![0u8; MAX_PACKET];
        let from: SocketAddr = "198.18.0.9:1234".parse().unwrap();
        let a = d.handle_udp(Instant::now(), from, &data, &mut out);
        prop_assert!(matches!(a, Action::None | Action::SendUdp(_)));
        if a == Action::None {
            prop_assert_eq!(d.drops().total(), 1);
        }
    }

    #[test]
    fn relay_messages_never_panic(data in relayish(), from_peer in any::<bool>()) {
        let mut d = relay_dp();
        let mut out = vec![0u8; MAX_PACKET];
        let from: SocketAddr = if from_peer { "198.18.0.2:31820" } else { "198.18.0.9:1234" }
            .parse()
            .unwrap();
        let a = d.handle_udp(Instant::now(), from, &data, &mut out);
        match a {
            // Only a message from peer 2 for peer 3 is forwarded, to 3's endpoint, whole.
            Action::Forward(t) => {
                prop_assert!(from_peer);
                prop_assert_eq!(t.dst, "198.18.0.3:31820".parse::<SocketAddr>().unwrap());
                prop_assert_eq!(t.len, data.len());
            }
            Action::None => prop_assert_eq!(d.drops().total(), 1),
            other => prop_assert!(matches!(other, Action::SendUdp(_)), "{:?}", other),
        }
    }

    #[test]
    fn handle_tun_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000), small in any::<bool>()) {
        let mut d = dp();
        let mut out = vec![0u8; if small { 64 } else { MAX_PACKET }];
        let _ = d.handle_tun(Instant::now(), &data, &mut out);
        while d.poll_transmit(&mut out).is_some() {}
    }

    #[test]
    fn handle_peer_packet_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut d = dp();
        let id = d.peers().next().unwrap().id;
        let mut out = vec![0u8; MAX_PACKET];
        let _ = d.handle_peer_packet(Instant::now(), id, &data, &mut out);
    }
}

// ---- IP/TCP headers: service NAT, MSS clamping, ICMP too-big, the relay header itself ----

/// VIPs of `nat_dp()`: TCP 80 -> 8080 and UDP 53 -> 53 on each, endpoints behind peer 2.
const VIP4: [u8; 4] = [100, 96, 0, 10];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const EP4: [u8; 4] = [100, 64, 1, 5];
const EP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

/// `dp()` with two services (one per address family) and peer 2 on QUIC (plaintext out:
/// every packet is either handed on or dropped and counted, never queued for a handshake).
fn nat_dp() -> Dataplane {
    let d = dp();
    let mut cfg = d.config().clone();
    cfg.peers[0].transport = Some(Transport::Quic);
    cfg.quic.certificate = Some("/nonexistent/quic.crt".into());
    cfg.quic.private_key = Some("/nonexistent/quic.key".into());
    cfg.quic.ca = Some("/nonexistent/ca.crt".into());
    let svc = |vip: IpAddr, ep: IpAddr| {
        serde_json::from_value(serde_json::json!({
            "name": "ns/svc", "vip": vip,
            "ports": [{"protocol": "tcp", "port": 80, "target_port": 8080},
                      {"protocol": "udp", "port": 53, "target_port": 53}],
            "endpoints": [{"address": ep, "local": false}],
        }))
        .unwrap()
    };
    cfg.services = vec![
        svc(VIP4.into(), EP4.into()),
        svc(IpAddr::from(VIP6), IpAddr::from(EP6)),
    ];
    Dataplane::new(cfg, Instant::now()).unwrap()
}

thread_local! {
    /// One NAT dataplane per test thread: its conntrack tables are 4 MiB, and flows created by
    /// earlier cases make later replies hit them.
    static NAT_DP: RefCell<Dataplane> = RefCell::new(nat_dp());
}

/// An IPv4 or IPv6 packet that is close to a TCP/UDP packet between `a` and `b` (the VIP or
/// its endpoint, the local client): header fields mostly right, sometimes anything.
fn ipish(v4: (Vec<u8>, Vec<u8>), v6: (Vec<u8>, Vec<u8>)) -> impl Strategy<Value = Vec<u8>> {
    let port = prop_oneof![
        Just(80u16),
        Just(8080),
        Just(53),
        Just(40000),
        Just(40001),
        any::<u16>()
    ];
    let proto = prop_oneof![Just(6u8), Just(17), any::<u8>()];
    let frag = prop_oneof![3 => Just(0u16), 1 => any::<u16>()];
    let ihl = prop_oneof![3 => Just(5u8), 1 => 0u8..16];
    let len_ok = prop_oneof![3 => Just(true), 1 => Just(false)];
    let body = proptest::collection::vec(any::<u8>(), 0..60);
    (
        any::<bool>(),
        any::<bool>(),
        proto,
        frag,
        ihl,
        len_ok,
        port.clone(),
        port,
        body,
        any::<u16>(),
    )
        .prop_map(
            move |(six, flip, proto, frag, ihl, len_ok, sport, dport, body, junk)| {
                let (src, dst) = if six { v6.clone() } else { v4.clone() };
                let (src, dst) = if flip { (dst, src) } else { (src, dst) };
                let mut p = if six {
                    let mut h = vec![0x60, 0, 0, 0, 0, 0, proto, 64];
                    h.extend_from_slice(&src);
                    h.extend_from_slice(&dst);
                    h
                } else {
                    let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 1];
                    h.extend_from_slice(&frag.to_be_bytes());
                    h.extend_from_slice(&[64, proto, 0, 0]);
                    h.extend_from_slice(&src);
                    h.extend_from_slice(&dst);
                    h
                };
                p.extend_from_slice(&sport.to_be_bytes());
                p.extend_from_slice(&dport.to_be_bytes());
                p.extend_from_slice(&body);
                let len = if len_ok { p.len() as u16 } else { junk };
                if six {
                    p[4..6].copy_from_slice(&len.wrapping_sub(40).to_be_bytes());
                } else {
                    p[2..4].copy_from_slice(&len.to_be_bytes());
                }
                p
            },
        )
}

/// A TCP SYN-ish IPv4/IPv6 packet with arbitrary option bytes (often an MSS option).
fn synish() -> impl Strategy<Value = Vec<u8>> {
    let opts = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..44),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(m, mut v)| {
            let mut o = vec![1, 2, 4];
            o.extend_from_slice(&m.to_be_bytes());
            o.append(&mut v);
            o
        }),
    ];
    (any::<bool>(), any::<u8>(), 0u8..16, opts, any::<[u8; 20]>()).prop_map(
        |(six, flags, doff, opts, tcp)| {
            let mut p = if six {
                let mut h = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
                h.extend_from_slice(&[0xfd; 32]);
                h
            } else {
                let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
                h.extend_from_slice(&[100, 64, 0, 1, 100, 64, 1, 5]);
                h
            };
            let mut t = tcp.to_vec();
            t[12] = doff << 4;
            t[13] = flags | 0x02;
            p.extend_from_slice(&t);
            p.extend_from_slice(&opts);
            p
        },
    )
}

proptest! {
    #[test]
    fn service_nat_outbound_never_panics_and_counts(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..120),
            ipish((VIP4.to_vec(), vec![100, 64, 0, 1]), (VIP6.to_vec(), vec![0xfd; 16])),
        ],
    ) {
        NAT_DP.with(|d| {
            let mut d = d.borrow_mut();
            let mut out = vec![0u8; MAX_PACKET];
            let before = d.drops().total();
            let a = d.handle_tun(Instant::now(), &data, &mut out);
            while d.poll_transmit(&mut out).is_some() {}
            let dropped = d.drops().total() - before;
            prop_assert_eq!(dropped, u64::from(a == Action::None), "{:?}", a);
            Ok(())
        })?;
    }

    #[test]
    fn service_nat_inbound_never_panics_and_counts(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..120),
            ipish((EP4.to_vec(), vec![100, 64, 0, 1]), (EP6.to_vec(), vec![0xfd; 16])),
        ],
    ) {
        NAT_DP.with(|d| {
            let mut d = d.borrow_mut();
            let id = d.peers().next().unwrap().id;
            let mut out = vec![0u8; MAX_PACKET];
            let before = d.drops().total();
            let a = d.handle_peer_packet(Instant::now(), id, &data, &mut out);
            while d.poll_transmit(&mut out).is_some() {}
            let dropped = d.drops().total() - before;
            prop_assert_eq!(dropped, u64::from(a == Action::None), "{:?}", a);
            if let Action::WriteTun { len } = a {
                prop_assert_eq!(len, data.len());
            }
            Ok(())
        })?;
    }

    #[test]
    fn clamp_mss_never_panics(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..120), synish()],
        max in any::<u16>(),
    ) {
        let mut p = data.clone();
        if mss::clamp_mss(&mut p, max) {
            // Only the MSS value and the TCP checksum changed, and the MSS is now `max`.
            let diff: Vec<usize> = (0..p.len()).filter(|&i| p[i] != data[i]).collect();
            prop_assert!(!diff.is_empty() && diff.len() <= 4, "{:?}", diff);
            let at = p.windows(2).enumerate().any(|(i, w)| {
                w == max.to_be_bytes() && u16::from_be_bytes([data[i], data[i + 1]]) > max
            });
            prop_assert!(at);
        } else {
            prop_assert_eq!(p, data);
        }
    }

    #[test]
    fn icmp_too_big_never_panics(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1400), synish()],
        mtu in any::<u16>(),
        six in any::<bool>(),
        out_len in prop_oneof![Just(2000usize), 0usize..600],
    ) {
        let router: IpAddr = if six { IpAddr::from(EP6) } else { IpAddr::from(EP4) };
        let mut out = vec![0u8; out_len];
        if let Ok(n) = icmp::packet_too_big(&data, mtu, router, &mut out) {
            prop_assert!(n <= out_len && n <= icmp::ICMPV6_ERROR_MAX);
        }
    }

    #[test]
    fn relay_header_parse_never_panics(data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), relayish()]) {
        match relay::parse(&data) {
            Some((id, msg)) => {
                prop_assert!(data.len() > relay::RELAY_HEADER && data[0] == relay::RELAY_TYPE);
                prop_assert_eq!(&id.0[..], &data[1..relay::RELAY_HEADER]);
                prop_assert_eq!(msg, &data[relay::RELAY_HEADER..]);
            }
            None => prop_assert!(data.len() <= relay::RELAY_HEADER || data[0] != relay::RELAY_TYPE),
        }
        let _ = relay::initiation_sender(&data);
        let _ = relay::cookie_receiver(&data);
    }
}
