//! Sans-IO core of the FleetBoard dataplane (no sockets, no TUN, no clock reads outside
//! [`session`], which wraps boringtun).
//!
//! - [`config`]: the configuration value ([`DataplaneConfig`]) with `validate()`;
//!   [`quic_config`]: its QUIC part.
//! - [`key`]: WireGuard keys.
//! - [`route`]: longest-prefix-match table, IPv4 and IPv6.
//! - [`peer`]: the peer table and per-peer counters.
//! - [`session`]: WireGuard sessions (boringtun `noise::Tunn`).
//! - [`dataplane`]: [`Dataplane`], the state machine: `handle_tun`, `handle_udp`,
//!   `handle_peer_packet`, `handle_timeout`, `apply_config` in; [`Action`]s,
//!   `poll_transmit`, `poll_probe`, `poll_reconnect`, `poll_timeout` out.
//! - [`probe`]: data-path probes (a smoltcp interface on the tunnel address).
//! - [`service_nat`]: ClusterSetIP VIP -> endpoint translation with connection tracking.
//! - [`drop`]: [`DropReason`] and its counters.
//! - [`relay`]: end-to-end relaying through the hub (the hub forwards ciphertext).
//! - [`wire`]: the IP header view.
//! - [`wg`]: WireGuard with session keys shared by threads (handshake on `snow`, lock-free
//!   seal/open, replay window for the in-order sequencer); not wired into [`Dataplane`] yet.
//! - [`mtu`], [`icmp`], [`mss`]: tunnel MTU per transport, ICMP too-big errors, TCP MSS
//!   clamping (QUIC branch).

pub mod config;
pub mod dataplane;
pub mod drop;
pub mod icmp;
pub mod key;
pub mod mss;
pub mod mtu;
pub mod peer;
pub mod probe;
pub mod quic_config;
pub mod relay;
pub mod route;
pub mod service_nat;
pub mod session;
pub mod wg;
pub mod wire;

pub use config::{
    AdminConfig, ConfigError, DataplaneConfig, FieldError, InterfaceConfig, PeerConfig,
    RejectedPeer, RouteConfig, Transport, check_endpoint,
};
pub use dataplane::{
    Action, Dataplane, DataplaneStatus, MAX_PACKET, PeerView, TIMER_TICK, Transmit,
};
pub use drop::{DropCounters, DropReason};
pub use key::{KeyError, PublicKey, SecretKey};
pub use peer::{PeerCounters, PeerId, PeerStatus};
