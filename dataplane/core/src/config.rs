//! The dataplane's configuration: a plain serde value, checked by [`DataplaneConfig::validate`]
//! (every problem reported with the field that has it) and applied atomically by
//! [`crate::Dataplane::apply_config`].
//!
//! Routing follows WireGuard's cryptokey routing: each peer's `allowed_ips` (plus any extra
//! [`RouteConfig`] naming that peer) are both where packets to those addresses go and the only
//! source addresses accepted from that peer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::key::{PublicKey, SecretKey};

/// Default UDP port of the dataplane (WireGuard and QUIC).
pub const DEFAULT_LISTEN_PORT: u16 = 31820;
/// Default TUN MTU: 1500 minus the WireGuard-over-IPv6 overhead (40 + 8 + 32), as `wg-quick`.
pub const DEFAULT_MTU: u16 = 1420;
/// Largest MTU we accept: the packet buffers are sized for it plus headroom.
pub const MAX_MTU: u16 = 9000;
/// Smallest MTU we accept (IPv4 minimum reassembly size).
pub const MIN_MTU: u16 = 576;
/// Smallest MTU with an IPv6 address (RFC 8200).
pub const MIN_MTU_V6: u16 = 1280;

/// How packets for a peer are carried over the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WireGuard protocol over UDP (boringtun `noise::Tunn`), handled inside the core.
    #[default]
    Wg,
    /// QUIC datagrams (quinn), handled by the driver's QUIC transport; the core hands it
    /// plaintext IP packets per peer.
    Quic,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Wg => "wg",
            Transport::Quic => "quic",
        })
    }
}

/// Everything a dataplane instance needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// The TUN device.
    pub interface: InterfaceConfig,
    /// This node's private key (base64, `fleetboard keygen`).
    pub private_key: SecretKey,
    /// UDP port to listen on (0 = any free port).
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// Address to bind the UDP socket to (default: all addresses, IPv6 dual-stack).
    #[serde(default)]
    pub listen_address: Option<IpAddr>,
    /// Transport for peers that do not choose one.
    #[serde(default)]
    pub transport: Transport,
    /// The peers this node talks to.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Extra routes to peers, in addition to their `allowed_ips`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The local admin endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Address of the HTTP server with `/metrics`, `/live`, `/ready` (none = not served).
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// The QUIC transport (identity, port, underlay MTU); used when a peer's transport is quic.
    #[serde(default)]
    pub quic: crate::quic_config::QuicSettings,
    /// Service VIPs translated to endpoints by this node (ClusterSetIPs of ServiceImports,
    /// see [`crate::service_nat`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<crate::service_nat::ServiceConfig>,
    /// Prefixes of this node itself (its own block): packets to them from peers go to the
    /// TUN device even when a broader route (the hub's) covers them. The interface addresses
    /// are always local.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<IpNet>,
    /// Forward relay messages between peers without decrypting them (the hub; see
    /// [`crate::relay`]). Off: relay messages for other nodes are dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
    /// Data-path probes (see [`crate::probe`]): how often and over how many probes.
    #[serde(default, skip_serializing_if = "ProbeSettings::is_default")]
    pub probe: ProbeSettings,
}

/// Data-path probe settings: every peer with a `probe_address` (configured or learned from
/// its own probes) gets a probe every `interval_ms`; figures are over the last `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Milliseconds between two probes to one peer (0: send none; still answer).
    #[serde(default = "default_probe_interval")]
    pub interval_ms: u32,
    /// Probes in the window the loss and median RTT are computed over.
    #[serde(default = "default_probe_window")]
    pub window: u16,
    /// An unanswered probe counts as lost after this many milliseconds.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u32,
    /// A peer whose last probe reply is older than this many milliseconds is reported dead
    /// (`probe_alive: false`; see [`crate::probe`]).
    #[serde(default = "default_probe_dead_after")]
    pub dead_after_ms: u32,
}

/// Default [`ProbeSettings::interval_ms`].
pub const DEFAULT_PROBE_INTERVAL_MS: u32 = 1000;
/// Default [`ProbeSettings::window`].
pub const DEFAULT_PROBE_WINDOW: u16 = 30;
/// Default [`ProbeSettings::timeout_ms`].
pub const DEFAULT_PROBE_TIMEOUT_MS: u32 = 1000;
/// Default [`ProbeSettings::dead_after_ms`]: three missed probes at the default interval.
pub const DEFAULT_PROBE_DEAD_AFTER_MS: u32 = 3000;
/// Largest [`ProbeSettings::window`].
pub const MAX_PROBE_WINDOW: u16 = 1024;

