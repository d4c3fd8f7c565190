//! The peer table: one slot per peer, addressed by [`PeerId`] without hashing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{PeerConfig, Transport};
use crate::drop::DropCounters;
use crate::key::PublicKey;
use crate::probe::PeerProbe;
use crate::session::Session;

/// Bits of a [`PeerId`] that select the slot; the rest (up to 24 bits, the WireGuard index
/// space boringtun leaves us) is a generation so a removed peer's index is not reused soon.
const SLOT_BITS: u32 = 16;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Generations wrap after this many reuses of a slot.
const GEN_MASK: u32 = 0xff;

/// A peer's handle inside one dataplane (slot and generation). Also the top 24 bits of the
/// WireGuard session indices of that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub u32);

impl PeerId {
    /// Not a peer: the route target of this node's own addresses (`DataplaneConfig::local`),
    /// delivered to the TUN device and never forwarded. No slot has this id.
    pub const LOCAL: PeerId = PeerId(u32::MAX);

    fn new(slot: usize, generation: u32) -> Self {
        PeerId(((generation & GEN_MASK) << SLOT_BITS) | slot as u32)
    }

    fn slot(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    fn generation(self) -> u32 {
        self.0 >> SLOT_BITS
    }
}

/// Traffic counters of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Bytes received from the peer (underlay datagrams).
    pub rx_bytes: u64,
    /// Datagrams received from the peer.
    pub rx_packets: u64,
    /// Bytes sent to the peer (underlay datagrams).
    pub tx_bytes: u64,
    /// Datagrams sent to the peer.
    pub tx_packets: u64,
    /// Packets from or to this peer dropped, by reason.
    pub drops: DropCounters,
}

/// A peer's live state.
pub struct PeerState {
    /// Its handle.
    pub id: PeerId,
    /// Its configuration as last applied.
    pub config: PeerConfig,
    /// Its transport (resolved against the global default).
    pub transport: Transport,
    /// Where we currently send to (configured, then the last authenticated source).
    pub endpoint: Option<SocketAddr>,
    /// The relay this peer is reached through (`PeerConfig::via`, resolved).
    pub via: Option<PeerId>,
    /// The WireGuard session (also kept for non-wg peers, unused there).
    pub session: Session,
    /// Counters.
    pub counters: PeerCounters,
    /// When we last received an authenticated message from it.
    pub last_rx: Option<Instant>,
    /// When we last forced a handshake because it fell silent.
    pub last_forced_handshake: Option<Instant>,
    /// A handshake is due at the next timer tick: the peer was added, or its endpoint
    /// changed, with a persistent keepalive (as kernel WireGuard sends a keepalive at once
    /// then). A gateway that took over its cluster's key, or a peer that moved, is reached in
    /// one tick and a round trip instead of a keepalive interval.
    pub handshake_due: bool,
    /// The round-trip time of its WireGuard handshakes, timed by this node.
    pub handshake_rtt: HandshakeRtt,
    /// Its data-path probes ([`crate::probe`]).
    pub probe: PeerProbe,
}

/// Handshake round trips longer than this are not samples: WireGuard retries an unanswered
/// initiation after REKEY_TIMEOUT (5 s), and a responder waiting longer for the first data
/// message lost the initiator's keepalive and saw later traffic instead.
pub const MAX_HANDSHAKE_RTT: Duration = Duration::from_secs(5);

/// A handshake message this node sent, waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// When it was sent (the `now` of the call that produced it).
    at: Instant,
    /// Our session index in it (its sender index): the answer is addressed to it.
    index: [u8; 4],
}

