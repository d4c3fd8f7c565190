//! The hub's pure planning step: from the `Peer` objects as read, compute each member's
//! allocation and validity, and the dataplane configuration that serves them.
//!
//! No I/O here: the caller reads the Peers (and resolves endpoint names), calls [`plan`],
//! persists the allocations and conditions, and applies the dataplane config.
//!
//! The checks of each member (`validate`) are separate from the allocation and the config.

mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use fleetboard_dataplane::core::config::{AdminConfig, InterfaceConfig};
use fleetboard_dataplane::core::quic_config::QuicSettings;
use fleetboard_dataplane::core::{
    DataplaneConfig, PeerConfig, PublicKey, SecretKey, Transport as DpTransport,
};
use ipnet::IpNet;

use crate::crd::peer::{PeerSpec, Transport};
use crate::embedded::quic_port;
use crate::ipam::{self, BlockAllocator, IpamError};
use validate::validate;

/// `Ready` reason when every pool gave a block.
pub const REASON_ALLOCATED: &str = "Allocated";
/// `Ready` reason when a pool has no free block.
pub const REASON_POOL_EXHAUSTED: &str = "PoolExhausted";
/// `Ready` reason when the endpoint (or port) is no address a member can be reached at.
pub const REASON_INVALID_ENDPOINT: &str = "InvalidEndpoint";
/// `Ready` reason when the key shares its relay prefix (first 7 bytes) with another's.
pub const REASON_KEY_PREFIX_COLLISION: &str = "PublicKeyPrefixCollision";
/// `Ready` reason when the certificate fingerprint is malformed.
pub const REASON_INVALID_CERT_FINGERPRINT: &str = "InvalidCertFingerprint";
/// `Ready` reason when the hub dataplane's own validation refused the peer (a rule this
/// planner does not know yet; the peer is left out, the others are served).
pub const REASON_REJECTED_BY_DATAPLANE: &str = "RejectedByDataplane";

/// One Peer as the planner sees it (oldest first in the input).
#[derive(Debug, Clone)]
pub struct PeerInput {
    /// Object name (= cluster id).
    pub name: String,
    /// The spec.
    pub spec: PeerSpec,
    /// Blocks persisted in its status (or just written by us).
    pub allocated: Vec<IpNet>,
    /// Its endpoint resolved to an address (none when absent or unresolvable).
    pub endpoint_ip: Option<IpAddr>,
}

/// Why a member Peer is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Condition reason (CamelCase).
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

/// The planned state of one member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPlan {
    /// Object name.
    pub name: String,
    /// Its blocks, one per pool that had one (persist in `status.allocatedCidrs`).
    pub allocated: Vec<IpNet>,
    /// Pools that had no block for it (Ready=False PoolExhausted).
    pub exhausted: Vec<IpamError>,
    /// Set when the Peer cannot be served (Ready=False with this reason).
    pub invalid: Option<Invalid>,
    /// The dataplane peer for it (none when invalid or without any block).
    pub peer: Option<PeerConfig>,
}

impl MemberPlan {
    /// The `Ready` condition: (status, reason, message).
    pub fn ready(&self) -> (bool, &'static str, String) {
        if let Some(i) = &self.invalid {
            return (false, i.reason, i.message.clone());
        }
        if !self.exhausted.is_empty() {
            let msg = self
                .exhausted
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return (false, REASON_POOL_EXHAUSTED, msg);
        }
        let blocks: Vec<String> = self.allocated.iter().map(|b| b.to_string()).collect();
        (
            true,
            REASON_ALLOCATED,
            format!("allocated {}", blocks.join(", ")),
        )
    }
}

/// The hub's own settings, as the planner needs them.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub's Peer name (cluster id).
    pub cluster_id: String,
    /// Block allocators, one per tunnel CIDR.
    pub pools: Vec<BlockAllocator>,
    /// Ranges no cluster block may overlap (`--reserved-cidr`, the ClusterSetIP block).
    pub reserved: Vec<IpNet>,
    /// The hub's WireGuard key.
    pub private_key: SecretKey,
    /// WireGuard UDP port (QUIC on the next port).
    pub listen_port: u16,
    /// Default transport.
    pub transport: Transport,
    /// TUN name.
    pub tun_name: String,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// `/metrics` address.
    pub metrics_address: Option<SocketAddr>,
    /// QUIC certificate and key files.
    pub quic_files: (PathBuf, PathBuf),
}

/// Everything the hub does next.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The hub's own blocks (first of each pool on a fresh start).
    pub hub_allocated: Vec<IpNet>,
    /// Per member, in input order.
    pub members: Vec<MemberPlan>,
    /// The dataplane config serving every valid member.
    pub dataplane: DataplaneConfig,
}

/// Converts the CRD transport to the dataplane's.
pub fn dp_transport(t: Transport) -> DpTransport {
    match t {
        Transport::Wg => DpTransport::Wg,
        Transport::Quic => DpTransport::Quic,
    }
}

/// The hub's tunnel address in `block` with the pool's prefix length: the block's first
/// host address (e.g. `100.64.0.1/10`), so the whole pool routes into the TUN.
pub fn hub_address(block: &IpNet, pool: &IpNet) -> Option<IpNet> {
    // Network address + 1 for both families (`hosts()` starts at the network for IPv6).
    let first: IpAddr = match block.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(1)?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(1)?.into()),
    };
    block.contains(&first).then_some(())?;
    IpNet::new(first, pool.prefix_len()).ok()
}

/// The port the hub sends to: `spec.port` for wg, the next one for quic.
fn member_port(spec: &PeerSpec) -> u16 {
    match spec.transport {
        Transport::Wg => spec.port,
        Transport::Quic => quic_port(spec.port),
    }
}

