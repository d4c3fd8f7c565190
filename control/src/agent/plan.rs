//! Pure planning for the member agent: which sub-block each Node gets, and the dataplane
//! configuration of a gateway or of an ordinary node. No I/O: the caller observes (Nodes,
//! Peers, Lease), calls these functions, then applies the result.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use fleetboard_dataplane::core::config::{
    AdminConfig, DataplaneConfig, InterfaceConfig, PeerConfig, Transport as DpTransport,
};
use fleetboard_dataplane::core::quic_config::QuicSettings;
use fleetboard_dataplane::core::{PublicKey, SecretKey};
use ipnet::IpNet;

use crate::crd::peer::{PeerSpec, Transport};
use crate::ipam::{BlockAllocator, IpamError, plan};

/// Seconds between keepalives on every tunnel the agent configures: keeps NAT state and makes
/// a silent (restarted or moved) peer re-handshake within a few seconds.
pub const KEEPALIVE_SECS: u16 = 5;

/// What the agent knows about one Node of its cluster (from the Node object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Creation time (RFC 3339), the allocation order: older nodes keep precedence.
    pub created: String,
    /// Its sub-block (`fleetboard.io/node-cidr`), when set and valid.
    pub cidr: Option<IpNet>,
    /// Its inner-tunnel public key (`fleetboard.io/public-key`).
    pub public_key: Option<PublicKey>,
    /// Its underlay address (`fleetboard.io/tunnel-ip`).
    pub tunnel_ip: Option<IpAddr>,
}

/// What the agent knows about one Peer in the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    /// Object name (= cluster id).
    pub name: String,
    /// Its spec.
    pub spec: PeerSpec,
    /// Its `status.allocatedCidrs` that parse.
    pub allocated: Vec<IpNet>,
}

/// The node-local settings every plan needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSettings {
    /// This node's name.
    pub node_name: String,
    /// This cluster's id (its Peer's name).
    pub cluster_id: String,
    /// WireGuard UDP port (the inner tunnel, and the hub tunnel with `wg`).
    pub listen_port: u16,
    /// Transport towards the hub and other members.
    pub transport: Transport,
    /// True when this cluster's gateway is reachable by other members.
    pub is_public: bool,
    /// TUN device name.
    pub tun_name: String,
    /// Admin socket of the dataplane.
    pub admin_socket: PathBuf,
    /// `/metrics` address of the dataplane, if any.
    pub metrics_address: Option<SocketAddr>,
    /// MCS service blocks (ClusterSetIPs): routed through the TUN device beside the tunnel
    /// CIDR, which need not hold them.
    pub service_cidrs: Vec<IpNet>,
}

impl LocalSettings {
    /// UDP port of the QUIC endpoint: the one after WireGuard's (`Peer.spec.port` is the
    /// WireGuard port, see [`crate::embedded::quic_port`]).
    pub fn quic_port(&self) -> u16 {
        crate::embedded::quic_port(self.listen_port)
    }
}

/// The QUIC identity files of the cluster keys (written by the agent into its state dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicFiles {
    /// PEM certificate.
    pub certificate: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
}

/// One node's new sub-block, to be written to its annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBlock {
    /// Node name.
    pub node: String,
    /// The block.
    pub cidr: IpNet,
}

/// Sub-blocks of the cluster's IPv4 block for every node: nodes keep the block they hold,
/// new nodes get the first free one (oldest node first). Returns every node's block and the
/// ones that changed (to persist), or the pool error.
pub fn plan_node_blocks(
    cluster_blocks: &[IpNet],
    node_prefix: u8,
    nodes: &[NodeInfo],
) -> Result<(Vec<NodeBlock>, Vec<NodeBlock>), IpamError> {
    let Some(pool) = cluster_blocks.iter().find(|b| b.addr().is_ipv4()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let alloc = BlockAllocator::new(*pool, node_prefix)?;
    let mut ordered: Vec<&NodeInfo> = nodes.iter().collect();
    ordered.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    let owners: Vec<(String, Option<IpNet>)> =
        ordered.iter().map(|n| (n.name.clone(), n.cidr)).collect();
    let mut all = Vec::new();
    let mut changed = Vec::new();
    for a in plan(&alloc, &owners) {
        let cidr = a.block?;
        let b = NodeBlock {
            node: a.owner,
            cidr,
        };
        if a.is_new {
            changed.push(b.clone());
        }
        all.push(b);
    }
    Ok((all, changed))
}

/// The TUN address of a node: the first host of its sub-block, with the prefix of the tunnel
/// CIDR that contains it (so the kernel sends the whole overlay to the TUN).
pub fn tun_address(node_block: IpNet, tunnel_cidrs: &[IpNet]) -> IpNet {
    let first = match node_block {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()).wrapping_add(1)).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).wrapping_add(1)).into()),
    };
    let prefix = tunnel_cidrs
        .iter()
        .filter(|c| c.contains(&node_block))
        .map(|c| c.prefix_len())
        .min()
        .unwrap_or(node_block.prefix_len());
    IpNet::new(first, prefix).expect("prefix of a network of the same family")
}

