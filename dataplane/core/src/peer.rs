//! The peer table: one slot per peer, addressed by [`PeerId`] without hashing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{PeerConfig, Transport};
use crate::drop::DropCounters;
use crate::key::PublicKey;
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
    /// Round-trip time of the last handshake.
    pub rtt_ms: Option<u32>,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Largest IP packet the peer's tunnel carries now, where the transport knows it (QUIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packet: Option<u32>,
    /// Counters.
    pub counters: PeerCounters,
}

impl PeerState {
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
            rtt_ms: self.session.rtt_ms(),
            persistent_keepalive: self.config.persistent_keepalive,
            max_packet: None,
            counters: self.counters,
        }
    }
}
