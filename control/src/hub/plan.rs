//! The hub's pure planning step: from the `Peer` objects as read, compute each member's
//! allocation and validity, and the dataplane configuration that serves them.
//!
//! No I/O here: the caller reads the Peers (and resolves endpoint names), calls [`plan`],
//! persists the allocations and conditions, and applies the dataplane config.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use fleetboard_dataplane::core::relay::RelayId;
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

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Validates members (oldest wins on conflicts): each gets an [`Invalid`] or none.
///
/// Every rule the hub dataplane's config validation has about a peer is checked here first,
/// so one bad Peer is flagged and left out instead of making the dataplane refuse the whole
/// config (see `plan`, which still leaves out anything the dataplane would refuse).
fn validate(hub: &HubSettings, members: &[&PeerInput]) -> Vec<Option<Invalid>> {
    let hub_key = hub.private_key.public_key();
    let mut taken = Taken::default();
    let mut out = Vec::with_capacity(members.len());
    for p in members {
        out.push(validate_one(hub, &hub_key, p, &mut taken).err());
    }
    out
}

/// What the valid members so far hold.
#[derive(Default)]
struct Taken<'a> {
    keys: HashMap<PublicKey, &'a str>,
    relay_ids: HashMap<RelayId, &'a str>,
    cidrs: Vec<(IpNet, &'a str)>,
}

/// Why the hub cannot send to `ep` (the member's resolved endpoint), if it cannot.
fn endpoint_problem(ep: SocketAddr) -> Option<String> {
    if let Err(why) = fleetboard_dataplane::core::check_endpoint(ep) {
        return Some(why);
    }
    ep.ip()
        .to_canonical()
        .is_loopback()
        .then(|| format!("{ep} is a loopback address (the hub's own host)"))
}