fn dp_transport(t: Transport) -> DpTransport {
    match t {
        Transport::Wg => DpTransport::Wg,
        Transport::Quic => DpTransport::Quic,
    }
}

fn parse_cidrs(v: &[String]) -> Vec<IpNet> {
    v.iter().filter_map(|c| c.parse::<IpNet>().ok()).collect()
}

/// The tunnel CIDRs the hub announces (`spec.cidrs` of the Peer with `isHub`).
pub fn hub_cidrs(peers: &[PeerInfo]) -> Vec<IpNet> {
    peers
        .iter()
        .find(|p| p.spec.is_hub)
        .map(|p| parse_cidrs(&p.spec.cidrs))
        .unwrap_or_default()
}

/// Where a peer's tunnel endpoint is, for `transport` (`resolve` maps host names).
fn peer_endpoint(
    spec: &PeerSpec,
    resolve: &HashMap<String, IpAddr>,
    transport: Transport,
) -> Option<SocketAddr> {
    let host = spec.endpoint.as_deref()?;
    let ip = host
        .parse::<IpAddr>()
        .ok()
        .or_else(|| resolve.get(host).copied())?;
    // `spec.port` is the WireGuard port; QUIC listens on the next one.
    let port = match transport {
        Transport::Wg => spec.port,
        Transport::Quic => crate::embedded::quic_port(spec.port),
    };
    // An endpoint nobody can be reached at (a hostile Peer's `0.0.0.0`) is no endpoint: the
    // dataplane would refuse the whole config with it.
    let ep = SocketAddr::new(ip, port);
    fleetboard_dataplane::core::check_endpoint(ep).ok()?;
    Some(ep)
}

fn base_config(local: &LocalSettings, key: SecretKey, address: IpNet) -> DataplaneConfig {
    DataplaneConfig {
        interface: InterfaceConfig {
            name: local.tun_name.clone(),
            mtu: crate::embedded::tunnel_mtu(local.transport),
            addresses: vec![address],
            routes: local
                .service_cidrs
                .iter()
                .filter(|c| !address.trunc().contains(*c))
                .copied()
                .collect(),
        },
        private_key: key,
        listen_port: local.listen_port,
        listen_address: None,
        transport: DpTransport::Wg,
        peers: Vec::new(),
        routes: Vec::new(),
        // Service VIPs (MCS ClusterSetIP) are fed by the MCS controllers when they run.
        services: Vec::new(),
        local: vec![],
        relay: false,
        probe: Default::default(),
        admin: AdminConfig {
            socket: local.admin_socket.clone(),
        },
        metrics_address: local.metrics_address,
        quic: QuicSettings {
            listen_port: local.quic_port(),
            ..QuicSettings::default()
        },
    }
}

/// Adds `p` unless its key or one of its CIDRs is already taken (a stale or conflicting
/// object must not make the whole config invalid).
fn push_peer(
    out: &mut DataplaneConfig,
    keys: &mut HashSet<PublicKey>,
    cidrs: &mut HashSet<IpNet>,
    p: PeerConfig,
) {
    if !keys.insert(p.public_key) || p.allowed_ips.iter().any(|c| cidrs.contains(c)) {
        tracing::warn!(peer = ?p.name, "peer skipped: key or CIDR already used");
        return;
    }
    cidrs.extend(p.allowed_ips.iter().copied());
    out.peers.push(p);
}

