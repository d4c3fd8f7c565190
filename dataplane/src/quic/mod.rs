//! QUIC transport of the dataplane (beside WireGuard): quinn + rustls (ring), one connection
//! per peer, each IP packet one QUIC DATAGRAM frame (RFC 9221), mutual TLS with pinned public
//! keys or a cluster-set CA.
//!
//! Use: [`QuicTransport::bind`] with a [`QuicConfig`], then [`QuicTransport::set_peers`] /
//! [`QuicTransport::upsert_peer`] give a [`QuicPeer`] handle per peer to send with; received
//! packets arrive as [`Received`] on the channel `bind` returns. Sizes: see
//! [`fleetboard_dataplane_core::mtu`] (QUIC adds 66 bytes on IPv4, 86 on IPv6).
//!
//! # In the dataplane config
//!
//! ```yaml
//! transport: quic                 # default for peers; or per peer `transport: quic|wg`
//! quic:
//!   listen_port: 31821            # beside WireGuard's 31820
//!   certificate: /etc/fleetboard/quic.crt   # `fleetboard quic-identity --name gw-a --dir ...`
//!   private_key: /etc/fleetboard/quic.key
//!   ca: /etc/fleetboard/ca.crt    # optional: trust certificates this CA issued per peer name
//!   underlay_mtu: 1500
//!   path_mtu_discovery: false   # pin the MTU to underlay_mtu's (default)
//! peers:
//!   - name: hub
//!     public_key: ...             # still the peer's id in routes and status
//!     endpoint: 198.18.0.1:31821  # the peer's QUIC port; without it we only accept
//!     fingerprint: 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=   # SHA-256 of its SPKI
//! ```
//!
//! [`QuicLink`] is what the driver holds: it starts the endpoint from that config, keeps one
//! [`QuicPeer`] per quic peer of the core, answers too-big packets with ICMP
//! ([`fleetboard_dataplane_core::icmp`]) and clamps TCP SYNs
//! ([`fleetboard_dataplane_core::mss`]).

mod fixed_window;
mod identity;
mod link;
mod stats;
mod tls;
mod transport;
mod verify;

use std::net::SocketAddr;
use std::time::Duration;

use fleetboard_dataplane_core::mtu::{self, Encapsulation, UnderlayFamily};
use rustls_pki_types::{CertificateDer, TrustAnchor};

pub use identity::{ClusterCa, Fingerprint, Identity, IdentityError, generate_identity_pem};
pub use link::{LinkSend, QuicLink};
pub use stats::{EndpointStats, PeerStats};
pub use tls::udp_socket;
pub use transport::{ALPN, MAX_BACKOFF, MIN_BACKOFF, QuicPeer, QuicTransport, Received, SendError};

/// Default keepalive: well under common NAT UDP timeouts (30 s) and frequent enough that a
/// dead path is noticed within a few seconds.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
/// Default idle timeout: three keepalives may be lost before the connection is declared dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Incoming handshakes allowed at once; beyond it new attempts get a Retry or are refused,
/// which bounds the CPU a flood of connection attempts can take.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Incoming handshakes from one source address allowed at once: one sender cannot hold the
/// slots of [`DEFAULT_MAX_HANDSHAKES`] (a gateway dials each peer once; a few more cover
/// retries and several gateways behind one NAT).
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 4;
/// An incoming handshake not complete after this is dropped and its slot freed (a real one
/// takes a round trip or two; quinn would otherwise wait for the idle timeout).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Received packets queued towards the TUN before QUIC's own receive buffers take the strain.
pub const DEFAULT_RX_QUEUE: usize = 4096;
/// Datagram receive buffer per connection (bytes): absorbs bursts while the TUN writer runs.
const DATAGRAM_RECV_BUFFER: usize = 4 << 20;
/// Datagram send buffer per connection (bytes): a router-sized queue; more only adds latency.
const DATAGRAM_SEND_BUFFER: usize = 2 << 20;

/// Errors of the QUIC transport (configuration, binding, dialing).
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A configuration value is invalid; the message names the field.
    #[error("quic config: {0}")]
    Config(String),
    /// Identity loading/generation failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Tls(rustls::Error),
    /// The UDP socket could not be created or bound.
    #[error("udp socket: {0}")]
    Bind(std::io::Error),
    /// No tokio runtime is running.
    #[error("no tokio runtime")]
    NoRuntime,
    /// A dial failed.
    #[error("connect: {0}")]
    Connect(String),
}

