//! The dataplane state machine: inputs `handle_*`, outputs `poll_*` and [`Action`]s.
//!
//! The caller owns the buffers: every `handle_*` writes its main result into `out` and says
//! what to do with it ([`Action`]); rarer extra outputs (handshake messages, keepalives,
//! packets queued during a handshake) wait in a bounded queue drained with
//! [`Dataplane::poll_transmit`]. Time is an argument (`now`) except inside boringtun, see
//! [`crate::session`].
//!
//! The state and its outputs live here; the inputs by concern in the submodules:
//! `apply` (`apply_config`), `forward` (TUN packets out, decrypted packets in), `udp`
//! (WireGuard and relay messages from the underlay), `timers` (`handle_timeout`,
//! `poll_timeout`, `poll_reconnect`, `poll_probe`).

mod apply;
mod forward;
mod timers;
mod udp;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, DataplaneConfig, PeerConfig, Transport};
use crate::drop::{DropCounters, DropReason};
use crate::key::{PublicKey, SecretKey};
use crate::peer::{PeerId, PeerState, PeerStatus, PeerTable};
use crate::probe::{ProbeCounters, Prober};
use crate::relay::{RELAY_HEADER, RelayId, RelayIndex, RelayedHandshakes};
use crate::route::RouteTable;
use crate::service_nat::ServiceNat;
use crate::session::Identity;

/// Size of a packet buffer the caller should pass as `out`: the largest MTU plus room for
/// the WireGuard header and tag (and QUIC framing).
pub const MAX_PACKET: usize = crate::config::MAX_MTU as usize + 256;
/// How often WireGuard timers run (boringtun's devices use the same 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// Window of the handshake rate limiter.
const LIMITER_WINDOW: Duration = Duration::from_secs(1);
/// Extra queued control datagrams beyond this are dropped: a peer that floods handshakes
/// must not grow memory.
const MAX_QUEUED: usize = 1024;

/// A datagram to send: `len` bytes at the start of the buffer that was passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Underlay destination.
    pub dst: SocketAddr,
    /// The peer it is for (none for a cookie reply to an unidentified sender).
    pub peer: Option<PeerId>,
    /// Length in the buffer.
    pub len: usize,
}

/// What the caller must do with `out` after a `handle_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (dropped and counted, or consumed, or queued for a handshake).
    None,
    /// Send `out[..len]` as one UDP datagram (WireGuard) to `dst`.
    SendUdp(Transmit),
    /// Send the datagram that was passed in, unchanged, to `dst` (a relay message this node
    /// forwards for two of its peers; `out` is untouched).
    Forward(Transmit),
    /// `out[..len]` is a plaintext IP packet for `peer`, whose transport (not wg) must
    /// encapsulate and send it.
    SendPeer {
        /// The peer.
        peer: PeerId,
        /// Its transport.
        transport: Transport,
        /// Length of the IP packet in `out`.
        len: usize,
    },
    /// Write `out[..len]` (an IP packet) to the TUN device.
    WriteTun {
        /// Length of the IP packet in `out`.
        len: usize,
    },
}

/// A read-only view of a peer for transports.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    /// Its handle.
    pub id: PeerId,
    /// Its configuration.
    pub config: &'a PeerConfig,
    /// Its transport.
    pub transport: Transport,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
}

/// A snapshot of the whole dataplane (for `show`, metrics and the admin API).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataplaneStatus {
    /// This node's public key.
    pub public_key: PublicKey,
    /// Configured UDP port.
    pub listen_port: u16,
    /// TUN device name.
    pub interface: String,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Drops by reason, all peers and unidentified senders together.
    pub drops: DropCounters,
    /// Number of routes.
    pub routes: usize,
    /// Relay messages forwarded between peers without decrypting them (the hub).
    #[serde(default)]
    pub relayed_packets: u64,
    /// Bytes of those messages.
    #[serde(default)]
    pub relayed_bytes: u64,
    /// The tunnel address this node answers probes on ([`crate::probe`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<IpAddr>,
    /// Counters of the probe interface.
    #[serde(default)]
    pub probes: ProbeCounters,
}

struct Queued {
    dst: SocketAddr,
    peer: Option<PeerId>,
    buf: Vec<u8>,
    len: usize,
}

/// The sans-IO dataplane.
pub struct Dataplane {
    config: DataplaneConfig,
    key: SecretKey,
    identity: Identity,
    peers: PeerTable,
    routes: RouteTable,
    drops: DropCounters,
    queue: VecDeque<Queued>,
    free: Vec<Vec<u8>>,
    scratch: Box<[u8]>,
    next_tick: Instant,
    next_limiter_reset: Instant,
    nat: ServiceNat,
    /// This node's relay id (relay messages for it carry it).
    relay_id: RelayId,
    /// Peers by relay id, when this node relays.
    relay_index: RelayIndex<PeerId>,
    /// The last sender a relay message was accepted from (a bulk flow hits it every time).
    relay_sender: Option<(SocketAddr, PeerId)>,
    relayed_packets: u64,
    relayed_bytes: u64,
    /// Initiations this relay forwarded, to route cookie replies back (see [`crate::relay`]).
    relayed_handshakes: RelayedHandshakes<PeerId>,
    /// The probe interface (smoltcp) on this node's tunnel address.
    prober: Prober,
    /// Its address, for the one comparison per delivered packet (unspecified: none).
    probe_ip: IpAddr,
    /// The latest `now` the timers saw (probe figures in `status` are as of then).
    last_now: Instant,
    /// QUIC peers whose probes say dead: the driver closes their connection and dials again
    /// ([`Dataplane::poll_reconnect`]).
    reconnect: Vec<PeerId>,
}