/// Times a peer's WireGuard handshakes on both sides, with the caller's clock (`now`).
///
/// - As initiator: from sending a handshake initiation (type 1) to receiving the response
///   (type 2) addressed to its sender index. A retried initiation restarts the timer (only the
///   latest one can be answered).
/// - As responder: from sending the handshake response (type 2) to receiving the first
///   transport data message (type 4, a keepalive counts) for the session the response created.
///   An initiator sends a keepalive as soon as it processed the response (boringtun and the
///   kernel do), so that is one round trip.
///
/// [`HandshakeRtt::rtt`] is the latest sample, unsmoothed: handshakes are minutes apart, so
/// the latest one is the best figure there is. Samples over [`MAX_HANDSHAKE_RTT`] are ignored.
/// The per-packet cost is a compare of the message type (and of an index while a response
/// waits for its data message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeRtt {
    initiation: Option<Pending>,
    response: Option<Pending>,
    last: Option<Duration>,
}

/// WireGuard message types (the first byte; three reserved zero bytes follow).
const MSG_INITIATION: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_DATA: u8 = 4;

/// Four bytes of `msg` at `at` (a session index, as sent: little endian).
#[inline]
fn index_at(msg: &[u8], at: usize) -> Option<[u8; 4]> {
    msg.get(at..at + 4)?.try_into().ok()
}

impl HandshakeRtt {
    /// A WireGuard message to the peer left at `now` (called for every message sent).
    #[inline]
    pub fn sent(&mut self, now: Instant, msg: &[u8]) {
        let slot = match msg.first() {
            Some(&MSG_INITIATION) => &mut self.initiation,
            Some(&MSG_RESPONSE) => &mut self.response,
            _ => return,
        };
        // Both carry our (sender) index at bytes 4..8.
        *slot = index_at(msg, 4).map(|index| Pending { at: now, index });
    }

    /// An authenticated WireGuard message from the peer arrived at `now` (called for every
    /// message the session accepted).
    #[inline]
    pub fn received(&mut self, now: Instant, msg: &[u8]) {
        let (slot, receiver) = match msg.first() {
            // A response: receiver index at 8..12 (after its sender index).
            Some(&MSG_RESPONSE) => (&mut self.initiation, 8),
            // Data: receiver index at 4..8.
            Some(&MSG_DATA) if self.response.is_some() => (&mut self.response, 4),
            _ => return,
        };
        let Some(p) = *slot else {
            return;
        };
        if index_at(msg, receiver) != Some(p.index) {
            // For another session (e.g. the previous one's traffic still arriving).
            return;
        }
        *slot = None;
        let rtt = now.saturating_duration_since(p.at);
        if rtt <= MAX_HANDSHAKE_RTT {
            self.last = Some(rtt);
        }
    }

    /// Forgets handshakes in flight (the session was replaced); the last sample stays.
    pub fn reset_pending(&mut self) {
        self.initiation = None;
        self.response = None;
    }

    /// The latest handshake round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.last
    }
}

/// The peers, in slots indexed by [`PeerId`].
#[derive(Default)]
pub struct PeerTable {
    slots: Vec<Option<PeerState>>,
    generations: Vec<u32>,
}

impl PeerTable {
    /// The id the next inserted peer will get.
    pub fn next_id(&self) -> PeerId {
        match self.slots.iter().position(Option::is_none) {
            Some(i) => PeerId::new(i, self.generations[i]),
            None => PeerId::new(self.slots.len(), 0),
        }
    }

    /// Inserts a peer under `next_id()`.
    pub fn insert(&mut self, state: PeerState) -> PeerId {
        let id = state.id;
        let slot = id.slot();
        if slot == self.slots.len() {
            self.slots.push(Some(state));
            self.generations.push(0);
        } else {
            self.slots[slot] = Some(state);
        }
        id
    }

    /// Removes a peer.
    pub fn remove(&mut self, id: PeerId) -> Option<PeerState> {
        let slot = id.slot();
        let state = self.slots.get_mut(slot)?.take_if(|p| p.id == id)?;
        self.generations[slot] = (self.generations[slot] + 1) & GEN_MASK;
        Some(state)
    }

    /// The peer with this id.
    #[inline]
    pub fn get(&self, id: PeerId) -> Option<&PeerState> {
        self.slots
            .get(id.slot())?
            .as_ref()
            .filter(|p| p.id.generation() == id.generation())
    }