/// Plans allocations, validity and the dataplane config. `hub_allocated` are the hub's own
/// persisted blocks; `members` are every non-hub Peer, oldest first.
pub fn plan(hub: &HubSettings, hub_allocated: &[IpNet], members: &[PeerInput]) -> Plan {
    let refs: Vec<&PeerInput> = members.iter().collect();
    let invalid = validate(hub, &refs);
    let mut allocated: Vec<Vec<IpNet>> = vec![Vec::new(); members.len()];
    let mut exhausted: Vec<Vec<IpamError>> = vec![Vec::new(); members.len()];
    let mut hub_blocks = Vec::new();
    for pool in &hub.pools {
        let in_pool = |list: &[IpNet]| list.iter().copied().find(|b| pool.pool().contains(b));
        // The hub first (its block holds the hub's own address), then members oldest first.
        // Invalid members keep a block they already hold but get no new one.
        let mut owners: Vec<(Option<usize>, Option<IpNet>)> = vec![(None, in_pool(hub_allocated))];
        for (i, m) in members.iter().enumerate() {
            let existing = in_pool(&m.allocated);
            if invalid[i].is_none() || existing.is_some() {
                owners.push((Some(i), existing));
            }
        }
        for a in ipam::plan_reserving(pool, &owners, &hub.reserved) {
            match (a.owner, a.block) {
                (None, Ok(b)) => hub_blocks.push(b),
                (None, Err(e)) => tracing::error!(error = %e, "no block for the hub itself"),
                (Some(i), Ok(b)) => allocated[i].push(b),
                (Some(i), Err(e)) => exhausted[i].push(e),
            }
        }
    }
    let mut plans = Vec::with_capacity(members.len());
    let mut peers = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let peer = (invalid[i].is_none() && !allocated[i].is_empty())
            .then(|| member_peer(m, &allocated[i]))
            .flatten();
        if let Some(p) = &peer {
            peers.push(p.clone());
        }
        plans.push(MemberPlan {
            name: m.name.clone(),
            allocated: std::mem::take(&mut allocated[i]),
            exhausted: std::mem::take(&mut exhausted[i]),
            invalid: invalid[i].clone(),
            peer,
        });
    }
    let addresses = hub
        .pools
        .iter()
        .filter_map(|pool| {
            let b = hub_blocks.iter().find(|b| pool.pool().contains(*b))?;
            hub_address(b, &pool.pool())
        })
        .collect();
    let mut dataplane = DataplaneConfig {
        interface: InterfaceConfig {
            name: hub.tun_name.clone(),
            mtu: crate::embedded::tunnel_mtu(hub.transport),
            addresses,
            routes: Vec::new(),
        },
        private_key: hub.private_key.clone(),
        listen_port: hub.listen_port,
        listen_address: None,
        transport: dp_transport(hub.transport),
        peers,
        routes: Vec::new(),
        // Service VIPs (MCS ClusterSetIP) are fed by the MCS controllers when they run.
        services: Vec::new(),
        local: vec![],
        probe: Default::default(),
        // wg members reach each other end to end through the hub: forward their ciphertext.
        relay: true,
        admin: AdminConfig {
            socket: hub.admin_socket.clone(),
        },
        metrics_address: hub.metrics_address,
        quic: QuicSettings {
            listen_port: quic_port(hub.listen_port),
            certificate: Some(hub.quic_files.0.clone()),
            private_key: Some(hub.quic_files.1.clone()),
            ..QuicSettings::default()
        },
    };
    // Defence in depth: whatever the dataplane would still refuse about one peer costs
    // that peer only (flagged, left out), never the whole config.
    match dataplane.drop_invalid_peers() {
        Ok(rejected) => {
            for r in rejected {
                let Some(m) = plans
                    .iter_mut()
                    .find(|m| m.peer.as_ref().is_some_and(|p| *p == r.peer))
                else {
                    continue;
                };
                let problems: Vec<String> = r
                    .problems
                    .iter()
                    .map(|e| {
                        let field = e.field.find(']').map_or("", |i| &e.field[i + 1..]);
                        format!("peer{field}: {}", e.problem)
                    })
                    .collect();
                tracing::warn!(peer = %m.name, problems = ?problems, "left out: refused by the hub dataplane");
                m.invalid = Some(Invalid {
                    reason: REASON_REJECTED_BY_DATAPLANE,
                    message: format!(
                        "the hub dataplane refused this peer: {}",
                        problems.join("; ")
                    ),
                });
                m.peer = None;
            }
        }
        Err(e) => tracing::error!(error = %e, "the hub's own dataplane settings are invalid"),
    }
    Plan {
        hub_allocated: hub_blocks,
        members: plans,
        dataplane,
    }
}

/// The dataplane peer of a valid member with its blocks.
fn member_peer(m: &PeerInput, blocks: &[IpNet]) -> Option<PeerConfig> {
    let key = PublicKey::from_base64(m.spec.public_key.as_deref()?).ok()?;
    let port = member_port(&m.spec);
    let mut allowed: Vec<IpNet> = blocks.to_vec();
    allowed.extend(
        m.spec
            .cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .map(|n| n.trunc()),
    );
    Some(PeerConfig {
        public_key: key,
        name: Some(m.name.clone()),
        endpoint: m.endpoint_ip.map(|ip| SocketAddr::new(ip, port)),
        allowed_ips: allowed,
        persistent_keepalive: None,
        transport: Some(dp_transport(m.spec.transport)),
        fingerprint: m.spec.cert_fingerprint.clone(),
        via: None,
        // The member gateway's tunnel address is learned from its own probes to the hub.
        probe_address: None,
    })
}
#[cfg(test)]
mod tests;