fn default_probe_interval() -> u32 {
    DEFAULT_PROBE_INTERVAL_MS
}
fn default_probe_window() -> u16 {
    DEFAULT_PROBE_WINDOW
}
fn default_probe_timeout() -> u32 {
    DEFAULT_PROBE_TIMEOUT_MS
}
fn default_probe_dead_after() -> u32 {
    DEFAULT_PROBE_DEAD_AFTER_MS
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            window: DEFAULT_PROBE_WINDOW,
            timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            dead_after_ms: DEFAULT_PROBE_DEAD_AFTER_MS,
        }
    }
}

impl ProbeSettings {
    /// [`ProbeSettings::dead_after_ms`] as a duration.
    pub fn dead_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.dead_after_ms))
    }

    /// True for the defaults (left out when serialised: older readers keep working).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_listen_port() -> u16 {
    DEFAULT_LISTEN_PORT
}

/// The TUN device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Device name (at most 15 bytes).
    #[serde(default = "default_ifname")]
    pub name: String,
    /// MTU of the device.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Addresses with prefix length, e.g. `100.64.1.1/10`, `fd00:64::1:1/64`.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Further blocks routed through the device, beyond what the addresses' prefixes cover
    /// (e.g. the MCS service block when the tunnel CIDR does not hold it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
}

fn default_ifname() -> String {
    "fb0".to_string()
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's public key: its identity.
    pub public_key: PublicKey,
    /// A label for `show` and metrics (e.g. the cluster id).
    #[serde(default)]
    pub name: Option<String>,
    /// Where to reach it; without one we wait for it to reach us (then roam to its address).
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// Addresses routed to this peer and accepted as source from it.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives (NAT traversal, dead hub detection); none = off.
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    /// Transport for this peer (default: the global `transport`).
    #[serde(default)]
    pub transport: Option<Transport>,
    /// QUIC: pinned SHA-256 of the peer's certificate public key (base64 or hex).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Reach this peer through another peer (public key of a relay, the hub), which forwards
    /// our WireGuard messages without decrypting them ([`crate::relay`]); `endpoint` is then
    /// unused. Both peers must use the wg transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PublicKey>,
    /// The peer's own tunnel address, where its dataplane answers probes (see
    /// [`crate::probe`]); must be inside `allowed_ips`. None: probed once it probes us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<IpAddr>,
}

/// An extra route: `cidr` goes to `peer` (also accepted as source from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination prefix.
    pub cidr: IpNet,
    /// Public key of the peer the prefix is routed to.
    pub peer: PublicKey,
}

/// The local admin endpoint (a unix socket with one JSON request and reply per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Path of the unix socket.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
}

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/fleetboard/dataplane.sock";

fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: default_admin_socket(),
        }
    }
}

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

impl PeerConfig {
    /// A peer with `public_key` that routes `allowed_ips`; every other field as a config file
    /// that leaves it out gives it (no name, no endpoint, no keepalive, the global transport).
    pub fn new(public_key: PublicKey, allowed_ips: Vec<IpNet>) -> Self {
        Self {
            public_key,
            name: None,
            endpoint: None,
            allowed_ips,
            persistent_keepalive: None,
            transport: None,
            fingerprint: None,
            via: None,
            probe_address: None,
        }
    }

    /// The transport for this peer, given the global default.
    pub fn transport_or(&self, default: Transport) -> Transport {
        self.transport.unwrap_or(default)
    }

    /// `name` or a short form of the public key, for logs and labels.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.public_key.to_base64()[..8].to_string())
    }
}

impl DataplaneConfig {
    /// A config with `private_key` and the TUN device `interface` with `addresses` (default
    /// MTU); every other field as a config file that leaves it out gives it (no peers).
    pub fn new(private_key: SecretKey, interface: &str, addresses: Vec<IpNet>) -> Self {
        Self {
            interface: InterfaceConfig {
                name: interface.into(),
                mtu: DEFAULT_MTU,
                addresses,
                routes: Vec::new(),
            },
            private_key,
            listen_port: DEFAULT_LISTEN_PORT,
            listen_address: None,
            transport: Transport::default(),
            peers: Vec::new(),
            routes: Vec::new(),
            admin: AdminConfig::default(),
            metrics_address: None,
            quic: Default::default(),
            services: Vec::new(),
            local: Vec::new(),
            relay: false,
            probe: ProbeSettings::default(),
        }
    }

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

#[cfg(test)]
mod tests {
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
}