    /// The peer with this id, mutably.
    #[inline]
    pub fn get_mut(&mut self, id: PeerId) -> Option<&mut PeerState> {
        self.slots
            .get_mut(id.slot())?
            .as_mut()
            .filter(|p| p.id.generation() == id.generation())
    }

    /// The peer whose WireGuard session index is `index` (the top 24 bits are its id).
    #[inline]
    pub fn by_session_index(&mut self, index: u32) -> Option<&mut PeerState> {
        self.get_mut(PeerId(index >> 8))
    }

    /// The peer with this public key (a scan: only for handshakes and config changes).
    pub fn by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.iter()
            .find(|p| p.config.public_key == *key)
            .map(|p| p.id)
    }

    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = &PeerState> {
        self.slots.iter().flatten()
    }

    /// All peers, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut PeerState> {
        self.slots.iter_mut().flatten()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True without peers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot of one peer for `show`, metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Public key.
    pub public_key: PublicKey,
    /// Label (config `name`).
    pub name: Option<String>,
    /// Transport in use.
    pub transport: Transport,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The relay it is reached through (`PeerConfig::via`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PublicKey>,
    /// Allowed IPs.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Seconds since the last completed handshake.
    pub last_handshake_secs_ago: Option<u64>,
    /// Round-trip time, microseconds: for wg the latest handshake's, timed by this node on
    /// either side of it ([`HandshakeRtt`]); for quic the connection's smoothed RTT (filled in
    /// by the QUIC transport).
    #[serde(default)]
    pub rtt_micros: Option<u64>,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Largest IP packet the peer's tunnel carries now, where the transport knows it (QUIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packet: Option<u32>,
    /// Counters.
    pub counters: PeerCounters,
    /// Where its dataplane answers probes (configured or learned; see [`crate::probe`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<std::net::IpAddr>,
    /// Median round trip of the answered probes in the window, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_rtt_p50_micros: Option<u64>,
    /// Fraction of the decided probes in the window that got no answer (0.0 to 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_loss: Option<f64>,
    /// Milliseconds since its last probe reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_last_reply_millis_ago: Option<u64>,
    /// Probe-based liveness: true while its last reply is at most `probe.dead_after_ms` old,
    /// false once older (or never answered for that long); none while unknown or not probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_alive: Option<bool>,
}

/// Added to twice the keepalive interval before a silent peer gets a fresh handshake (the
/// WireGuard REKEY_TIMEOUT).
const DEAD_PEER_GRACE: Duration = Duration::from_secs(5);
/// Between two handshakes forced because a peer's data-path probes say it is dead.
pub const PROBE_DEAD_REHANDSHAKE: Duration = Duration::from_secs(2);

/// Why a new handshake is forced on a peer with a persistent keepalive that answered before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Nothing came from it for two keepalive intervals and REKEY_TIMEOUT.
    Silent,
    /// Its data-path probes say it is dead ([`crate::probe`]): it may have been replaced by a
    /// replica with the same key behind the same endpoint (a hub leader that took over, a
    /// restarted peer), which answers only a fresh initiation; WireGuard's own timers would
    /// start one only after 15 s. Forced every [`PROBE_DEAD_REHANDSHAKE`] while it stays dead.
    ProbesDead,
}

impl PeerState {
    /// Whether (and why) to force a new handshake at `now`.
    pub fn forced_handshake(&self, now: Instant) -> Option<Forced> {
        let k = self.config.persistent_keepalive?;
        let last_rx = self.last_rx?;
        let since_forced = self.last_forced_handshake.map(|t| now.duration_since(t));
        if self.probe.alive == Some(false) {
            return since_forced
                .is_none_or(|d| d >= PROBE_DEAD_REHANDSHAKE)
                .then_some(Forced::ProbesDead);
        }
        let silent_for = Duration::from_secs(2 * u64::from(k)) + DEAD_PEER_GRACE;
        (now.duration_since(last_rx) > silent_for && since_forced.is_none_or(|d| d >= silent_for))
            .then_some(Forced::Silent)
    }

