//! The QUIC peer transport: one quinn endpoint (one UDP socket) serving every peer, one
//! connection per peer, each IP packet one QUIC DATAGRAM.
//!
//! **Who dials.** Every peer with a configured `endpoint` is dialed (with exponential backoff
//! between [`MIN_BACKOFF`] and [`MAX_BACKOFF`]) whenever no connection to it is up; every side
//! accepts. When both sides dial at once, both keep the connection dialed by the gateway whose
//! key fingerprint sorts lower and close the other, so they converge on one connection.
//!
//! **Restarts.** Stateless-reset tokens are keyed by a secret derived from the gateway's
//! private key, so a restarted gateway answers its peers' packets on the old connection with a
//! valid stateless reset and they reconnect at once instead of waiting for the idle timeout.
//!
//! **Migration.** quinn migrates a connection when the dialing peer's address changes (NAT
//! rebinding, a new address); a changed `endpoint` in the peer config closes our dialed
//! connection and dials the new address.//!
//! The peers and the API are here; dialing, accepting and reading connections in `connect`.

mod connect;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use quinn::{Connection, Endpoint, SendDatagramError, Side, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, mpsc};
use tracing::info;

use super::identity::Fingerprint;
use super::stats::{EndpointCounters, EndpointStats, PeerCounters, PeerStats, bump};
use super::verify::{PeerVerifier, Trust};
use super::{QuicConfig, QuicError, QuicPeerConfig};
use connect::{accept_loop, dial_loop};

/// ALPN protocol id of the FleetBoard tunnel.
pub const ALPN: &[u8] = b"fleetboard-tunnel/1";

/// First retry delay after a failed dial: short, so a restarted hub is found quickly.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between dial attempts: bounds how long a recovered peer stays unreached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A connection that lived this long counts as a success and resets the dial backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

/// Application close codes.
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_UNKNOWN_PEER: u32 = 2;
const CLOSE_REMOVED: u32 = 3;
const CLOSE_ENDPOINT_CHANGED: u32 = 4;
const CLOSE_SHUTDOWN: u32 = 5;
const CLOSE_PROBES_DEAD: u32 = 6;

/// A received IP packet and the peer it came from.
#[derive(Debug)]
pub struct Received<T> {
    /// The sending peer's tag (from its [`QuicPeerConfig`]).
    pub peer: T,
    /// One complete IPv4 or IPv6 packet (validated length and version).
    pub packet: Bytes,
}

/// Why a packet could not be sent to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection to the peer is up right now (it is being dialed or awaited).
    #[error("no connection to the peer")]
    NotConnected,
    /// The packet exceeds what the connection carries now; `max` is the largest IP packet
    /// that fits (answer the sender with ICMP fragmentation-needed / packet-too-big).
    #[error("packet too big for the tunnel (max {max})")]
    TooBig {
        /// Largest packet size that fits now.
        max: usize,
    },
}

struct PeerSettings {
    fingerprint: Option<Fingerprint>,
    endpoint: Option<SocketAddr>,
}

pub(crate) struct PeerState<T> {
    name: String,
    tag: T,
    settings: Mutex<PeerSettings>,
    conn: ArcSwapOption<Connection>,
    /// Serialises installing connections (control path only).
    install: Mutex<()>,
    changed: Notify,
    removed: AtomicBool,
    counters: PeerCounters,
}

/// Handle to one configured peer: send packets to it and read its statistics. Cheap to clone;
/// keep one per peer in the forwarding table so sending needs no lookup.
pub struct QuicPeer<T> {
    state: Arc<PeerState<T>>,
    max_packet: usize,
}

impl<T> Clone for QuicPeer<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            max_packet: self.max_packet,
        }
    }
}

