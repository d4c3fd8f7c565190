//! Property tests over the packet entry points: arbitrary bytes never panic and are counted.

use std::net::SocketAddr;
use std::time::Instant;

use fleetboard_dataplane_core::{Action, Dataplane, MAX_PACKET, PeerConfig, SecretKey};
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