/// Settings of the QUIC transport endpoint.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This gateway's name: the DNS SAN of its certificate, and the dial tie-breaker.
    pub name: String,
    /// UDP address to bind (port 0 for an ephemeral port).
    pub listen: SocketAddr,
    /// This gateway's key and certificate.
    pub identity: Identity,
    /// Cluster-set CA certificate: peers whose certificate it signed for their name are trusted.
    pub ca: Option<CertificateDer<'static>>,
    /// MTU of the underlay interface; sets quinn's `initial_mtu` and the tunnel MTU.
    pub underlay_mtu: u16,
    /// PLPMTUD on (MTU may fall to 1200) instead of pinned to `underlay_mtu`.
    pub path_mtu_discovery: bool,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Idle timeout after which a silent connection is dead.
    pub idle_timeout: Duration,
    /// Incoming handshakes allowed in flight.
    pub max_handshakes: usize,
    /// Incoming handshakes allowed in flight from one source IP address.
    pub max_handshakes_per_source: usize,
    /// Incoming handshakes not complete after this are dropped.
    pub handshake_timeout: Duration,
    /// Capacity of the received-packet channel.
    pub rx_queue: usize,
}

impl QuicConfig {
    /// Defaults for `name`, `listen` and `identity`: underlay MTU 1500, keepalive 5 s, idle 20 s.
    pub fn new(name: impl Into<String>, listen: SocketAddr, identity: Identity) -> Self {
        Self {
            name: name.into(),
            listen,
            identity,
            ca: None,
            underlay_mtu: 1500,
            path_mtu_discovery: false,
            keepalive: DEFAULT_KEEPALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            rx_queue: DEFAULT_RX_QUEUE,
        }
    }

    fn family(&self) -> UnderlayFamily {
        if self.listen.is_ipv4() {
            UnderlayFamily::V4
        } else {
            UnderlayFamily::V6
        }
    }

    /// The tunnel (TUN) MTU this endpoint carries: underlay MTU minus QUIC overhead.
    pub fn tunnel_mtu(&self) -> u16 {
        mtu::tunnel_mtu(self.underlay_mtu, Encapsulation::Quic, self.family())
    }

    /// Largest IP packet sent or accepted: the tunnel MTU.
    pub fn max_packet(&self) -> usize {
        usize::from(self.tunnel_mtu())
    }