/// Inputs of [`gateway_config`].
#[derive(Debug, Clone)]
pub struct GatewayInputs<'a> {
    /// Node-local settings.
    pub local: &'a LocalSettings,
    /// The cluster's private key.
    pub cluster_key: SecretKey,
    /// The cluster QUIC identity files.
    pub quic: Option<QuicFiles>,
    /// Every Peer in the hub.
    pub peers: &'a [PeerInfo],
    /// Every node with its planned block.
    pub nodes: &'a [NodeInfo],
    /// The planned blocks.
    pub blocks: &'a [NodeBlock],
    /// Resolved endpoint host names.
    pub resolve: &'a HashMap<String, IpAddr>,
}

/// The gateway's dataplane: the hub, direct peers (both sides public), and one inner peer per
/// other node. `None` until this node has a block and the hub has published its Peer.
pub fn gateway_config(i: &GatewayInputs<'_>) -> Option<DataplaneConfig> {
    let local = i.local;
    let tunnel = hub_cidrs(i.peers);
    let hub = i.peers.iter().find(|p| p.spec.is_hub)?;
    let own_block = i.blocks.iter().find(|b| b.node == local.node_name)?.cidr;
    let mut c = base_config(
        local,
        i.cluster_key.clone(),
        tun_address(own_block, &tunnel),
    );
    // Five probes a second to the hub (and the other peers): a dead hub leader is reported
    // within a second (super::failover::watch_hub), and the dataplane handshakes again with
    // a peer dead that long (a standby hub replica behind the same load balancer).
    super::failover::fast_probes(&mut c);
    if local.transport == Transport::Quic {
        let q = i.quic.as_ref()?;
        c.quic.certificate = Some(q.certificate.clone());
        c.quic.private_key = Some(q.private_key.clone());
    }
    let own_key = i.cluster_key.public_key();
    let mut keys = HashSet::from([own_key]);
    let mut cidrs = HashSet::new();
    let hub_key = hub.spec.public_key.as_deref()?;
    let hub_key = PublicKey::from_base64(hub_key).ok()?;
    push_peer(
        &mut c,
        &mut keys,
        &mut cidrs,
        PeerConfig {
            public_key: hub_key,
            name: Some(hub.name.clone()),
            endpoint: peer_endpoint(&hub.spec, i.resolve, local.transport),
            allowed_ips: tunnel.clone(),
            persistent_keepalive: Some(KEEPALIVE_SECS),
            transport: Some(dp_transport(local.transport)),
            fingerprint: hub.spec.cert_fingerprint.clone(),
            via: None,
            // The hub answers probes on its tunnel address, the first host of its block.
            probe_address: hub
                .allocated
                .iter()
                .find(|b| b.addr().is_ipv4())
                .map(|b| tun_address(*b, &tunnel).addr()),
        },
    );
    for n in i.nodes {
        if n.name == local.node_name {
            continue;
        }
        let (Some(key), Some(ip)) = (n.public_key, n.tunnel_ip) else {
            continue;
        };
        let Some(block) = i.blocks.iter().find(|b| b.node == n.name) else {
            continue;
        };
        push_peer(
            &mut c,
            &mut keys,
            &mut cidrs,
            PeerConfig {
                public_key: key,
                name: Some(format!("node-{}", n.name)),
                endpoint: Some(SocketAddr::new(ip, local.listen_port)),
                allowed_ips: vec![block.cidr],
                persistent_keepalive: Some(KEEPALIVE_SECS),
                transport: Some(DpTransport::Wg),
                fingerprint: None,
                via: None,
                probe_address: Some(tun_address(block.cidr, &tunnel).addr()),
            },
        );
    }
    c.local = vec![own_block];
    if local.is_public {
        for p in i.peers {
            if !p.spec.is_public || p.spec.transport != local.transport {
                continue;
            }
            let Some(key) = other_member_key(p, &local.cluster_id) else {
                continue;
            };
            if local.transport == Transport::Quic && p.spec.cert_fingerprint.is_none() {
                continue;
            }
            let Some(endpoint) = peer_endpoint(&p.spec, i.resolve, local.transport) else {
                continue;
            };
            push_peer(
                &mut c,
                &mut keys,
                &mut cidrs,
                PeerConfig {
                    public_key: key,
                    name: Some(p.name.clone()),
                    endpoint: Some(endpoint),
                    allowed_ips: p.allocated.clone(),
                    persistent_keepalive: Some(KEEPALIVE_SECS),
                    transport: Some(dp_transport(local.transport)),
                    fingerprint: p.spec.cert_fingerprint.clone(),
                    via: None,
                    // Its gateway's tunnel address is not published: learned from its probes.
                    probe_address: None,
                },
            );
        }
    }
    if local.transport == Transport::Wg {
        push_relayed_members(
            &mut c,
            &mut keys,
            &mut cidrs,
            i.peers,
            &local.cluster_id,
            hub_key,
        );
    }
    Some(c)
}

