//! I/O driver of the FleetBoard dataplane: the TUN device, the UDP socket, the admin
//! endpoint, metrics, around the sans-IO [`fleetboard_dataplane_core::Dataplane`].
//!
//! # How a transport plugs in
//!
//! The core decides *which peer* a packet is for; a transport turns "packet for peer P" into
//! datagrams on the underlay and back. Transports are an enum
//! ([`fleetboard_dataplane_core::Transport`]: `Wg`, `Quic`), chosen globally by the config's
//! `transport` and per peer by `peers[].transport`.
//!
//! - **`Wg`** lives inside the core (boringtun is sans-IO): `handle_tun` returns
//!   `Action::SendUdp` with the encrypted datagram in `out`, and the driver sends it on the
//!   shared UDP socket; `handle_udp` takes what that socket receives.
//! - **Any other transport** (QUIC, `dataplane/src/quic/`): for a peer whose transport is
//!   not `Wg`, `handle_tun` (and relay in `handle_udp`) returns
//!   `Action::SendPeer { peer, transport, len }` with the *plaintext* IP packet in
//!   `out[..len]`; the driver hands it to that transport's `send(peer, packet)`. When the
//!   transport receives and decrypts a packet from peer P, the driver calls
//!   `core.handle_peer_packet(now, P, packet, out)`: the core checks the inner source
//!   against P's allowed CIDRs (cryptokey routing) and returns `WriteTun` or a relay action,
//!   exactly as for wg. The transport finds peers with `core.peers()` / `core.peer(id)` /
//!   `core.peer_by_key(key)` (endpoint, public key, allowed IPs), and must re-read them after
//!   every `apply_config` (admin call or SIGHUP, both in `driver.rs`).
//! - In `driver.rs` the `Action::SendPeer` arm of `perform` is where the QUIC transport is
//!   called; its receive path feeds `handle_peer_packet` from the event loop's `select!`.
//!
//! The driver is one task owning the core (no lock on the hot path); admin requests and
//! reloads reach it over a channel.

pub mod admin;
pub mod config_file;
pub mod driver;
pub mod metrics;
pub mod netlink;
pub mod quic;
pub mod show;
pub mod tun;
pub mod udp;

pub use admin::{AdminClient, AdminError, Request, Response};
pub use driver::{DataplaneDriver, DriverError};
pub use fleetboard_dataplane_core as core;
