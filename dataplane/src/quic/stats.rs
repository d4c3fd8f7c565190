//! Counters of the QUIC transport: per peer and for the whole endpoint. Plain atomics bumped
//! on the packet path; snapshots are taken by the admin/metrics side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use quinn_proto::{HashedConnectionIdGenerator, InvalidCid};

/// Adds one to a relaxed counter.
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Endpoint-wide counters (events not attributable to a configured peer).
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub auth_rejected: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_source: AtomicU64,
    pub retried: AtomicU64,
    pub handshake_timeout: AtomicU64,
    /// Shared with the endpoint's [`CountingCids`].
    pub unknown_cid: Arc<AtomicU64>,
}

/// Snapshot of the endpoint-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStats {
    /// Certificates rejected by the verifiers (unknown key, wrong CA, wrong name).
    pub auth_rejected: u64,
    /// Incoming handshakes that failed (includes the rejected certificates and no certificate).
    pub handshake_failed: u64,
    /// Authenticated connections that matched no configured peer (peer removed meanwhile).
    pub unknown_peer: u64,
    /// Incoming connection attempts refused because too many handshakes were in flight.
    pub refused_busy: u64,
    /// Incoming attempts refused because their source address had too many handshakes in
    /// flight.
    pub refused_source: u64,
    /// Incoming attempts answered with a Retry (address validation) under load.
    pub retried: u64,
    /// Incoming handshakes dropped because they did not complete within the handshake
    /// timeout.
    pub handshake_timeout: u64,
    /// Datagrams addressed to a connection ID this endpoint never issued, which quinn drops:
    /// garbage on the port, or packets of a connection of an earlier run of this process.
    /// (Datagrams quinn cannot even parse, and long-header packets of no connection, it drops
    /// before asking: they are not counted.)
    pub unknown_cid: u64,
}

/// quinn's hashed connection IDs (its default), counting in `unknown` the datagrams whose
/// connection ID this endpoint never issued: quinn asks [`ConnectionIdGenerator::validate`]
/// about every short-header datagram that matches no connection, then drops the invalid ones
/// without a counter of its own.
pub(crate) struct CountingCids {
    inner: HashedConnectionIdGenerator,
    unknown: Arc<AtomicU64>,
}

impl CountingCids {
    /// The factory for [`quinn::EndpointConfig::cid_generator`] (called once per endpoint).
    pub fn factory(
        unknown: Arc<AtomicU64>,
    ) -> impl Fn() -> Box<dyn ConnectionIdGenerator> + Send + Sync + 'static {
        move || -> Box<dyn ConnectionIdGenerator> {
            Box::new(CountingCids {
                inner: HashedConnectionIdGenerator::new(),
                unknown: unknown.clone(),
            })
        }
    }
}

impl ConnectionIdGenerator for CountingCids {
    fn generate_cid(&mut self) -> ConnectionId {
        self.inner.generate_cid()
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let valid = self.inner.validate(cid);
        if valid.is_err() {
            bump(&self.unknown);
        }
        valid
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

impl EndpointCounters {
    pub fn snapshot(&self) -> EndpointStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointStats {
            auth_rejected: g(&self.auth_rejected),
            handshake_failed: g(&self.handshake_failed),
            unknown_peer: g(&self.unknown_peer),
            refused_busy: g(&self.refused_busy),
            refused_source: g(&self.refused_source),
            retried: g(&self.retried),
            handshake_timeout: g(&self.handshake_timeout),
            unknown_cid: g(&self.unknown_cid),
        }
    }
}

/// Per-peer counters.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drop_not_ip: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_too_big: AtomicU64,
    pub drop_not_connected: AtomicU64,
    pub connects: AtomicU64,
    pub dial_failures: AtomicU64,
}

/// Snapshot of one peer's state and counters (what `dataplane show` prints).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PeerStats {
    /// Configured peer name.
    pub name: String,
    /// Whether a QUIC connection is established now.
    pub connected: bool,
    /// The peer's current UDP address (follows migration), if connected.
    pub remote: Option<SocketAddr>,
    /// Smoothed RTT from QUIC's own estimator, if connected.
    pub rtt: Option<Duration>,
    /// Largest IP packet the connection carries now (path MTU minus QUIC overhead).
    pub max_packet: Option<usize>,
    /// Current path MTU (UDP payload bytes): the configured underlay MTU minus IP/UDP.
    pub path_mtu: Option<u16>,
    /// QUIC packets the connection declared lost.
    pub lost_packets: u64,
    /// IP packets sent to the peer.
    pub tx_packets: u64,
    /// IP bytes sent to the peer.
    pub tx_bytes: u64,
    /// IP packets received from the peer.
    pub rx_packets: u64,
    /// IP bytes received from the peer.
    pub rx_bytes: u64,
    /// Received datagrams that were not a well-formed IPv4/IPv6 packet.
    pub drop_not_ip: u64,
    /// Received datagrams larger than the tunnel MTU.
    pub drop_oversized: u64,
    /// Packets too big for the connection's current datagram size (caller sends ICMP).
    pub drop_too_big: u64,
    /// Packets for the peer while no connection was up.
    pub drop_not_connected: u64,
    /// Connections established (dialed or accepted).
    pub connects: u64,
    /// Failed dial attempts.
    pub dial_failures: u64,
}

impl PeerCounters {
    pub fn fill(&self, s: &mut PeerStats) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.tx_packets = g(&self.tx_packets);
        s.tx_bytes = g(&self.tx_bytes);
        s.rx_packets = g(&self.rx_packets);
        s.rx_bytes = g(&self.rx_bytes);
        s.drop_not_ip = g(&self.drop_not_ip);
        s.drop_oversized = g(&self.drop_oversized);
        s.drop_too_big = g(&self.drop_too_big);
        s.drop_not_connected = g(&self.drop_not_connected);
        s.connects = g(&self.connects);
        s.dial_failures = g(&self.dial_failures);
    }
}