impl Dataplane {
    /// A dataplane with a validated `config`.
    pub fn new(config: DataplaneConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let key = config.private_key.clone();
        let mut dp = Self {
            identity: Identity::new(&key),
            key,
            config: config.clone(),
            peers: PeerTable::default(),
            routes: RouteTable::new(),
            drops: DropCounters::default(),
            queue: VecDeque::new(),
            free: Vec::new(),
            scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
            next_tick: now,
            next_limiter_reset: now + LIMITER_WINDOW,
            nat: ServiceNat::new(),
            relay_id: RelayId::of(&config.private_key.public_key()),
            relay_index: RelayIndex::default(),
            relay_sender: None,
            relayed_packets: 0,
            relayed_bytes: 0,
            relayed_handshakes: RelayedHandshakes::default(),
            prober: Prober::new(
                probe_address(&config),
                config.probe,
                usize::from(config.interface.mtu),
                now,
            ),
            probe_ip: UNSPECIFIED,
            last_now: now,
            reconnect: Vec::new(),
        };
        dp.nat.handle_timeout(now);
        dp.config.peers.clear();
        dp.config.routes.clear();
        dp.apply_config(config)?;
        Ok(dp)
    }

    /// The applied configuration.
    pub fn config(&self) -> &DataplaneConfig {
        &self.config
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The next queued control datagram, copied into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let q = self.queue.pop_front()?;
        let len = q.len.min(buf.len());
        buf[..len].copy_from_slice(&q.buf[..len]);
        self.free.push(q.buf);
        Some(Transmit {
            dst: q.dst,
            peer: q.peer,
            len,
        })
    }

    /// Counts a drop the I/O layer saw (e.g. a failed send).
    pub fn count_drop(&mut self, peer: Option<PeerId>, reason: DropReason) {
        self.drop(peer, reason);
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.peers.by_key(key)
    }

    /// A view of one peer.
    pub fn peer(&self, id: PeerId) -> Option<PeerView<'_>> {
        self.peers.get(id).map(view)
    }

    /// Views of all peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerView<'_>> {
        self.peers.iter().map(view)
    }

    /// The peer a destination address is routed to.
    pub fn route(&self, dst: IpAddr) -> Option<PeerId> {
        self.routes.lookup(dst)
    }

    /// Drops by reason, all together.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// A snapshot for `show` and metrics (probe figures as of the latest timer run).
    pub fn status(&self) -> DataplaneStatus {
        self.status_at(self.last_now)
    }

    /// A snapshot with each peer's probe figures as of `now`.
    pub fn status_at(&self, now: Instant) -> DataplaneStatus {
        let mut st = DataplaneStatus {
            public_key: self.public_key(),
            listen_port: self.config.listen_port,
            interface: self.config.interface.name.clone(),
            peers: self.peers.iter().map(PeerState::status).collect(),
            drops: self.drops,
            routes: self.routes.len(),
            relayed_packets: self.relayed_packets,
            relayed_bytes: self.relayed_bytes,
            probe_address: self.prober.address(),
            probes: self.prober.counters,
        };
        for (ps, p) in st.peers.iter_mut().zip(self.peers.iter()) {
            if p.probe.target.is_none() {
                continue;
            }
            let s = self.prober.summary(&p.probe, now);
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            ps.probe_rtt_p50_micros = s.rtt_p50.map(micros);
            ps.probe_loss = s.loss;
            ps.probe_alive = self.prober.liveness(&p.probe, now);
            ps.probe_last_reply_millis_ago = s
                .last_reply_age
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        st
    }

    #[inline]
    fn drop(&mut self, peer: Option<PeerId>, r: DropReason) -> Action {
        tracing::trace!(reason = r.as_str(), "drop");
        self.drops.add(r);
        if let Some(p) = peer.and_then(|id| self.peers.get_mut(id)) {
            p.counters.drops.add(r);
        }
        Action::None
    }
}

/// "No probe address": never the destination of a delivered packet.
const UNSPECIFIED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The address of the probe interface: the tunnel address (the first IPv4 interface
/// address, else the first one).
fn probe_address(config: &DataplaneConfig) -> Option<IpAddr> {
    let addrs = &config.interface.addresses;
    addrs
        .iter()
        .find(|a| a.addr().is_ipv4())
        .or(addrs.first())
        .map(|a| a.addr())
}

fn view(p: &PeerState) -> PeerView<'_> {
    PeerView {
        id: p.id,
        config: &p.config,
        transport: p.transport,
        endpoint: p.endpoint,
    }
}

fn enqueue(
    queue: &mut VecDeque<Queued>,
    free: &mut Vec<Vec<u8>>,
    drops: &mut DropCounters,
    dst: SocketAddr,
    peer: Option<PeerId>,
    header: Option<RelayId>,
    data: &[u8],
) {
    if queue.len() >= MAX_QUEUED {
        drops.add(DropReason::SendFailed);
        return;
    }
    let mut buf = free.pop().unwrap_or_else(|| vec![0u8; MAX_PACKET]);
    let off = match header {
        Some(h) => {
            h.write_header(&mut buf);
            RELAY_HEADER
        }
        None => 0,
    };
    let len = data.len().min(buf.len() - off);
    buf[off..off + len].copy_from_slice(&data[..len]);
    let len = off + len;
    queue.push_back(Queued {
        dst,
        peer,
        buf,
        len,
    });
}
