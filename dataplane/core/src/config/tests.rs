//! Unit tests of the dataplane configuration: defaults, validation by field, peers left out.

use super::*;

fn base() -> DataplaneConfig {
    let mut c = DataplaneConfig::new(
        SecretKey::from_random_bytes([1; 32]),
        "fb0",
        vec!["100.64.1.1/10".parse().unwrap()],
    );
    c.peers.push(PeerConfig {
        persistent_keepalive: Some(25),
        ..PeerConfig::new(
            SecretKey::from_random_bytes([2; 32]).public_key(),
            vec!["100.64.0.0/10".parse().unwrap()],
        )
    });
    c
}

#[test]
fn new_gives_what_a_config_file_leaves_out_gives() {
    let key = SecretKey::from_random_bytes([1; 32]);
    let peer = SecretKey::from_random_bytes([2; 32]).public_key();
    let parsed: DataplaneConfig = serde_json::from_value(serde_json::json!({
        "private_key": key.to_base64(),
        "interface": { "name": "fb0", "addresses": ["100.64.1.1/10"] },
        "peers": [{ "public_key": peer.to_base64(), "allowed_ips": ["100.64.0.0/10"] }],
    }))
    .unwrap();
    let mut built = DataplaneConfig::new(key, "fb0", vec!["100.64.1.1/10".parse().unwrap()]);
    built.peers.push(PeerConfig::new(
        peer,
        vec!["100.64.0.0/10".parse().unwrap()],
    ));
    assert_eq!(built, parsed);
}

#[test]
fn valid_config_passes() {
    base().validate().unwrap();
}

#[test]
fn every_problem_names_its_field() {
    let mut c = base();
    c.interface.mtu = 100;
    c.interface.name = "a-very-long-interface-name".into();
    c.peers.push(c.peers[0].clone());
    c.peers[1].allowed_ips = vec!["100.64.1.7/24".parse().unwrap()];
    c.routes.push(RouteConfig {
        cidr: "10.0.0.0/8".parse().unwrap(),
        peer: SecretKey::from_random_bytes([9; 32]).public_key(),
    });
    let e = c.validate().unwrap_err();
    let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
    for want in [
        "interface.mtu",
        "interface.name",
        "peers[1].public_key",
        "peers[1].allowed_ips[0]",
        "routes[0].peer",
    ] {
        assert!(fields.contains(&want), "{want} missing in {e}");
    }
}

#[test]
fn duplicate_cidr_is_reported_with_both_fields() {
    let mut c = base();
    let mut p = c.peers[0].clone();
    p.public_key = SecretKey::from_random_bytes([3; 32]).public_key();
    c.peers.push(p);
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("peers[1].allowed_ips[0]") && e.contains("peers[0].allowed_ips[0]"),
        "{e}"
    );
}

#[test]
fn via_must_name_a_wg_peer_that_is_not_itself_relayed() {
    let mut c = base();
    let hub = c.peers[0].public_key;
    let mut member = c.peers[0].clone();
    member.public_key = SecretKey::from_random_bytes([3; 32]).public_key();
    member.allowed_ips = vec!["100.64.2.0/24".parse().unwrap()];
    member.via = Some(hub);
    c.peers.push(member.clone());
    c.validate().unwrap();

    let mut bad = c.clone();
    bad.peers[1].via = Some(SecretKey::from_random_bytes([9; 32]).public_key());
    bad.peers[0].via = Some(bad.peers[1].public_key);
    bad.peers[0].transport = Some(Transport::Quic);
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("peers[1].via: no peer with public key"), "{e}");
    assert!(e.contains("peers[0].via"), "{e}");
    assert!(e.contains("peers[0].transport"), "{e}");

    let mut quic_relay = c;
    quic_relay.peers[0].transport = Some(Transport::Quic);
    let e = quic_relay.validate().unwrap_err().to_string();
    assert!(
        e.contains("peers[1].via: relay") && e.contains("wg transport"),
        "{e}"
    );
}

#[test]
fn a_relay_refuses_peers_it_cannot_tell_apart() {
    let mut c = base();
    c.relay = true;
    let mut twin = c.peers[0].clone();
    let mut k = twin.public_key.0;
    k[31] ^= 1; // same first 7 bytes
    twin.public_key = PublicKey(k);
    twin.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
    c.peers.push(twin);
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("peers[1].public_key: starts with the same 7 bytes"),
        "{e}"
    );
    c.relay = false;
    c.validate().unwrap();
}

