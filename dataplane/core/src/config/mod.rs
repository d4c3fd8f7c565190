//! The dataplane's configuration: a plain serde value, checked by [`DataplaneConfig::validate`]
//! (every problem reported with the field that has it) and applied atomically by
//! [`crate::Dataplane::apply_config`].
//!
//! Routing follows WireGuard's cryptokey routing: each peer's `allowed_ips` (plus any extra
//! [`RouteConfig`] naming that peer) are both where packets to those addresses go and the only
//! source addresses accepted from that peer.
//!
//! The value and its defaults are here; the checks in `validate` ([`ConfigError`] and
//! [`DataplaneConfig::drop_invalid_peers`] too).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::key::{PublicKey, SecretKey};

mod validate;

pub use validate::{ConfigError, FieldError, RejectedPeer, check_endpoint};

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
}

#[cfg(test)]
mod tests;
