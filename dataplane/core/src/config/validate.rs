//! Checking a [`DataplaneConfig`]: every problem with the field that has it, and the
//! peers a control plane may leave out to keep the rest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{
    DataplaneConfig, MAX_MTU, MAX_PROBE_WINDOW, MIN_MTU, MIN_MTU_V6, PeerConfig, Transport,
};

/// One problem in a configuration, with the field it is in (e.g. `peers[1].allowed_ips[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<FieldError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid dataplane config:")?;
        for e in &self.0 {
            write!(f, "\n  {}: {}", e.field, e.problem)?;
        }
        Ok(())
    }
}

impl FieldError {
    /// The index of the peer this problem belongs to (a field under `peers[i]`), if any.
    pub fn peer(&self) -> Option<usize> {
        let rest = self.field.strip_prefix("peers[")?;
        rest[..rest.find(']')?].parse().ok()
    }
}

impl ConfigError {
    /// True when every problem belongs to a peer: leaving those peers out (see
    /// [`DataplaneConfig::drop_invalid_peers`]) gives a valid config.
    pub fn only_peers(&self) -> bool {
        self.0.iter().all(|e| e.peer().is_some())
    }
}

/// A peer [`DataplaneConfig::drop_invalid_peers`] left out, with its problems (fields named
/// by the peer's index in the config as given).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedPeer {
    /// Its index in the config as given.
    pub index: usize,
    /// The peer.
    pub peer: PeerConfig,
    /// What is wrong with it.
    pub problems: Vec<FieldError>,
}

/// Is `ep` an address a peer can be reached at? `Err` says why not. Loopback is allowed
/// (a peer on the same host); the unspecified address (`0.0.0.0`, `::`, also IPv4-mapped),
/// multicast, the IPv4 broadcast address and port 0 are not.
pub fn check_endpoint(ep: SocketAddr) -> Result<(), String> {
    let ip = ep.ip().to_canonical();
    let why = if ep.port() == 0 {
        "port 0"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!("{ep} is not a reachable address ({why})"))
}
impl DataplaneConfig {
    /// Checks the whole config; the error lists every problem by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let mut err = |field: String, problem: String| errs.push(FieldError { field, problem });

        let ifc = &self.interface;
        if ifc.name.is_empty() || ifc.name.len() > 15 {
            err(
                "interface.name".into(),
                format!("must be 1 to 15 bytes, got {:?}", ifc.name),
            );
        }
        if ifc.name.contains(['/', ' ', '\0']) {
            err(
                "interface.name".into(),
                "must not contain '/', ' ' or NUL".into(),
            );
        }
        if !(MIN_MTU..=MAX_MTU).contains(&ifc.mtu) {
            err(
                "interface.mtu".into(),
                format!("must be in {MIN_MTU}..={MAX_MTU}, got {}", ifc.mtu),
            );
        } else if ifc.mtu < MIN_MTU_V6 && ifc.addresses.iter().any(|a| a.addr().is_ipv6()) {
            err(
                "interface.mtu".into(),
                format!(
                    "must be at least {MIN_MTU_V6} with an IPv6 address, got {}",
                    ifc.mtu
                ),
            );
        }
        if ifc.addresses.iter().filter(|a| a.addr().is_ipv4()).count() > 1 {
            err(
                "interface.addresses".into(),
                "at most one IPv4 address is supported".into(),
            );
        }