fn validate_one<'a>(
    hub: &HubSettings,
    hub_key: &PublicKey,
    p: &'a PeerInput,
    taken: &mut Taken<'a>,
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
    if let Some(other) = taken.keys.get(&key) {
        return bad(
            "DuplicatePublicKey",
            format!("spec.publicKey is already used by Peer {other}"),
        );
    }
    // The hub relays members' WireGuard messages by the first 7 bytes of the destination's
    // key (`fleetboard_dataplane::core::relay`): two members (or a member and the hub) with
    // the same prefix could be mixed up, so the later one is refused.
    let relay_id = RelayId::of(&key);
    if relay_id == RelayId::of(hub_key) {
        return bad(
            REASON_KEY_PREFIX_COLLISION,
            "spec.publicKey starts with the same 7 bytes as the hub's own key (the hub \
             relays by that prefix); generate a new key"
                .into(),
        );
    }
    if let Some(other) = taken.relay_ids.get(&relay_id) {
        return bad(
            REASON_KEY_PREFIX_COLLISION,
            format!(
                "spec.publicKey starts with the same 7 bytes as the key of Peer {other} (the \
                 hub relays by that prefix); generate a new key"
            ),
        );
    }
    if p.spec.transport == Transport::Quic && p.spec.cert_fingerprint.is_none() {
        return bad(
            "MissingCertFingerprint",
            "spec.certFingerprint is required with transport quic".into(),
        );
    }
    if let Some(fp) = &p.spec.cert_fingerprint
        && !fleetboard_dataplane::core::quic_config::fingerprint_is_valid(fp)
    {
        return bad(
            REASON_INVALID_CERT_FINGERPRINT,
            "spec.certFingerprint must be the SHA-256 of the QUIC certificate's public key \
             (64 hex digits)"
                .into(),
        );
    }
    if p.spec.transport == Transport::Quic && p.spec.port == u16::MAX {
        return bad(
            REASON_INVALID_ENDPOINT,
            "spec.port 65535 leaves no port for QUIC (it listens on spec.port + 1)".into(),
        );
    }
    if p.spec.port == 0 {
        return bad(REASON_INVALID_ENDPOINT, "spec.port must not be 0".into());
    }
    if let (Some(host), Some(ip)) = (&p.spec.endpoint, p.endpoint_ip)
        && let Some(why) = endpoint_problem(SocketAddr::new(ip, member_port(&p.spec)))
    {
        let host = match host.parse::<IpAddr>() {
            Ok(_) => format!("spec.endpoint {host}"),
            Err(_) => format!("spec.endpoint {host} (resolved to {ip})"),
        };
        return bad(REASON_INVALID_ENDPOINT, format!("{host}: {why}"));
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
        if let Some((other, owner)) = taken.cidrs.iter().find(|(o, _)| overlaps(o, &net)) {
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
    taken.keys.insert(key, &p.name);
    taken.relay_ids.insert(relay_id, &p.name);
    taken
        .cidrs
        .extend(mine.into_iter().map(|n| (n, p.name.as_str())));
    Ok(())
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
    fn a_bad_endpoint_or_key_prefix_is_flagged_and_the_others_are_served() {
        let h = hub(&[("100.64.0.0/10", 16)]);
        let a = member("a", 2, &[], &[]);
        let mut unspecified = member("zero", 3, &[], &[]);
        unspecified.spec.endpoint = Some("0.0.0.0".into());
        unspecified.endpoint_ip = Some("0.0.0.0".parse().unwrap());
        let mut twin = member("twin", 4, &[], &[]);
        let mut k = key(2).public_key().0;
        k[31] ^= 0x55; // a's first 7 bytes
        twin.spec.public_key = Some(PublicKey(k).to_base64());
        let mut hub_twin = member("hub-twin", 5, &[], &[]);
        let mut k = key(1).public_key().0;
        k[7] ^= 1;
        hub_twin.spec.public_key = Some(PublicKey(k).to_base64());
        let mut named = member("named", 6, &[], &[]);
        named.spec.endpoint = Some("localhost".into());
        named.endpoint_ip = Some("::1".parse().unwrap());
        let mut multicast = member("multicast", 7, &[], &[]);
        multicast.endpoint_ip = Some("239.1.1.1".parse().unwrap());
        let mut mapped = member("mapped", 8, &[], &[]);
        mapped.endpoint_ip = Some("::ffff:0.0.0.0".parse().unwrap());
        let mut bad_fp = member("bad-fp", 9, &[], &[]);
        bad_fp.spec.cert_fingerprint = Some("zz".into());
        let b = member("b", 10, &[], &[]);
        let p = plan(
            &h,
            &[],
            &[
                a,
                unspecified,
                twin,
                hub_twin,
                named,
                multicast,
                mapped,
                bad_fp,
                b,
            ],
        );
        let reasons: Vec<(&str, &str)> = p
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.ready().1))
            .collect();
        assert_eq!(
            reasons,
            [
                ("a", REASON_ALLOCATED),
                ("zero", REASON_INVALID_ENDPOINT),
                ("twin", REASON_KEY_PREFIX_COLLISION),
                ("hub-twin", REASON_KEY_PREFIX_COLLISION),
                ("named", REASON_INVALID_ENDPOINT),
                ("multicast", REASON_INVALID_ENDPOINT),
                ("mapped", REASON_INVALID_ENDPOINT),
                ("bad-fp", REASON_INVALID_CERT_FINGERPRINT),
                ("b", REASON_ALLOCATED),
            ]
        );
        let msg = |n: usize| p.members[n].ready().2;
        assert!(
            msg(1).contains("spec.endpoint 0.0.0.0") && msg(1).contains("unspecified"),
            "{}",
            msg(1)
        );
        assert!(
            msg(2).contains("Peer a") && msg(2).contains("7 bytes"),
            "{}",
            msg(2)
        );
        assert!(msg(3).contains("hub's own key"), "{}", msg(3));
        assert!(
            msg(4).contains("localhost (resolved to ::1)") && msg(4).contains("loopback"),
            "{}",
            msg(4)
        );
        // Invalid members get no block; the two valid ones are served.
        assert!(
            p.members[1..8]
                .iter()
                .all(|m| m.allocated.is_empty() && m.peer.is_none())
        );
        let served: Vec<_> = p
            .dataplane
            .peers
            .iter()
            .map(|q| q.name.clone().unwrap())
            .collect();
        assert_eq!(served, ["a", "b"]);
        p.dataplane.validate().unwrap();
    }

    #[test]
    fn anything_the_dataplane_refuses_costs_that_peer_only() {
        // The net under the planner: a peer the dataplane refuses for a rule the planner
        // would not know (emulated by breaking a planned peer) is left out alone.
        let h = hub(&[("100.64.0.0/10", 16)]);
        let mut p = plan(
            &h,
            &[],
            &[member("a", 2, &[], &[]), member("b", 3, &[], &[])],
        );
        // Break b's planned peer the way a future dataplane rule might, and re-run the
        // defence-in-depth step through `plan`'s own code path.
        p.dataplane.peers[1].endpoint = Some("0.0.0.0:1".parse().unwrap());
        let rejected = p.dataplane.drop_invalid_peers().unwrap();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].peer.name.as_deref(), Some("b"));
        p.dataplane.validate().unwrap();
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

    mod adversarial {
        use super::*;
        use proptest::prelude::*;

        /// Keys from a small set (duplicates), twins of those sharing the first 7 bytes,
        /// and twins of the hub's key.
        fn key_text() -> impl Strategy<Value = Option<String>> {
            (0u8..6, 0u8..4, any::<u8>()).prop_map(|(base, kind, salt)| {
                let mut k = key(base + 2).public_key().0;
                match kind {
                    0 => {}
                    1 => k[7 + (salt as usize % 25)] ^= 1 | salt,
                    2 => {
                        k = key(1).public_key().0;
                        k[31] ^= 1 | salt;
                    }
                    _ => return (salt % 8 == 0).then(|| "not-a-key".to_string()),
                }
                Some(PublicKey(k).to_base64())
            })
        }

        fn endpoint() -> impl Strategy<Value = Option<IpAddr>> {
            prop::sample::select(vec![
                None,
                Some("198.18.0.9"),
                Some("198.18.0.10"),
                Some("fd00:18::9"),
                Some("0.0.0.0"),
                Some("::"),
                Some("::ffff:0.0.0.0"),
                Some("127.0.0.1"),
                Some("::1"),
                Some("::ffff:127.0.0.1"),
                Some("224.0.0.5"),
                Some("ff02::1"),
                Some("255.255.255.255"),
            ])
            .prop_map(|e| e.map(|s| s.parse().unwrap()))
        }

        fn cidrs() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "10.1.0.0/16",
                    "10.1.2.0/24",
                    "10.1.2.3/24",
                    "10.2.0.0/16",
                    "0.0.0.0/0",
                    "100.64.3.0/24",
                    "fd10::/64",
                    "fd10::/48",
                    "::/0",
                    "garbage",
                ]),
                0..3,
            )
            .prop_map(|v| v.into_iter().map(String::from).collect())
        }

        fn allocated() -> impl Strategy<Value = Vec<IpNet>> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "100.64.0.0/16",
                    "100.65.0.0/16",
                    "100.66.0.0/16",
                    "100.65.0.0/24",
                    "10.1.0.0/16",
                    "fd00:64::/64",
                    "fd00:64:0:1::/64",
                ]),
                0..2,
            )
            .prop_map(|v| v.into_iter().map(|s| s.parse().unwrap()).collect())
        }

        prop_compose! {
            fn peer_input(i: usize)(
                key in key_text(),
                endpoint in endpoint(),
                port in prop::sample::select(vec![0u16, 1, 31820, 65535]),
                quic in any::<bool>(),
                fp in prop::sample::select(vec![None, Some("ab".repeat(32)), Some("AB".repeat(32)), Some("short".into())]),
                cidrs in cidrs(),
                allocated in allocated(),
                mismatch in prop::bool::weighted(0.05),
            ) -> PeerInput {
                let name = format!("m{i}");
                PeerInput {
                    name: name.clone(),
                    spec: PeerSpec {
                        cluster_id: if mismatch { "other".into() } else { name },
                        cidrs,
                        endpoint: endpoint.map(|e| e.to_string()),
                        port,
                        public_key: key,
                        cert_fingerprint: fp,
                        transport: if quic { Transport::Quic } else { Transport::Wg },
                        is_hub: false,
                        is_public: true,
                    },
                    allocated,
                    endpoint_ip: endpoint,
                }
            }
        }

        fn peers() -> impl Strategy<Value = Vec<PeerInput>> {
            (0usize..24).prop_flat_map(|n| (0..n).map(peer_input).collect::<Vec<_>>())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Whatever the Peers say, the planned dataplane config is one the hub dataplane
            /// accepts, the planner's own validation already caught every problem (nothing
            /// reaches the dataplane's net), and every member that is valid and has a block
            /// is served.
            #[test]
            fn every_planned_config_is_accepted_by_the_dataplane(members in peers()) {
                let h = hub(&[("100.64.0.0/10", 16), ("fd00:64::/48", 64)]);
                let p = plan(&h, &[], &members);
                if let Err(e) = p.dataplane.validate() {
                    prop_assert!(false, "the hub dataplane refuses the plan: {e}");
                }
                for m in &p.members {
                    let (_, reason, msg) = m.ready();
                    prop_assert_ne!(reason, REASON_REJECTED_BY_DATAPLANE, "{}: {}", m.name, msg);
                    let served = p.dataplane.peers.iter().any(|q| q.name.as_deref() == Some(&m.name));
                    prop_assert_eq!(
                        served,
                        m.invalid.is_none() && !m.allocated.is_empty(),
                        "{} {:?}", m.name, m.ready()
                    );
                }
                // Relay ids are unique among served peers and differ from the hub's.
                let mut ids: Vec<RelayId> = p.dataplane.peers.iter().map(|q| RelayId::of(&q.public_key)).collect();
                ids.push(RelayId::of(&h.private_key.public_key()));
                let n = ids.len();
                ids.sort();
                ids.dedup();
                prop_assert_eq!(ids.len(), n);
            }
        }
    }
}