    /// A snapshot of this peer.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            public_key: self.config.public_key,
            name: self.config.name.clone(),
            transport: self.transport,
            endpoint: self.endpoint,
            via: self.config.via,
            allowed_ips: self.config.allowed_ips.clone(),
            last_handshake_secs_ago: self
                .session
                .since_last_handshake()
                .map(|d: Duration| d.as_secs()),
            rtt_micros: self
                .handshake_rtt
                .rtt()
                .filter(|_| self.transport == Transport::Wg)
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            persistent_keepalive: self.config.persistent_keepalive,
            max_packet: None,
            counters: self.counters,
            probe_address: self.probe.target,
            probe_rtt_p50_micros: None,
            probe_loss: None,
            probe_last_reply_millis_ago: None,
            probe_alive: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WireGuard message of type `t` with `a` at bytes 4..8 and `b` at 8..12.
    fn msg(t: u8, a: u32, b: u32) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0] = t;
        m[4..8].copy_from_slice(&a.to_le_bytes());
        m[8..12].copy_from_slice(&b.to_le_bytes());
        m
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn initiator_times_initiation_to_matching_response() {
        let t0 = Instant::now();
        let mut r = HandshakeRtt::default();
        r.sent(t0, &msg(1, 0x100, 0));
        // A retry (new sender index) restarts the timer; the first one's answer is ignored.
        r.sent(t0 + 10 * MS, &msg(1, 0x101, 0));
        r.received(t0 + 12 * MS, &msg(2, 0x900, 0x100));
        assert_eq!(r.rtt(), None);
        r.received(t0 + 13 * MS, &msg(2, 0x900, 0x101));
        assert_eq!(r.rtt(), Some(3 * MS));
        // Answered: a duplicate response is no new sample.
        r.received(t0 + 50 * MS, &msg(2, 0x900, 0x101));
        assert_eq!(r.rtt(), Some(3 * MS));
    }

    #[test]
    fn responder_times_response_to_first_data_on_its_session() {
        let t0 = Instant::now();
        let mut r = HandshakeRtt::default();
        // Data before any response: nothing to time.
        r.received(t0, &msg(4, 0x200, 0));
        r.sent(t0, &msg(2, 0x300, 0x55));
        // Data and keepalives sent by us, and data of the previous session, are no answer.
        r.sent(t0 + MS, &msg(4, 0x77, 0));
        r.received(t0 + MS, &msg(4, 0x200, 0));
        assert_eq!(r.rtt(), None);
        r.received(t0 + 4 * MS, &msg(4, 0x300, 0));
        assert_eq!(r.rtt(), Some(4 * MS));
        r.received(t0 + 9 * MS, &msg(4, 0x300, 0));
        assert_eq!(
            r.rtt(),
            Some(4 * MS),
            "only the first data message is timed"
        );
    }

    #[test]
    fn latest_sample_wins_and_overlong_ones_are_ignored() {
        let t0 = Instant::now();
        let mut r = HandshakeRtt::default();
        r.sent(t0, &msg(1, 1, 0));
        r.received(t0 + 20 * MS, &msg(2, 9, 1));
        r.sent(t0 + 120_000 * MS, &msg(1, 2, 0));
        r.received(t0 + 120_008 * MS, &msg(2, 9, 2));
        assert_eq!(r.rtt(), Some(8 * MS));
        // The keepalive after our response was lost; later traffic is no round trip.
        r.sent(t0, &msg(2, 3, 7));
        r.received(t0 + MAX_HANDSHAKE_RTT + MS, &msg(4, 3, 0));
        assert_eq!(r.rtt(), Some(8 * MS));
        // Truncated messages are ignored, not a panic.
        r.sent(t0, &[1, 0, 0]);
        r.received(t0, &[2]);
        r.reset_pending();
        assert_eq!(r.rtt(), Some(8 * MS));
    }
}