/// The public key of `p` when it is another member with a block (not the hub, not this
/// cluster, not yet allocated, or without a valid key: `None`).
fn other_member_key(p: &PeerInfo, own_cluster: &str) -> Option<PublicKey> {
    if p.spec.is_hub || p.name == own_cluster || p.allocated.is_empty() {
        return None;
    }
    PublicKey::from_base64(p.spec.public_key.as_deref()?).ok()
}

/// Every other wg member that is not a direct peer, reached end to end through the hub: this
/// gateway keeps its own WireGuard session with the member's gateway, and the hub only
/// forwards the ciphertext (`PeerConfig::via`, see `fleetboard_dataplane::core::relay`).
fn push_relayed_members(
    c: &mut DataplaneConfig,
    keys: &mut HashSet<PublicKey>,
    cidrs: &mut HashSet<IpNet>,
    peers: &[PeerInfo],
    own_cluster: &str,
    hub_key: PublicKey,
) {
    for p in peers {
        if p.spec.transport != Transport::Wg {
            continue;
        }
        let Some(key) = other_member_key(p, own_cluster) else {
            continue;
        };
        if keys.contains(&key) {
            continue; // a direct peer already
        }
        push_peer(
            c,
            keys,
            cidrs,
            PeerConfig {
                public_key: key,
                name: Some(p.name.clone()),
                endpoint: None,
                allowed_ips: p.allocated.clone(),
                persistent_keepalive: Some(KEEPALIVE_SECS),
                transport: Some(DpTransport::Wg),
                fingerprint: None,
                via: Some(hub_key),
                probe_address: None,
            },
        );
    }
}

/// Inputs of [`node_config`].
#[derive(Debug, Clone)]
pub struct NodeInputs<'a> {
    /// Node-local settings.
    pub local: &'a LocalSettings,
    /// This node's inner-tunnel key.
    pub node_key: SecretKey,
    /// Every Peer in the hub (for the cluster's public key and the tunnel CIDRs).
    pub peers: &'a [PeerInfo],
    /// This node's sub-block (its annotation).
    pub own_block: Option<IpNet>,
    /// The gateway node (the Lease holder), when known.
    pub gateway: Option<&'a NodeInfo>,
}

/// An ordinary node's dataplane: one peer, the gateway (cluster key, the gateway's tunnel-ip,
/// every tunnel CIDR). `None` until the block, the gateway and the cluster key are known.
pub fn node_config(i: &NodeInputs<'_>) -> Option<DataplaneConfig> {
    let local = i.local;
    let tunnel = hub_cidrs(i.peers);
    let own_block = i.own_block?;
    let mut c = base_config(local, i.node_key.clone(), tun_address(own_block, &tunnel));
    let gw = i.gateway?;
    if gw.name == local.node_name {
        return None;
    }
    let cluster = i.peers.iter().find(|p| p.name == local.cluster_id)?;
    let cluster_key = PublicKey::from_base64(cluster.spec.public_key.as_deref()?).ok()?;
    if cluster_key == i.node_key.public_key() || tunnel.is_empty() {
        return None;
    }
    c.local = vec![own_block];
    // Five probes a second to the gateway: a dead one is named within a second.
    super::failover::fast_probes(&mut c);
    let gateway_probe = gw.cidr.map(|b| tun_address(b, &tunnel).addr());
    c.peers.push(PeerConfig {
        public_key: cluster_key,
        name: Some(super::failover::GATEWAY_PEER.into()),
        endpoint: Some(SocketAddr::new(gw.tunnel_ip?, local.listen_port)),
        allowed_ips: tunnel,
        persistent_keepalive: Some(KEEPALIVE_SECS),
        transport: Some(DpTransport::Wg),
        fingerprint: None,
        via: None,
        probe_address: gateway_probe,
    });
    Some(c)
}

#[cfg(test)]
mod tests {
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
}
