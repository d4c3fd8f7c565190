//! Property tests over the packet entry points: arbitrary bytes never panic and are counted.

use std::net::SocketAddr;
use std::time::Instant;

use fleetboard_dataplane_core::{
    Action, AdminConfig, Dataplane, DataplaneConfig, InterfaceConfig, MAX_PACKET, PeerConfig,
    SecretKey, Transport,
};
use proptest::prelude::*;

fn dp() -> Dataplane {
    let cfg = DataplaneConfig {
        interface: InterfaceConfig {
            name: "fb0".into(),
            mtu: 1420,
            addresses: vec!["100.64.0.1/10".parse().unwrap()],
        },
        private_key: SecretKey::from_random_bytes([1; 32]),
        listen_port: 31820,
        listen_address: None,
        transport: Transport::Wg,
        peers: vec![PeerConfig {
            public_key: SecretKey::from_random_bytes([2; 32]).public_key(),
            name: None,
            endpoint: Some("198.18.0.2:31820".parse().unwrap()),
            allowed_ips: vec![
                "100.64.1.0/24".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            persistent_keepalive: None,
            transport: None,
            fingerprint: None,
        }],
        routes: vec![],
        admin: AdminConfig::default(),
        metrics_address: None,
        quic: Default::default(),
        services: vec![],
    };
    Dataplane::new(cfg, Instant::now()).unwrap()
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
    fn handle_tun_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000), small in any::<bool>()) {
        let mut d = dp();
        let mut out = vec![0u8; if small { 64 } else { MAX_PACKET }];
        let _ = d.handle_tun(&data, &mut out);
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
