//! Each member Peer checked before it is served: identity, key and relay-prefix clashes,
//! QUIC fingerprint, endpoint, CIDRs (the oldest Peer wins a conflict).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use fleetboard_dataplane::core::PublicKey;
use fleetboard_dataplane::core::relay::RelayId;
use ipnet::IpNet;

use super::{
    HubSettings, Invalid, PeerInput, REASON_INVALID_CERT_FINGERPRINT, REASON_INVALID_ENDPOINT,
    REASON_KEY_PREFIX_COLLISION, member_port,
};
use crate::crd::peer::Transport;

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Validates members (oldest wins on conflicts): each gets an [`Invalid`] or none.
///
/// Every rule the hub dataplane's config validation has about a peer is checked here first,
/// so one bad Peer is flagged and left out instead of making the dataplane refuse the whole
/// config (see `plan`, which still leaves out anything the dataplane would refuse).
pub(super) fn validate(hub: &HubSettings, members: &[&PeerInput]) -> Vec<Option<Invalid>> {
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
