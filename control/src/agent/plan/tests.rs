//! Unit tests of the agent plan: node blocks, tunnel addresses, the gateway's and a node's
//! dataplane configuration.

use super::*;

fn key(b: u8) -> SecretKey {
    SecretKey::from_random_bytes([b; 32])
}

fn local(node: &str) -> LocalSettings {
    LocalSettings {
        node_name: node.into(),
        cluster_id: "a".into(),
        listen_port: 31820,
        transport: Transport::Wg,
        is_public: false,
        tun_name: "fb0".into(),
        admin_socket: "/tmp/x.sock".into(),
        metrics_address: None,
        service_cidrs: vec!["100.127.0.0/16".parse().unwrap()],
    }
}

fn node(name: &str, created: &str, cidr: Option<&str>, k: u8, ip: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        created: created.into(),
        cidr: cidr.map(|c| c.parse().unwrap()),
        public_key: Some(key(k).public_key()),
        tunnel_ip: Some(ip.parse().unwrap()),
    }
}

/// The gateway config of member `peers[1]` (cluster key 7, WireGuard) with `nodes`' blocks.
fn gateway_of(l: &LocalSettings, peers: &[PeerInfo], nodes: &[NodeInfo]) -> DataplaneConfig {
    let (blocks, _) = plan_node_blocks(&peers[1].allocated, 24, nodes).unwrap();
    gateway_config(&GatewayInputs {
        local: l,
        cluster_key: key(7),
        quic: None,
        peers,
        nodes,
        blocks: &blocks,
        resolve: &HashMap::new(),
    })
    .unwrap()
}

fn peer(name: &str, is_hub: bool, k: u8, cidrs: &[&str], alloc: &[&str]) -> PeerInfo {
    let mut spec: PeerSpec =
        serde_json::from_value(serde_json::json!({ "clusterId": name })).unwrap();
    spec.is_hub = is_hub;
    spec.public_key = Some(key(k).public_key().to_base64());
    spec.endpoint = Some(format!("198.18.0.{k}"));
    spec.cidrs = cidrs.iter().map(|s| s.to_string()).collect();
    PeerInfo {
        name: name.into(),
        spec,
        allocated: alloc.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

#[test]
fn node_blocks_are_stable_and_oldest_first() {
    let block: IpNet = "100.64.0.0/16".parse().unwrap();
    let nodes = vec![
        node("n2", "2024-01-02", None, 2, "198.18.0.2"),
        node("n1", "2024-01-01", Some("100.64.7.0/24"), 1, "198.18.0.1"),
        node("n3", "2024-01-03", Some("10.0.0.0/24"), 3, "198.18.0.3"),
    ];
    let (all, changed) = plan_node_blocks(&[block], 24, &nodes).unwrap();
    let get = |n: &str| all.iter().find(|b| b.node == n).unwrap().cidr.to_string();
    assert_eq!(get("n1"), "100.64.7.0/24");
    assert_eq!(get("n2"), "100.64.0.0/24");
    assert_eq!(get("n3"), "100.64.1.0/24");
    assert_eq!(changed.len(), 2);
}

#[test]
fn tun_address_is_first_host_with_tunnel_prefix() {
    let t = tun_address(
        "100.65.3.0/24".parse().unwrap(),
        &["100.64.0.0/10".parse().unwrap()],
    );
    assert_eq!(t.to_string(), "100.65.3.1/10");
}

#[test]
fn service_block_outside_the_tunnel_cidr_is_routed_through_the_tun() {
    let l = local("n1");
    let peers = vec![
        peer("hub", true, 9, &["100.96.0.0/12"], &[]),
        peer("a", false, 7, &[], &["100.97.0.0/16"]),
    ];
    let nodes = vec![node("n1", "1", None, 1, "198.18.0.1")];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    assert_eq!(c.interface.addresses[0].to_string(), "100.97.0.1/12");
    assert_eq!(c.interface.routes, ["100.127.0.0/16".parse().unwrap()]);
}

#[test]
fn gateway_has_hub_and_inner_peers() {
    let l = local("n1");
    let peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &[]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
    ];
    let nodes = vec![
        node("n1", "1", None, 1, "198.18.0.1"),
        node("n2", "2", None, 2, "198.18.0.2"),
    ];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    assert_eq!(c.interface.addresses[0].to_string(), "100.65.0.1/10");
    // The tunnel CIDR holds the service block: no extra route.
    assert!(c.interface.routes.is_empty(), "{:?}", c.interface.routes);
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[0].allowed_ips[0].to_string(), "100.64.0.0/10");
    assert_eq!(c.peers[0].endpoint.unwrap().to_string(), "198.18.0.9:31820");
    assert_eq!(c.peers[1].allowed_ips[0].to_string(), "100.65.1.0/24");
    assert_eq!(c.peers[1].endpoint.unwrap().to_string(), "198.18.0.2:31820");
    // Probes: the node's tunnel address; the hub's is unknown until its block is.
    assert_eq!(
        c.peers[1].probe_address,
        Some("100.65.1.1".parse().unwrap())
    );
    assert_eq!(c.peers[0].probe_address, None);
    let peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &["100.64.0.0/24"]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
    ];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    assert_eq!(
        c.peers[0].probe_address,
        Some("100.64.0.1".parse().unwrap())
    );
}