        let own = self.private_key.public_key();
        let mut keys = HashSet::new();
        let mut cidrs: HashMap<IpNet, String> = HashMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.public_key == own {
                err(
                    format!("peers[{i}].public_key"),
                    "is this node's own public key".into(),
                );
            }
            if !keys.insert(p.public_key) {
                err(
                    format!("peers[{i}].public_key"),
                    format!("duplicate peer {}", p.public_key),
                );
            }
            if p.persistent_keepalive == Some(0) {
                err(
                    format!("peers[{i}].persistent_keepalive"),
                    "must be at least 1 second (omit it to turn keepalives off)".into(),
                );
            }
            if let Some(ep) = p.endpoint
                && let Err(why) = check_endpoint(ep)
            {
                err(format!("peers[{i}].endpoint"), why);
            }
            for (j, c) in p.allowed_ips.iter().enumerate() {
                let field = format!("peers[{i}].allowed_ips[{j}]");
                if *c != c.trunc() {
                    err(
                        field.clone(),
                        format!("{c} has host bits set (did you mean {}?)", c.trunc()),
                    );
                }
                if let Some(prev) = cidrs.insert(c.trunc(), field.clone()) {
                    err(field, format!("{c} is already routed by {prev}"));
                }
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            let Some(via) = p.via else { continue };
            let field = format!("peers[{i}].via");
            match self.peers.iter().find(|q| q.public_key == via) {
                _ if via == p.public_key => err(field, "a peer cannot be its own relay".into()),
                None => err(field, format!("no peer with public key {via}")),
                Some(r) if r.via.is_some() => err(
                    field,
                    format!("peer {via} is itself reached through a relay (no chains)"),
                ),
                Some(r) if r.transport_or(self.transport) != Transport::Wg => {
                    err(field, format!("relay {via} must use the wg transport"))
                }
                Some(_) => {}
            }
            if p.transport_or(self.transport) != Transport::Wg {
                err(
                    format!("peers[{i}].transport"),
                    "a peer reached through a relay must use the wg transport".into(),
                );
            }
        }
        if self.relay {
            let mut ids: HashMap<crate::relay::RelayId, usize> = HashMap::new();
            let own_id = crate::relay::RelayId::of(&own);
            for (i, p) in self.peers.iter().enumerate() {
                let id = crate::relay::RelayId::of(&p.public_key);
                if id == own_id && p.public_key != own {
                    err(
                        format!("peers[{i}].public_key"),
                        "starts with the same 7 bytes as this node's own public key; relay \
                         messages for it would be taken for this node (generate a new key)"
                            .into(),
                    );
                    continue;
                }
                if let Some(&j) = ids.get(&id) {
                    err(
                        format!("peers[{i}].public_key"),
                        format!(
                            "starts with the same 7 bytes as peers[{j}].public_key; a relay \
                             cannot tell them apart (generate a new key for one of them)"
                        ),
                    );
                } else {
                    ids.insert(id, i);
                }
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(a) = p.probe_address
                && !p.allowed_ips.iter().any(|c| c.contains(&a))
            {
                err(
                    format!("peers[{i}].probe_address"),
                    format!("{a} is not inside the peer's allowed_ips"),
                );
            }
        }
        let pr = &self.probe;
        if pr.interval_ms != 0 && pr.interval_ms < 10 {
            err(
                "probe.interval_ms".into(),
                format!("must be 0 (off) or at least 10, got {}", pr.interval_ms),
            );
        }
        if !(1..=MAX_PROBE_WINDOW).contains(&pr.window) {
            err(
                "probe.window".into(),
                format!("must be in 1..={MAX_PROBE_WINDOW}, got {}", pr.window),
            );
        }
        if pr.timeout_ms == 0 {
            err("probe.timeout_ms".into(), "must be at least 1".into());
        }
        if pr.dead_after_ms == 0 {
            err("probe.dead_after_ms".into(), "must be at least 1".into());
        }
        for (i, c) in self.local.iter().enumerate() {
            if *c != c.trunc() {
                err(
                    format!("local[{i}]"),
                    format!("{c} has host bits set (did you mean {}?)", c.trunc()),
                );
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}].cidr");
            if r.cidr != r.cidr.trunc() {
                err(
                    field.clone(),
                    format!(
                        "{} has host bits set (did you mean {}?)",
                        r.cidr,
                        r.cidr.trunc()
                    ),
                );
            }
            if let Some(prev) = cidrs.insert(r.cidr.trunc(), field.clone()) {
                err(field, format!("{} is already routed by {prev}", r.cidr));
            }
            if !keys.contains(&r.peer) {
                err(
                    format!("routes[{i}].peer"),
                    format!("no peer with public key {}", r.peer),
                );
            }
        }
        crate::quic_config::validate(self, &mut err);
        crate::service_nat::validate(&self.services, &mut err);
        if self.admin.socket.as_os_str().is_empty() {
            err("admin.socket".into(), "must not be empty".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }

    /// Leaves out every peer that has a problem of its own (a bad endpoint, a key another
    /// peer or this node already has or shares a relay prefix with, a CIDR another peer
    /// routes, ...) and returns them; the config that remains validates. Conflicts are
    /// reported on the later peer, so the earlier ones stay. `Err` (and the config unchanged)
    /// when a problem concerns no single peer (the interface, the QUIC identity, ...).
    ///
    /// For a control plane that builds the config from many independent sources: one bad
    /// source must cost its own peer, never the whole config.
    pub fn drop_invalid_peers(&mut self) -> Result<Vec<RejectedPeer>, ConfigError> {
        let mut trial = self.clone();
        // Index in the config as given, per peer left.
        let mut origin: Vec<usize> = (0..trial.peers.len()).collect();
        let mut rejected: Vec<RejectedPeer> = Vec::new();
        loop {
            let e = match trial.validate() {
                Ok(()) => break,
                Err(e) => e,
            };
            if !e.only_peers() {
                return Err(e);
            }
            let mut bad: Vec<(usize, Vec<FieldError>)> = Vec::new();
            for fe in e.0 {
                let i = fe.peer().expect("only peer problems");
                let field = format!(
                    "peers[{}]{}",
                    origin[i],
                    &fe.field[fe.field.find(']').map_or(0, |p| p + 1)..]
                );
                let fe = FieldError {
                    field,
                    problem: fe.problem,
                };
                match bad.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, v)) => v.push(fe),
                    None => bad.push((i, vec![fe])),
                }
            }
            // Highest index first, so the lower ones stay valid while removing.
            bad.sort_by_key(|b| std::cmp::Reverse(b.0));
            let mut removed = Vec::new();
            for (i, problems) in bad {
                let peer = trial.peers.remove(i);
                removed.push(peer.public_key);
                let index = origin.remove(i);
                rejected.push(RejectedPeer {
                    index,
                    peer,
                    problems,
                });
            }
            // Extra routes to a peer left out go with it.
            let peers = &trial.peers;
            trial.routes.retain(|r| {
                !removed.contains(&r.peer) || peers.iter().any(|p| p.public_key == r.peer)
            });
        }
        rejected.sort_by_key(|r| r.index);
        *self = trial;
        Ok(rejected)
    }
}
