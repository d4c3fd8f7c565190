//! Pure planning for the member agent: which sub-block each Node gets, and the dataplane
//! configuration of a gateway or of an ordinary node. No I/O: the caller observes (Nodes,
//! Peers, Lease), calls these functions, then applies the result.
//!
//! The gateway's configuration is in `gateway`; the blocks, the ordinary node's configuration
//! and what both share are here.

mod gateway;

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

pub use gateway::{GatewayInputs, gateway_config};

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
mod tests;