#[test]
fn endpoints_nobody_can_be_reached_at_are_refused() {
    for ep in [
        "0.0.0.0:31820",
        "[::]:31820",
        "[::ffff:0.0.0.0]:31820",
        "224.0.0.1:31820",
        "[ff02::1]:31820",
        "255.255.255.255:31820",
        "198.18.0.2:0",
    ] {
        let mut c = base();
        c.peers[0].endpoint = Some(ep.parse().unwrap());
        let e = c.validate().unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].field, "peers[0].endpoint", "{e}");
        assert_eq!(e.0[0].peer(), Some(0));
    }
    for ep in ["198.18.0.2:31820", "127.0.0.1:31820", "[fd00::1]:1"] {
        assert!(check_endpoint(ep.parse().unwrap()).is_ok(), "{ep}");
    }
}

#[test]
fn a_relay_refuses_a_peer_with_its_own_key_prefix() {
    let mut c = base();
    c.relay = true;
    let mut k = c.private_key.public_key().0;
    k[31] ^= 1;
    c.peers[0].public_key = PublicKey(k);
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("peers[0].public_key: starts with the same 7 bytes as this node"),
        "{e}"
    );
}

fn peer(n: u8, cidr: &str) -> PeerConfig {
    PeerConfig {
        name: Some(format!("p{n}")),
        endpoint: Some(format!("198.18.0.{n}:31820").parse().unwrap()),
        ..PeerConfig::new(
            SecretKey::from_random_bytes([n; 32]).public_key(),
            vec![cidr.parse().unwrap()],
        )
    }
}

#[test]
fn drop_invalid_peers_leaves_out_only_the_bad_ones_and_keeps_the_earlier_of_a_clash() {
    let mut c = base();
    c.relay = true;
    c.peers = vec![peer(2, "100.65.0.0/16"), peer(3, "100.66.0.0/16")];
    let good = c.clone();
    let mut unspecified = peer(4, "100.67.0.0/16");
    unspecified.endpoint = Some("0.0.0.0:31820".parse().unwrap());
    let mut twin = peer(5, "100.68.0.0/16");
    twin.public_key.0 = c.peers[0].public_key.0;
    twin.public_key.0[20] ^= 0xff; // the first 7 bytes of p2's key
    let same_cidr = peer(6, "100.66.0.0/16");
    let mut relayed = peer(7, "100.69.0.0/16");
    relayed.via = Some(twin.public_key); // its relay is left out: so is it
    relayed.endpoint = None;
    c.peers.insert(1, unspecified);
    c.peers.push(twin);
    c.peers.push(same_cidr);
    c.peers.push(relayed);
    c.routes.push(RouteConfig {
        cidr: "10.9.0.0/16".parse().unwrap(),
        peer: c.peers[4].public_key,
    });
    let rejected = c.drop_invalid_peers().unwrap();
    let got: Vec<(usize, &str)> = rejected
        .iter()
        .map(|r| (r.index, r.problems[0].field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "peers[1].endpoint"),
            (3, "peers[3].public_key"),
            (4, "peers[4].allowed_ips[0]"),
            (5, "peers[5].via"),
        ]
    );
    assert!(
        rejected[1].problems[0]
            .problem
            .contains("same 7 bytes as peers[0]")
    );
    assert_eq!(c.peers, good.peers);
    assert!(
        c.routes.is_empty(),
        "the route to a dropped peer goes with it"
    );
    c.validate().unwrap();
    // Nothing to drop: unchanged. A problem of no peer: an error, the config unchanged.
    assert_eq!(c.drop_invalid_peers().unwrap(), vec![]);
    let mut broken = c.clone();
    broken.interface.mtu = 1;
    broken.peers.push(peer(8, "100.65.0.0/16"));
    let before = broken.clone();
    assert!(broken.drop_invalid_peers().is_err());
    assert_eq!(broken, before);
}

#[test]
fn transport_parses_lowercase() {
    let t: Transport = serde_json::from_str("\"quic\"").unwrap();
    assert_eq!(t, Transport::Quic);
}