#[test]
fn node_points_at_the_gateway_with_the_cluster_key() {
    let l = local("n2");
    let peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &[]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
    ];
    let gw = node("n1", "1", Some("100.65.0.0/24"), 1, "198.18.0.1");
    let c = node_config(&NodeInputs {
        local: &l,
        node_key: key(2),
        peers: &peers,
        own_block: Some("100.65.1.0/24".parse().unwrap()),
        gateway: Some(&gw),
    })
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].public_key, key(7).public_key());
    assert_eq!(c.peers[0].endpoint.unwrap().to_string(), "198.18.0.1:31820");
    assert_eq!(c.interface.addresses[0].to_string(), "100.65.1.1/10");
    // It probes the gateway's tunnel address.
    assert_eq!(
        c.peers[0].probe_address,
        Some("100.65.0.1".parse().unwrap())
    );
}

#[test]
fn public_members_get_direct_peers_of_their_transport() {
    let mut l = local("n1");
    l.is_public = true;
    let mut peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &[]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
        peer("b", false, 8, &[], &["100.66.0.0/16"]),
        peer("c", false, 6, &[], &["100.67.0.0/16"]),
    ];
    peers[2].spec.is_public = true;
    let nodes = vec![node("n1", "1", None, 1, "198.18.0.1")];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    let names: Vec<_> = c.peers.iter().map(|p| p.name.clone().unwrap()).collect();
    assert_eq!(names, ["hub", "b", "c"]);
    // b is public: direct. c is not: end to end through the hub.
    assert!(c.peers[1].endpoint.is_some() && c.peers[1].via.is_none());
    assert_eq!(c.peers[2].via, Some(key(9).public_key()));
    assert_eq!(c.peers[2].endpoint, None);
}

#[test]
fn a_public_member_with_an_unreachable_endpoint_is_no_direct_peer() {
    let mut l = local("n1");
    l.is_public = true;
    let mut peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &[]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
        peer("b", false, 8, &[], &["100.66.0.0/16"]),
    ];
    // b held a block before it turned its endpoint into 0.0.0.0.
    peers[2].spec.is_public = true;
    peers[2].spec.endpoint = Some("0.0.0.0".into());
    let nodes = vec![node("n1", "1", None, 1, "198.18.0.1")];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    assert_eq!(c.peers[1].name.as_deref(), Some("b"));
    assert_eq!(c.peers[1].via, Some(key(9).public_key()), "through the hub");
}

#[test]
fn wg_members_reach_each_other_end_to_end_through_the_hub() {
    let l = local("n1");
    let mut peers = vec![
        peer("hub", true, 9, &["100.64.0.0/10"], &[]),
        peer("a", false, 7, &[], &["100.65.0.0/16"]),
        peer("b", false, 8, &[], &["100.66.0.0/16"]),
        peer("q", false, 6, &[], &["100.67.0.0/16"]),
    ];
    peers[3].spec.transport = Transport::Quic;
    let nodes = vec![
        node("n1", "1", None, 1, "198.18.0.1"),
        node("n2", "2", None, 2, "198.18.0.2"),
    ];
    let c = gateway_of(&l, &peers, &nodes);
    c.validate().unwrap();
    let names: Vec<_> = c.peers.iter().map(|p| p.name.clone().unwrap()).collect();
    // q uses QUIC: its traffic goes to the hub, which decrypts it (the /10 route).
    assert_eq!(names, ["hub", "node-n2", "b"]);
    assert_eq!(c.peers[2].via, Some(key(9).public_key()));
    assert_eq!(c.peers[2].public_key, key(8).public_key());
    assert_eq!(c.peers[2].allowed_ips[0].to_string(), "100.66.0.0/16");
    // This node's own block is delivered locally, never sent back to the hub.
    assert_eq!(c.local, vec!["100.65.0.0/24".parse::<IpNet>().unwrap()]);
    assert_eq!(c.interface.mtu, 1412);

    // A quic member gets no relayed peers: the hub terminates its tunnel.
    let mut lq = local("n1");
    lq.transport = Transport::Quic;
    let (blocks, _) = plan_node_blocks(&peers[1].allocated, 24, &nodes).unwrap();
    let cq = gateway_config(&GatewayInputs {
        local: &lq,
        cluster_key: key(7),
        quic: Some(QuicFiles {
            certificate: "/c".into(),
            private_key: "/k".into(),
        }),
        peers: &peers,
        nodes: &nodes,
        blocks: &blocks,
        resolve: &HashMap::new(),
    })
    .unwrap();
    assert!(cq.peers.iter().all(|p| p.via.is_none()), "{:?}", cq.peers);
}