impl<T> QuicPeer<T> {
    /// Sends one IP packet as a QUIC datagram (never blocks; quinn drops the oldest queued
    /// datagram when its send buffer is full, like a router queue).
    pub fn send(&self, packet: Bytes) -> Result<(), SendError> {
        let c = &self.state.counters;
        let guard = self.state.conn.load();
        let Some(conn) = guard.as_deref() else {
            bump(&c.drop_not_connected);
            return Err(SendError::NotConnected);
        };
        let len = packet.len() as u64;
        match conn.send_datagram(packet) {
            Ok(()) => {
                bump(&c.tx_packets);
                c.tx_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(SendDatagramError::TooLarge) => {
                bump(&c.drop_too_big);
                let max = conn.max_datagram_size().unwrap_or(0).min(self.max_packet);
                Err(SendError::TooBig { max })
            }
            Err(_) => {
                bump(&c.drop_not_connected);
                Err(SendError::NotConnected)
            }
        }
    }

    /// Closes the current connection, if any (the peer's data path is dead: it may have
    /// been replaced behind the same address and not know the connection any more). The
    /// dialing side dials again at once; a connection that was up long enough resets the
    /// dial backoff.
    pub fn reconnect(&self) {
        let _g = lock(&self.state.install);
        if let Some(conn) = self.state.conn.load_full() {
            info!(peer = %self.state.name, remote = %conn.remote_address(), "closing the quic connection: the peer's probes go unanswered");
            conn.close(VarInt::from_u32(CLOSE_PROBES_DEAD), b"probes unanswered");
            self.state.conn.store(None);
        }
        self.state.changed.notify_one();
    }

    /// Largest IP packet the peer's connection carries now, or `None` when not connected.
    pub fn max_packet(&self) -> Option<usize> {
        let guard = self.state.conn.load();
        let conn = guard.as_deref()?;
        Some(conn.max_datagram_size()?.min(self.max_packet))
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The peer's tag.
    pub fn tag(&self) -> &T {
        &self.state.tag
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.state.conn.load().is_some()
    }

    /// A snapshot of the peer's counters and connection state.
    pub fn stats(&self) -> PeerStats {
        let mut s = PeerStats {
            name: self.state.name.clone(),
            ..PeerStats::default()
        };
        self.state.counters.fill(&mut s);
        if let Some(conn) = self.state.conn.load().as_deref() {
            let q = conn.stats();
            s.connected = true;
            s.remote = Some(conn.remote_address());
            s.rtt = Some(conn.rtt());
            s.max_packet = conn.max_datagram_size().map(|m| m.min(self.max_packet));
            s.path_mtu = Some(q.path.current_mtu);
            s.lost_packets = q.path.lost_packets;
        }
        s
    }
}

struct Shared<T> {
    endpoint: Endpoint,
    fingerprint: Fingerprint,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivatePkcs8KeyDer<'static>,
    ca: Option<rustls_pki_types::TrustAnchor<'static>>,
    trust: Arc<ArcSwap<Trust>>,
    rejected: Arc<AtomicU64>,
    transport: Arc<quinn::TransportConfig>,
    peers: Mutex<HashMap<String, Arc<PeerState<T>>>>,
    tx: mpsc::Sender<Received<T>>,
    counters: EndpointCounters,
    handshaking: AtomicUsize,
    max_handshakes: usize,
    /// Incoming handshakes in flight by source IP address.
    handshaking_from: Mutex<HashMap<std::net::IpAddr, usize>>,
    max_handshakes_per_source: usize,
    handshake_timeout: Duration,
    max_packet: usize,
}

/// The QUIC transport endpoint. Dropping it does not stop it; call [`QuicTransport::close`].
pub struct QuicTransport<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Clone + Send + Sync + 'static> QuicTransport<T> {
    /// Binds the UDP socket and starts accepting. Must be called inside a tokio runtime.
    /// Received packets of every peer arrive on the returned channel.
    pub fn bind(config: QuicConfig) -> Result<(Self, mpsc::Receiver<Received<T>>), QuicError> {
        config.validate()?;
        let trust = Arc::new(ArcSwap::from_pointee(Trust {
            ca: config.ca_anchor()?,
            ..Trust::default()
        }));
        let rejected = Arc::new(AtomicU64::new(0));
        let transport = Arc::new(config.transport_config());
        let server = super::tls::server_config(
            &config.identity,
            PeerVerifier::new(trust.clone(), rejected.clone()),
            transport.clone(),
        )?;
        let socket = super::tls::udp_socket(config.listen)?;
        let counters = EndpointCounters::default();
        let endpoint = Endpoint::new(
            super::tls::endpoint_config(&config.identity, counters.unknown_cid.clone()),
            Some(server),
            socket,
            quinn::default_runtime().ok_or(QuicError::NoRuntime)?,
        )
        .map_err(QuicError::Bind)?;
        let (tx, rx) = mpsc::channel(config.rx_queue);
        let shared = Arc::new(Shared {
            endpoint,
            fingerprint: config.identity.fingerprint,
            chain: config.identity.chain.clone(),
            key: config.identity.key.clone_key(),
            ca: config.ca_anchor()?,
            trust,
            rejected,
            transport,
            peers: Mutex::new(HashMap::new()),
            tx,
            counters,
            handshaking: AtomicUsize::new(0),
            max_handshakes: config.max_handshakes,
            handshaking_from: Mutex::new(HashMap::new()),
            max_handshakes_per_source: config.max_handshakes_per_source,
            handshake_timeout: config.handshake_timeout,
            max_packet: config.max_packet(),
        });
        tokio::spawn(accept_loop(Arc::downgrade(&shared)));
        info!(listen = %shared.endpoint.local_addr().map_err(QuicError::Bind)?, name = %config.name, "quic transport up");
        Ok((Self { shared }, rx))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.shared.endpoint.local_addr().map_err(QuicError::Bind)
    }

    /// Largest IP packet accepted from or sent to peers (the tunnel MTU).
    pub fn max_packet(&self) -> usize {
        self.shared.max_packet
    }

    /// Adds a peer or updates its fingerprint/endpoint; returns its send handle. A changed
    /// endpoint re-dials; a changed pin closes a connection the new pin would not accept.
    pub fn upsert_peer(&self, peer: QuicPeerConfig<T>) -> Result<QuicPeer<T>, QuicError> {
        peer.validate()?;
        let sh = &self.shared;
        let mut peers = lock(&sh.peers);
        let state = match peers.get(&peer.name) {
            Some(existing) => {
                let mut s = lock(&existing.settings);
                let endpoint_changed = s.endpoint != peer.endpoint;
                let pin_changed = s.fingerprint != peer.fingerprint;
                s.endpoint = peer.endpoint;
                s.fingerprint = peer.fingerprint;
                drop(s);
                if endpoint_changed || pin_changed {
                    if let Some(conn) = existing.conn.load_full() {
                        let dialed = conn.side() == Side::Client;
                        if pin_changed || (dialed && Some(conn.remote_address()) != peer.endpoint) {
                            conn.close(VarInt::from_u32(CLOSE_ENDPOINT_CHANGED), b"reconfigured");
                        }
                    }
                    existing.changed.notify_one();
                }
                existing.clone()
            }
            None => {
                let state = Arc::new(PeerState {
                    name: peer.name.clone(),
                    tag: peer.tag,
                    settings: Mutex::new(PeerSettings {
                        fingerprint: peer.fingerprint,
                        endpoint: peer.endpoint,
                    }),
                    conn: ArcSwapOption::empty(),
                    install: Mutex::new(()),
                    changed: Notify::new(),
                    removed: AtomicBool::new(false),
                    counters: PeerCounters::default(),
                });
                peers.insert(peer.name.clone(), state.clone());
                tokio::spawn(dial_loop(Arc::downgrade(sh), state.clone()));
                state
            }
        };
        rebuild_trust(sh, &peers);
        Ok(QuicPeer {
            state,
            max_packet: sh.max_packet,
        })
    }

    /// Removes a peer and closes its connection; returns whether it existed.
    pub fn remove_peer(&self, name: &str) -> bool {
        let sh = &self.shared;
        let mut peers = lock(&sh.peers);
        let Some(state) = peers.remove(name) else {
            return false;
        };
        rebuild_trust(sh, &peers);
        state.removed.store(true, Ordering::Release);
        if let Some(conn) = state.conn.swap(None) {
            conn.close(VarInt::from_u32(CLOSE_REMOVED), b"removed");
        }
        state.changed.notify_one();
        true
    }

    /// Applies a whole peer list: upserts each, removes peers not in it. Returns the handles.
    pub fn set_peers(&self, peers: Vec<QuicPeerConfig<T>>) -> Result<Vec<QuicPeer<T>>, QuicError> {
        for p in &peers {
            p.validate()?;
        }
        let keep: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        let stale: Vec<String> = lock(&self.shared.peers)
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for name in stale {
            self.remove_peer(&name);
        }
        peers.into_iter().map(|p| self.upsert_peer(p)).collect()
    }

    /// The handle of a configured peer.
    pub fn peer(&self, name: &str) -> Option<QuicPeer<T>> {
        lock(&self.shared.peers).get(name).map(|state| QuicPeer {
            state: state.clone(),
            max_packet: self.shared.max_packet,
        })
    }

    /// Snapshots of every peer, sorted by name.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let handles: Vec<QuicPeer<T>> = lock(&self.shared.peers)
            .values()
            .map(|state| QuicPeer {
                state: state.clone(),
                max_packet: self.shared.max_packet,
            })
            .collect();
        let mut out: Vec<PeerStats> = handles.iter().map(QuicPeer::stats).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Endpoint-wide counters.
    pub fn endpoint_stats(&self) -> EndpointStats {
        let mut s = self.shared.counters.snapshot();
        s.auth_rejected = self.shared.rejected.load(Ordering::Relaxed);
        s
    }

    /// Moves the endpoint to a new UDP socket (address change of this gateway); established
    /// connections we dialed migrate to it.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), QuicError> {
        self.shared.endpoint.rebind(socket).map_err(QuicError::Bind)
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        let names: Vec<String> = lock(&self.shared.peers).keys().cloned().collect();
        for n in names {
            self.remove_peer(&n);
        }
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rebuild_trust<T>(sh: &Shared<T>, peers: &HashMap<String, Arc<PeerState<T>>>) {
    let mut trust = Trust {
        ca: sh.ca.clone(),
        ..Trust::default()
    };
    for (name, p) in peers {
        trust.names.insert(name.clone(), ());
        if let Some(fp) = lock(&p.settings).fingerprint {
            trust.pins.insert(fp, name.clone());
        }
    }
    sh.trust.store(Arc::new(trust));
}
