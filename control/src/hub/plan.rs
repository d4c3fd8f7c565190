//! The hub's pure planning step: from the `Peer` objects as read, compute each member's
//! allocation and validity, and the dataplane configuration that serves them.
//!
//! No I/O here: the caller reads the Peers (and resolves endpoint names), calls [`plan`],
//! persists the allocations and conditions, and applies the dataplane config.

use std::collections::HashMap;
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

/// `Ready` reason when every pool gave a block.
pub const REASON_ALLOCATED: &str = "Allocated";
/// `Ready` reason when a pool has no free block.
pub const REASON_POOL_EXHAUSTED: &str = "PoolExhausted";

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

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Validates members (oldest wins on conflicts): each gets an [`Invalid`] or none.
fn validate(hub: &HubSettings, members: &[&PeerInput]) -> Vec<Option<Invalid>> {
    let hub_key = hub.private_key.public_key();
    let mut keys: HashMap<PublicKey, &str> = HashMap::new();
    let mut cidrs: Vec<(IpNet, &str)> = Vec::new();
    let mut out = Vec::with_capacity(members.len());
    for p in members {
        out.push(validate_one(hub, &hub_key, p, &mut keys, &mut cidrs).err());
    }
    out
}

fn validate_one<'a>(
    hub: &HubSettings,
    hub_key: &PublicKey,
    p: &'a PeerInput,
    keys: &mut HashMap<PublicKey, &'a str>,
    cidrs: &mut Vec<(IpNet, &'a str)>,
) -> Result<(), Invalid> {
    let bad = |reason, message: String| Err(Invalid { reason, message });
    if p.spec.cluster_id != p.name {
        return bad(
            "ClusterIdMismatch",
            format!(
                "spec.clusterId {:?} must equal the object name {:?}",
                p.spec.cluster_id, p.name
            ),
        );
    }
    let Some(key) = p.spec.public_key.as_deref() else {
        return bad(
            "MissingPublicKey",
            "spec.publicKey is required (the peer's identity for every transport)".into(),
        );
    };
    let key = match PublicKey::from_base64(key) {
        Ok(k) => k,
        Err(e) => return bad("InvalidPublicKey", format!("spec.publicKey: {e}")),
    };
    if key == *hub_key {
        return bad(
            "DuplicatePublicKey",
            "spec.publicKey is the hub's own key".into(),
        );
    }
    if let Some(other) = keys.get(&key) {
        return bad(
            "DuplicatePublicKey",
            format!("spec.publicKey is already used by Peer {other}"),
        );
    }
    if p.spec.transport == Transport::Quic && p.spec.cert_fingerprint.is_none() {
        return bad(
            "MissingCertFingerprint",
            "spec.certFingerprint is required with transport quic".into(),
        );
    }
    let mut mine = Vec::new();
    for (i, c) in p.spec.cidrs.iter().enumerate() {
        let net: IpNet = match c.parse() {
            Ok(n) => n,
            Err(e) => return bad("InvalidCidr", format!("spec.cidrs[{i}] {c:?}: {e}")),
        };
        let net = net.trunc();
        if let Some(pool) = hub.pools.iter().find(|a| overlaps(&a.pool(), &net)) {
            return bad(
                "CidrOverlap",
                format!(
                    "spec.cidrs[{i}] {net} overlaps the tunnel CIDR {}",
                    pool.pool()
                ),
            );
        }
        if let Some((other, owner)) = cidrs.iter().find(|(o, _)| overlaps(o, &net)) {
            return bad(
                "CidrOverlap",
                format!("spec.cidrs[{i}] {net} overlaps {other} of Peer {owner}"),
            );
        }
        if let Some(prev) = mine.iter().find(|o| overlaps(o, &net)) {
            return bad(
                "CidrOverlap",
                format!("spec.cidrs[{i}] {net} overlaps {prev} listed before it"),
            );
        }
        mine.push(net);
    }
    keys.insert(key, &p.name);
    cidrs.extend(mine.into_iter().map(|n| (n, p.name.as_str())));
    Ok(())
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
    let dataplane = DataplaneConfig {
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
    Plan {
        hub_allocated: hub_blocks,
        members: plans,
        dataplane,
    }
}

/// The dataplane peer of a valid member with its blocks.
fn member_peer(m: &PeerInput, blocks: &[IpNet]) -> Option<PeerConfig> {
    let key = PublicKey::from_base64(m.spec.public_key.as_deref()?).ok()?;
    let port = match m.spec.transport {
        Transport::Wg => m.spec.port,
        Transport::Quic => quic_port(m.spec.port),
    };
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_random_bytes([n; 32])
    }

    fn hub(pools: &[(&str, u8)]) -> HubSettings {
        HubSettings {
            cluster_id: "hub".into(),
            pools: pools
                .iter()
                .map(|(p, b)| BlockAllocator::new(p.parse().unwrap(), *b).unwrap())
                .collect(),
            reserved: Vec::new(),
            private_key: key(1),
            listen_port: 31820,
            transport: Transport::Wg,
            tun_name: "fb0".into(),
            admin_socket: "/tmp/x.sock".into(),
            metrics_address: None,
            quic_files: ("/c".into(), "/k".into()),
        }
    }

    fn member(name: &str, k: u8, cidrs: &[&str], allocated: &[&str]) -> PeerInput {
        PeerInput {
            name: name.into(),
            spec: PeerSpec {
                cluster_id: name.into(),
                cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                endpoint: Some("198.18.0.2".into()),
                port: 31820,
                public_key: Some(key(k).public_key().to_base64()),
                cert_fingerprint: None,
                transport: Transport::Wg,
                is_hub: false,
                is_public: true,
            },
            allocated: allocated.iter().map(|s| s.parse().unwrap()).collect(),
            endpoint_ip: Some("198.18.0.2".parse().unwrap()),
        }
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn hub_takes_the_first_block_and_members_the_next_ones() {
        let h = hub(&[("100.64.0.0/10", 16), ("fd00:64::/48", 64)]);
        let p = plan(
            &h,
            &[],
            &[member("a", 2, &[], &[]), member("b", 3, &[], &[])],
        );
        assert_eq!(p.hub_allocated, nets(&["100.64.0.0/16", "fd00:64::/64"]));
        assert_eq!(
            p.members[0].allocated,
            nets(&["100.65.0.0/16", "fd00:64:0:1::/64"])
        );
        assert_eq!(
            p.members[1].allocated,
            nets(&["100.66.0.0/16", "fd00:64:0:2::/64"])
        );
        assert_eq!(
            p.dataplane.interface.addresses,
            nets(&["100.64.0.1/10", "fd00:64::1/48"])
        );
        assert_eq!(p.dataplane.peers.len(), 2);
        p.dataplane.validate().unwrap();
    }

    #[test]
    fn reserved_cidrs_are_never_a_cluster_block() {
        let mut h = hub(&[("100.124.0.0/14", 16)]);
        h.reserved = nets(&["100.127.0.0/16"]);
        // A member that held the reserved block (before the flag existed) is moved off it.
        let p = plan(
            &h,
            &[],
            &[
                member("a", 2, &[], &["100.127.0.0/16"]),
                member("b", 3, &[], &[]),
                member("c", 4, &[], &[]),
            ],
        );
        assert_eq!(p.hub_allocated, nets(&["100.124.0.0/16"]));
        assert_eq!(p.members[0].allocated, nets(&["100.125.0.0/16"]));
        assert_eq!(p.members[1].allocated, nets(&["100.126.0.0/16"]));
        assert!(p.members[2].allocated.is_empty());
        assert_eq!(p.members[2].ready().1, REASON_POOL_EXHAUSTED);
    }

    #[test]
    fn persisted_blocks_never_move() {
        let h = hub(&[("100.64.0.0/10", 16)]);
        let p = plan(
            &h,
            &nets(&["100.64.0.0/16"]),
            &[
                member("a", 2, &[], &["100.70.0.0/16"]),
                member("b", 3, &[], &[]),
            ],
        );
        assert_eq!(p.members[0].allocated, nets(&["100.70.0.0/16"]));
        assert_eq!(p.members[1].allocated, nets(&["100.65.0.0/16"]));
    }

    #[test]
    fn exhaustion_and_invalid_peers_do_not_stop_the_others() {
        let h = hub(&[("100.64.0.0/23", 24)]);
        let mut nokey = member("nokey", 4, &[], &[]);
        nokey.spec.public_key = None;
        let p = plan(
            &h,
            &[],
            &[
                member("a", 2, &["10.1.0.0/16"], &[]),
                nokey,
                member("overlap", 5, &["10.1.2.0/24"], &[]),
                member("late", 3, &[], &[]),
            ],
        );
        assert_eq!(p.members[0].ready().1, REASON_ALLOCATED);
        assert_eq!(p.members[1].ready().1, "MissingPublicKey");
        let (ok, reason, msg) = p.members[2].ready();
        assert!(
            !ok && reason == "CidrOverlap" && msg.contains("Peer a"),
            "{msg}"
        );
        assert_eq!(p.members[3].ready().1, REASON_POOL_EXHAUSTED);
        assert_eq!(p.dataplane.peers.len(), 1);
        assert_eq!(
            p.dataplane.peers[0].allowed_ips,
            nets(&["100.64.1.0/24", "10.1.0.0/16"])
        );
    }

    #[test]
    fn quic_members_need_a_fingerprint_and_get_the_quic_port() {
        let h = hub(&[("100.64.0.0/10", 16)]);
        let mut q = member("q", 2, &[], &[]);
        q.spec.transport = Transport::Quic;
        let p = plan(&h, &[], std::slice::from_ref(&q));
        assert_eq!(p.members[0].ready().1, "MissingCertFingerprint");
        q.spec.cert_fingerprint = Some("ab".repeat(32));
        let p = plan(&h, &[], &[q]);
        let peer = p.members[0].peer.as_ref().unwrap();
        assert_eq!(peer.endpoint.unwrap().port(), 31821);
        assert_eq!(peer.transport, Some(DpTransport::Quic));
    }
}