    /// quinn's `initial_mtu` (UDP payload bytes) for this underlay.
    pub fn initial_mtu(&self) -> u16 {
        mtu::quic_initial_mtu(self.underlay_mtu, self.family())
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), QuicError> {
        if rustls_pki_types::DnsName::try_from(self.name.as_str()).is_err() {
            return Err(QuicError::Config(format!(
                "name {:?}: must be a DNS name like `gw-a`",
                self.name
            )));
        }
        if self.tunnel_mtu() < mtu::MIN_TUNNEL_MTU {
            return Err(QuicError::Config(format!(
                "underlay_mtu {}: gives a tunnel MTU of {} < {} (IPv6 minimum); need at least {}",
                self.underlay_mtu,
                self.tunnel_mtu(),
                mtu::MIN_TUNNEL_MTU,
                mtu::MIN_TUNNEL_MTU + mtu::overhead(Encapsulation::Quic, self.family())
            )));
        }
        if self.keepalive.is_zero() || self.keepalive >= self.idle_timeout {
            return Err(QuicError::Config(format!(
                "keepalive {:?}: must be non-zero and shorter than idle_timeout {:?}",
                self.keepalive, self.idle_timeout
            )));
        }
        if self.max_handshakes == 0 {
            return Err(QuicError::Config(
                "max_handshakes: must be at least 1".into(),
            ));
        }
        if self.max_handshakes_per_source == 0 {
            return Err(QuicError::Config(
                "max_handshakes_per_source: must be at least 1".into(),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(QuicError::Config(
                "handshake_timeout: must be non-zero".into(),
            ));
        }
        if self.rx_queue == 0 {
            return Err(QuicError::Config("rx_queue: must be at least 1".into()));
        }
        self.ca_anchor()?;
        Ok(())
    }

    fn ca_anchor(&self) -> Result<Option<TrustAnchor<'static>>, QuicError> {
        self.ca
            .as_ref()
            .map(|ca| {
                webpki::anchor_from_trusted_cert(ca)
                    .map(|a| a.to_owned())
                    .map_err(|e| QuicError::Config(format!("ca: not a usable CA certificate: {e}")))
            })
            .transpose()
    }

    /// quinn transport parameters: datagrams on, streams off, MTU from the underlay.
    fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(0u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
        t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
        // By default the MTU is pinned to the configured underlay's, as with WireGuard (see
        // `QuicSettings::path_mtu_discovery` for why); with discovery it may fall to 1200.
        let initial = self.initial_mtu();
        t.initial_mtu(initial);
        if self.path_mtu_discovery {
            t.min_mtu(mtu::QUIC_MIN_UDP_PAYLOAD);
            let mut discovery = quinn::MtuDiscoveryConfig::default();
            // Probing above the local interface MTU cannot succeed; probing up to it confirms it.
            discovery.upper_bound(initial);
            t.mtu_discovery_config(Some(discovery));
        } else {
            t.min_mtu(initial);
            t.mtu_discovery_config(None);
        }
        t.keep_alive_interval(Some(self.keepalive));
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        set_congestion_controller(&mut t);
        t
    }
}

/// Congestion controller of every QUIC connection: `FLEETBOARD_QUIC_CC=cubic|bbr|newreno|none`
/// (default [`DEFAULT_CC`]; `none` is [`fixed_window`]: no congestion control of the tunnel,
/// as with WireGuard; perf/RESULTS.md compares Cubic and BBR on a clean link).
fn set_congestion_controller(t: &mut quinn::TransportConfig) {
    use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
    let cc = std::env::var("FLEETBOARD_QUIC_CC").unwrap_or_else(|_| DEFAULT_CC.to_string());
    match cc.as_str() {
        "bbr" => t.congestion_controller_factory(std::sync::Arc::new(BbrConfig::default())),
        "newreno" => t.congestion_controller_factory(std::sync::Arc::new(NewRenoConfig::default())),
        "none" => {
            t.congestion_controller_factory(std::sync::Arc::new(fixed_window::FixedWindowConfig))
        }
        _ => t.congestion_controller_factory(std::sync::Arc::new(CubicConfig::default())),
    };
}

/// The congestion controller used unless `FLEETBOARD_QUIC_CC` says otherwise: none (a fixed
/// window), as WireGuard has none. With Cubic, 1 % underlay loss or reordering cut the TCP
/// goodput through the tunnel to 0.11-0.29 of the raw link's (docs/RELIABILITY.md,
/// "Impaired underlay").
pub const DEFAULT_CC: &str = "none";

/// One peer of the QUIC transport.
#[derive(Clone, Debug)]
pub struct QuicPeerConfig<T> {
    /// The caller's id for the peer, handed back with every received packet.
    pub tag: T,
    /// Peer name: its certificate DNS SAN when CA-issued, and the dial tie-breaker.
    pub name: String,
    /// Pinned public key (SHA-256 of the SPKI); `None` to rely on the cluster-set CA.
    pub fingerprint: Option<Fingerprint>,
    /// Address to dial; `None` to only accept the peer's connection.
    pub endpoint: Option<SocketAddr>,
}

impl<T> QuicPeerConfig<T> {
    /// Checks the fields; the error names the bad one.
    pub fn validate(&self) -> Result<(), QuicError> {
        if rustls_pki_types::DnsName::try_from(self.name.as_str()).is_err() {
            return Err(QuicError::Config(format!(
                "peers[{}].name: must be a DNS name like `gw-a`",
                self.name
            )));
        }
        Ok(())
    }
}

/// Why a received datagram is not an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotIp {
    /// Empty, or too short for its IP header.
    Truncated,
    /// Version nibble neither 4 nor 6.
    Version,
    /// The IP length field disagrees with the datagram length.
    Length,
}

/// Checks that a datagram is exactly one IPv4 or IPv6 packet (version, header, total length).
pub fn check_ip_packet(p: &[u8]) -> Result<(), NotIp> {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            if p.len() < 20 {
                return Err(NotIp::Truncated);
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl < 20 || total < ihl || total != p.len() {
                return Err(NotIp::Length);
            }
            Ok(())
        }
        Some(6) => {
            if p.len() < 40 {
                return Err(NotIp::Truncated);
            }
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            if payload + 40 != p.len() {
                return Err(NotIp::Length);
            }
            Ok(())
        }
        Some(_) => Err(NotIp::Version),
        None => Err(NotIp::Truncated),
    }
}

#[cfg(test)]
mod tests;
