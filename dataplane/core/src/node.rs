//! The dataplane state machine: inputs `handle_*`, outputs `poll_*` and [`Action`]s.
//!
//! The caller owns the buffers: every `handle_*` writes its main result into `out` and says
//! what to do with it ([`Action`]); rarer extra outputs (handshake messages, keepalives,
//! packets queued during a handshake) wait in a bounded queue drained with
//! [`Dataplane::poll_transmit`]. Time is an argument (`now`) except inside boringtun, see
//! [`crate::session`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::{ConfigError, DataplaneConfig, PeerConfig, Transport};
use crate::drop::{DropCounters, DropReason};
use crate::key::{PublicKey, SecretKey};
use crate::peer::{
    Forced, HandshakeRtt, PROBE_DEAD_REHANDSHAKE, PeerCounters, PeerId, PeerState, PeerStatus,
    PeerTable,
};
use crate::probe::{PeerProbe, ProbeCounters, Prober};
use crate::relay::{self, RELAY_HEADER, RelayId, RelayIndex, RelayedHandshakes};
use crate::route::RouteTable;
use crate::service_nat::{self, ServiceNat};
use crate::session::{Identity, Incoming, Session, SessionOutput};
use crate::wire::IpHeader;

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

    /// Swaps in a new configuration atomically: peers whose key stays keep their sessions
    /// (their traffic is not interrupted), new peers are added, missing ones removed, routes
    /// rebuilt. Interface and socket settings are the driver's (they need a restart).
    pub fn apply_config(&mut self, config: DataplaneConfig) -> Result<(), ConfigError> {
        config.validate()?;
        if config.private_key != self.key {
            // A new identity invalidates every session.
            self.key = config.private_key.clone();
            self.identity = Identity::new(&self.key);
            self.relay_id = RelayId::of(&self.key.public_key());
            let ids: Vec<PeerId> = self.peers.iter().map(|p| p.id).collect();
            for id in ids {
                self.peers.remove(id);
            }
        }
        // Remove peers that are gone.
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|p| {
                !config
                    .peers
                    .iter()
                    .any(|c| c.public_key == p.config.public_key)
            })
            .map(|p| p.id)
            .collect();
        for id in gone {
            self.peers.remove(id);
        }
        // Update or add.
        for pc in &config.peers {
            let transport = pc.transport_or(config.transport);
            match self.peers.by_key(&pc.public_key) {
                Some(id) => {
                    let p = self.peers.get_mut(id).expect("found by key");
                    if p.config.persistent_keepalive != pc.persistent_keepalive {
                        p.session =
                            Session::new(&self.key, &pc.public_key, pc.persistent_keepalive, id.0);
                        p.handshake_rtt.reset_pending();
                    }
                    if pc.endpoint.is_some() && pc.endpoint != p.config.endpoint {
                        p.endpoint = pc.endpoint;
                        p.handshake_due = pc.persistent_keepalive.is_some();
                    }
                    p.transport = transport;
                    p.probe
                        .reconfigure(pc.probe_address, usize::from(config.probe.window));
                    p.config = pc.clone();
                }
                None => {
                    let id = self.peers.next_id();
                    self.peers.insert(PeerState {
                        id,
                        config: pc.clone(),
                        transport,
                        endpoint: pc.endpoint,
                        via: None,
                        session: Session::new(
                            &self.key,
                            &pc.public_key,
                            pc.persistent_keepalive,
                            id.0,
                        ),
                        counters: PeerCounters::default(),
                        last_rx: None,
                        last_forced_handshake: None,
                        handshake_rtt: HandshakeRtt::default(),
                        handshake_due: pc.persistent_keepalive.is_some(),
                        probe: PeerProbe::new(pc.probe_address, usize::from(config.probe.window)),
                    });
                }
            }
        }
        // Resolve relays now that every peer has its id.
        let vias: Vec<(PeerId, Option<PeerId>)> = self
            .peers
            .iter()
            .map(|p| (p.id, p.config.via.and_then(|k| self.peers.by_key(&k))))
            .collect();
        for (id, via) in vias {
            if let Some(p) = self.peers.get_mut(id) {
                p.via = via;
            }
        }
        self.relay_index = if config.relay {
            RelayIndex::new(
                self.peers
                    .iter()
                    .map(|p| (RelayId::of(&p.config.public_key), p.id))
                    .collect(),
            )
        } else {
            RelayIndex::default()
        };
        self.relay_sender = None;
        self.relayed_handshakes.clear();
        let mut routes = RouteTable::new();
        for p in self.peers.iter() {
            for c in &p.config.allowed_ips {
                routes.insert(c.trunc(), p.id);
            }
        }
        for r in &config.routes {
            if let Some(id) = self.peers.by_key(&r.peer) {
                routes.insert(r.cidr.trunc(), id);
            }
        }
        let own = config
            .interface
            .addresses
            .iter()
            .map(|a| IpNet::from(a.addr()));
        for c in own.chain(config.local.iter().copied()) {
            routes.insert(c.trunc(), PeerId::LOCAL);
        }
        self.routes = routes;
        self.nat.apply(&config.services);
        self.prober.set_address(probe_address(&config));
        self.prober.set_settings(config.probe);
        self.probe_ip = self.prober.address().unwrap_or(UNSPECIFIED);
        self.config = config;
        Ok(())
    }

    /// A packet read from the TUN device at `now`: route it to a peer (a service VIP is first
    /// translated to one of its endpoints, see [`crate::service_nat`]).
    #[inline]
    pub fn handle_tun(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(None, r),
        };
        if self.nat.is_active() && self.nat.is_vip(hdr.dst) {
            return self.handle_tun_vip(now, packet, out);
        }
        let Some(id) = self.routes.lookup(hdr.dst) else {
            return self.drop(None, DropReason::NoRoute);
        };
        match send_to(&mut self.peers, id, now, packet, out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        }
    }

    /// A packet this node generated itself (an ICMP error about a relayed packet): sent to
    /// the peer that owns its destination, or written on the TUN when no peer does.
    pub fn handle_local(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(None, r),
        };
        let routed = self.routes.lookup(hdr.dst);
        match routed.filter(|id| self.peers.get(*id).is_some()) {
            Some(id) => match send_to(&mut self.peers, id, now, packet, out) {
                Ok(a) => a,
                Err(r) => self.drop(Some(id), r),
            },
            None if out.len() >= packet.len() => {
                out[..packet.len()].copy_from_slice(packet);
                Action::WriteTun { len: packet.len() }
            }
            None => self.drop(None, DropReason::TooLarge),
        }
    }

    /// A packet to a service VIP: DNAT to an endpoint (tracked), then route. The rewrite
    /// happens in the scratch buffer (the TUN's buffer is read-only here).
    #[cold]
    fn handle_tun_vip(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let Some(flow) = service_nat::parse_flow(packet) else {
            return self.drop(None, DropReason::NoRoute);
        };
        let Some(rw) = self.nat.outbound(&flow) else {
            return self.drop(None, DropReason::NoRoute);
        };
        let len = packet.len();
        if len > self.scratch.len() {
            return self.drop(None, DropReason::TooLarge);
        }
        self.scratch[..len].copy_from_slice(packet);
        service_nat::apply_rewrite(&mut self.scratch[..len], &flow, rw);
        let service_nat::Rewrite::Dst(dst, _) = rw else {
            return self.drop(None, DropReason::NoRoute);
        };
        let Some(id) = self.routes.lookup(dst) else {
            return self.drop(None, DropReason::NoRoute);
        };
        match send_to(&mut self.peers, id, now, &self.scratch[..len], out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        }
    }

    /// A UDP datagram from `from`: decrypt it, then deliver to the TUN, relay it to another
    /// peer, or answer a handshake. A relay message for another node is forwarded unchanged
    /// ([`Action::Forward`]) when this node relays.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Action {
        if !relay::is_relay(datagram) {
            return self.handle_wg(now, from, datagram, false, out);
        }
        let Some((to, message)) = relay::parse(datagram) else {
            return self.drop(None, DropReason::Malformed);
        };
        if to == self.relay_id {
            if !self.relay_index.is_empty()
                && let Some(index) = relay::cookie_receiver(message)
                && let Some(a) = self.return_cookie(now, from, index, message, out)
            {
                return a;
            }
            return self.handle_wg(now, from, message, true, out);
        }
        self.forward_relay(now, from, to, datagram)
    }

    /// A cookie reply that a member under load addressed to this relay, for an initiation
    /// the relay forwarded to it: sent back to the initiator with the initiator's header.
    /// `None` when the relay forwarded no such initiation (then it is an ordinary message).
    #[cold]
    fn return_cookie(
        &mut self,
        now: Instant,
        from: SocketAddr,
        index: u32,
        message: &[u8],
        out: &mut [u8],
    ) -> Option<Action> {
        let responder = self.relay_sender_of(from)?;
        let initiator = self.relayed_handshakes.take(now, responder, index)?;
        let p = self.peers.get_mut(initiator)?;
        let Some(endpoint) = p.endpoint.filter(|_| p.via.is_none()) else {
            return Some(self.drop(Some(initiator), DropReason::NoEndpoint));
        };
        let len = RELAY_HEADER + message.len();
        if out.len() < len {
            return Some(self.drop(Some(initiator), DropReason::TooLarge));
        }
        RelayId::of(&p.config.public_key).write_header(out);
        out[RELAY_HEADER..len].copy_from_slice(message);
        p.counters.tx_bytes += len as u64;
        p.counters.tx_packets += 1;
        self.relayed_packets += 1;
        self.relayed_bytes += len as u64;
        Some(Action::SendUdp(Transmit {
            dst: endpoint,
            peer: Some(initiator),
            len,
        }))
    }

    /// A relay message for peer `to` from `from`: forwarded when both are peers of this relay.
    #[inline]
    fn forward_relay(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: RelayId,
        datagram: &[u8],
    ) -> Action {
        let Some(src) = self.relay_sender_of(from) else {
            return self.drop(None, DropReason::RelayRefused);
        };
        let Some(dst_id) = self.relay_index.get(&to).filter(|d| *d != src) else {
            return self.drop(Some(src), DropReason::RelayRefused);
        };
        let len = datagram.len() as u64;
        if let Some(p) = self.peers.get_mut(src) {
            p.counters.rx_bytes += len;
            p.counters.rx_packets += 1;
        }
        let Some(dst) = self.peers.get_mut(dst_id) else {
            return self.drop(Some(src), DropReason::RelayRefused);
        };
        let Some(endpoint) = dst.endpoint.filter(|_| dst.via.is_none()) else {
            return self.drop(Some(dst_id), DropReason::NoEndpoint);
        };
        dst.counters.tx_bytes += len;
        dst.counters.tx_packets += 1;
        if let Some(index) = relay::initiation_sender(&datagram[RELAY_HEADER..]) {
            // Where a cookie reply for it must go back to (one byte compare for data).
            self.relayed_handshakes.record(now, src, dst_id, index);
        }
        self.relayed_packets += 1;
        self.relayed_bytes += len;
        Action::Forward(Transmit {
            dst: endpoint,
            peer: Some(dst_id),
            len: datagram.len(),
        })
    }

    /// The peer whose current endpoint is `from`, if it may send relay messages: only
    /// authenticated, directly connected wg peers (their endpoint is the address their last
    /// authenticated message came from, or configured).
    #[inline]
    fn relay_sender_of(&mut self, from: SocketAddr) -> Option<PeerId> {
        if self.relay_index.is_empty() {
            return None;
        }
        let ok = |p: &PeerState| {
            p.endpoint == Some(from) && p.via.is_none() && p.transport == Transport::Wg
        };
        if let Some((addr, id)) = self.relay_sender
            && addr == from
            && self.peers.get(id).is_some_and(ok)
        {
            return Some(id);
        }
        let id = self.peers.iter().find(|p| ok(p))?.id;
        self.relay_sender = Some((from, id));
        Some(id)
    }

    /// A WireGuard message from `from` (`relayed`: it came inside a relay message, so `from`
    /// is the relay's address).
    fn handle_wg(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        relayed: bool,
        out: &mut [u8],
    ) -> Action {
        let incoming = match self.identity.classify(from.ip(), datagram, out) {
            Ok(Ok(i)) => i,
            Ok(Err((a, b))) => {
                // Under load: a cookie reply instead of a handshake.
                self.drops.add(DropReason::UnderLoad);
                if relayed {
                    return self.cookie_through_relay(from, a, b, out);
                }
                out.copy_within(a..b, 0);
                return Action::SendUdp(Transmit {
                    dst: from,
                    peer: None,
                    len: b - a,
                });
            }
            Err(r) => return self.drop(None, r),
        };
        let peer = match incoming {
            Incoming::Initiation(key) => self
                .peers
                .by_key(&key)
                .and_then(|id| self.peers.get_mut(id)),
            Incoming::ForIndex(idx) => self.peers.by_session_index(idx),
        };
        let Some(peer) = peer else {
            return self.drop(None, DropReason::UnknownPeer);
        };
        let id = peer.id;
        let result = peer.session.decapsulate(from.ip(), datagram, out);
        let is_cookie = datagram[0] == 3;
        if result.is_ok() && !is_cookie {
            // Authenticated: roam to the address it came from (not to a relay's).
            if !relayed && peer.via.is_none() {
                peer.endpoint = Some(from);
            }
            peer.last_rx = Some(now);
            peer.counters.rx_bytes += datagram.len() as u64;
            peer.counters.rx_packets += 1;
            peer.handshake_rtt.received(now, datagram);
        }
        match result {
            Err(r) => self.drop(Some(id), r),
            Ok(SessionOutput::Done) if is_cookie => {
                // The responder is under load: retry with the cookie now, not in 5 s.
                if let Ok(SessionOutput::Network(a, b)) =
                    peer.session.retry_after_cookie(now, &mut self.scratch)
                {
                    peer.handshake_rtt.sent(now, &self.scratch[a..b]);
                    peer.counters.tx_bytes += (b - a) as u64;
                    peer.counters.tx_packets += 1;
                    match path_of(&self.peers, id) {
                        Some((dst, header)) => enqueue(
                            &mut self.queue,
                            &mut self.free,
                            &mut self.drops,
                            dst,
                            Some(id),
                            header,
                            &self.scratch[a..b],
                        ),
                        None => return self.drop(Some(id), DropReason::NoEndpoint),
                    }
                }
                Action::None
            }
            Ok(SessionOutput::Done) => Action::None,
            Ok(SessionOutput::Network(a, b)) => {
                // A handshake answer: back the way the message came.
                peer.handshake_rtt.sent(now, &out[a..b]);
                let header = relayed.then(|| RelayId::of(&peer.config.public_key));
                let off = header.map_or(0, |_| RELAY_HEADER);
                if out.len() < b - a + off {
                    return self.drop(Some(id), DropReason::TooLarge);
                }
                out.copy_within(a..b, off);
                if let Some(h) = header {
                    h.write_header(out);
                }
                peer.counters.tx_bytes += (b - a) as u64;
                peer.counters.tx_packets += 1;
                self.flush_session(now, id);
                Action::SendUdp(Transmit {
                    dst: from,
                    peer: Some(id),
                    len: b - a + off,
                })
            }
            Ok(SessionOutput::Tunnel(a, b, src)) => {
                if a != 0 {
                    out.copy_within(a..b, 0);
                }
                self.forward_from(now, id, src, b - a, out)
            }
        }
    }

    /// A cookie reply (at `out[a..b]`) for an initiation that came through the relay at
    /// `from`: the initiator is unknown before the handshake's DH, so the reply goes to the
    /// relay itself (a relay message with the relay's id), which routes it back to the
    /// initiator (see [`crate::relay`]).
    #[cold]
    fn cookie_through_relay(
        &mut self,
        from: SocketAddr,
        a: usize,
        b: usize,
        out: &mut [u8],
    ) -> Action {
        let relay = self
            .peers
            .iter()
            .find(|p| p.endpoint == Some(from) && p.via.is_none() && p.transport == Transport::Wg)
            .map(|p| (p.id, RelayId::of(&p.config.public_key)));
        let Some((id, header)) = relay else {
            return Action::None;
        };
        let len = b - a + RELAY_HEADER;
        if out.len() < len {
            return self.drop(Some(id), DropReason::TooLarge);
        }
        out.copy_within(a..b, RELAY_HEADER);
        header.write_header(out);
        Action::SendUdp(Transmit {
            dst: from,
            peer: Some(id),
            len,
        })
    }

    /// A plaintext IP packet that a non-wg transport received from `from`: check its source
    /// and deliver it to the TUN or relay it.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        from: PeerId,
        packet: &[u8],
        out: &mut [u8],
    ) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(Some(from), r),
        };
        if out.len() < packet.len() {
            return self.drop(Some(from), DropReason::TooLarge);
        }
        let Some(peer) = self.peers.get_mut(from) else {
            return self.drop(None, DropReason::UnknownPeer);
        };
        peer.last_rx = Some(now);
        peer.counters.rx_bytes += packet.len() as u64;
        peer.counters.rx_packets += 1;
        out[..packet.len()].copy_from_slice(packet);
        self.forward_from(now, from, hdr.src, packet.len(), out)
    }

    /// Runs timers: WireGuard rekeys, keepalives and retries, the handshake rate limiter,
    /// and a fresh handshake to a keepalive peer that fell silent (e.g. a restarted hub).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.nat.handle_timeout(now);
        self.last_now = now;
        self.prober
            .handle_timeout(now, &mut self.peers, &self.routes);
        if now >= self.next_limiter_reset {
            self.identity.tick();
            self.next_limiter_reset = now + LIMITER_WINDOW;
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TIMER_TICK;
        // A QUIC peer dead by its probes may have been replaced behind the same endpoint (a
        // restart in place, a standby replica behind one load balancer address): its
        // connection is gone there, and quinn would notice only at its idle timeout.
        for p in self.peers.iter_mut() {
            if p.transport == Transport::Quic
                && p.probe.alive == Some(false)
                && p.last_forced_handshake
                    .is_none_or(|t| now.duration_since(t) >= PROBE_DEAD_REHANDSHAKE)
            {
                p.last_forced_handshake = Some(now);
                self.reconnect.push(p.id);
                tracing::debug!(peer = %p.config.label(), "probes dead, new QUIC connection");
            }
        }
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|p| p.transport == Transport::Wg)
            .map(|p| p.id)
            .collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            let mut outputs = [None];
            outputs[0] = peer.session.update_timers(&mut self.scratch).ok();
            let busy = matches!(outputs[0], Some(SessionOutput::Network(..)));
            match peer.forced_handshake(now) {
                // Already sending something this tick; try again next tick.
                Some(_) if busy => {}
                Some(Forced::ProbesDead) => {
                    peer.last_forced_handshake = Some(now);
                    outputs[0] = peer.session.initiate_anew(&mut self.scratch).ok();
                    tracing::debug!(peer = %peer.config.label(), "probes dead, new handshake");
                }
                Some(Forced::Silent) => {
                    peer.last_forced_handshake = Some(now);
                    outputs[0] = peer.session.initiate(&mut self.scratch).ok();
                    tracing::debug!(peer = %peer.config.label(), "peer silent, new handshake");
                }
                None => {}
            }
            if peer.handshake_due && !matches!(outputs[0], Some(SessionOutput::Network(..))) {
                peer.handshake_due = false;
                outputs[0] = peer.session.initiate(&mut self.scratch).ok();
            }
            if let Some(SessionOutput::Network(a, b)) = outputs[0] {
                peer.handshake_rtt.sent(now, &self.scratch[a..b]);
                peer.counters.tx_bytes += (b - a) as u64;
                peer.counters.tx_packets += 1;
                match path_of(&self.peers, id) {
                    Some((dst, header)) => enqueue(
                        &mut self.queue,
                        &mut self.free,
                        &mut self.drops,
                        dst,
                        Some(id),
                        header,
                        &self.scratch[a..b],
                    ),
                    None => {
                        self.drops.add(DropReason::NoEndpoint);
                        if let Some(p) = self.peers.get_mut(id) {
                            p.counters.drops.add(DropReason::NoEndpoint);
                        }
                    }
                }
            }
        }
    }

    /// The next QUIC peer to connect anew (its probes say it is dead; at most once per
    /// [`PROBE_DEAD_REHANDSHAKE`] each): close its connection and dial again. Call after
    /// [`Dataplane::handle_timeout`] until None.
    pub fn poll_reconnect(&mut self) -> Option<PeerId> {
        self.reconnect.pop()
    }

    /// When [`Dataplane::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.next_tick.min(self.next_limiter_reset);
        Some(self.prober.poll_timeout().map_or(t, |p| p.min(t)))
    }

    /// The next packet of the probe interface (a probe, a reply, an echo reply), routed and
    /// encapsulated into `out` like a TUN packet; None when it has nothing to send. Call it
    /// after every `handle_*` until None (see [`crate::probe`]).
    pub fn poll_probe(&mut self, now: Instant, out: &mut [u8]) -> Option<Action> {
        let packet = self.prober.pop_transmit()?;
        let hdr = match IpHeader::parse(&packet) {
            Ok(h) => h,
            Err(r) => return Some(self.drop(None, r)),
        };
        let Some(id) = self
            .routes
            .lookup(hdr.dst)
            .filter(|id| *id != PeerId::LOCAL)
        else {
            return Some(self.drop(None, DropReason::NoRoute));
        };
        Some(match send_to(&mut self.peers, id, now, &packet, out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        })
    }

    /// A packet from a peer to the probe address: the probe interface's, or (false) the
    /// kernel's.
    #[cold]
    #[inline(never)]
    fn divert_probe(&mut self, now: Instant, len: usize, out: &[u8]) -> bool {
        self.prober
            .receive(now, &out[..len], &mut self.peers, &self.routes)
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

    /// After a handshake: sends what the session queued while it had no keys (along the
    /// peer's path: its endpoint, or its relay).
    fn flush_session(&mut self, now: Instant, id: PeerId) {
        let Some((dst, header)) = path_of(&self.peers, id) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        while let Ok(SessionOutput::Network(a, b)) =
            peer.session.decapsulate(dst.ip(), &[], &mut self.scratch)
        {
            peer.handshake_rtt.sent(now, &self.scratch[a..b]);
            peer.counters.tx_bytes += (b - a) as u64;
            peer.counters.tx_packets += 1;
            enqueue(
                &mut self.queue,
                &mut self.free,
                &mut self.drops,
                dst,
                Some(id),
                header,
                &self.scratch[a..b],
            );
        }
    }

    /// A decrypted packet of `len` bytes in `out` from peer `from` with inner source `src`:
    /// cryptokey routing check, then TUN or relay.
    #[inline]
    fn forward_from(
        &mut self,
        now: Instant,
        from: PeerId,
        src: IpAddr,
        len: usize,
        out: &mut [u8],
    ) -> Action {
        if self.routes.lookup(src) != Some(from) {
            return self.drop(Some(from), DropReason::SourceNotAllowed);
        }
        let dst = match IpHeader::parse(&out[..len]) {
            Ok(h) => h.dst,
            Err(r) => return self.drop(Some(from), r),
        };
        match self.routes.lookup(dst) {
            Some(to) if to != from && to != PeerId::LOCAL => {
                // Relay: re-encrypt for the other peer, never through the host stack.
                if self.peers.get(to).is_none() {
                    return self.drop(Some(from), DropReason::NoRoute);
                }
                self.scratch[..len].copy_from_slice(&out[..len]);
                match send_to(&mut self.peers, to, now, &self.scratch[..len], out) {
                    Ok(a) => a,
                    Err(r) => self.drop(Some(to), r),
                }
            }
            _ => {
                if dst == self.probe_ip && self.divert_probe(now, len, out) {
                    return Action::None;
                }
                if self.nat.is_active()
                    && let Some(flow) = service_nat::parse_flow(&out[..len])
                    && let Some(rw) = self.nat.inbound(&flow)
                {
                    // A reply of a service flow: it comes from the VIP again.
                    service_nat::apply_rewrite(&mut out[..len], &flow, rw);
                }
                Action::WriteTun { len }
            }
        }
    }

    /// Service flows currently tracked.
    pub fn service_flows(&self) -> usize {
        self.nat.flows()
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

/// Where datagrams for peer `id` go: its endpoint, or its relay's endpoint with the relay
/// header for it.
#[inline]
fn path_of(peers: &PeerTable, id: PeerId) -> Option<(SocketAddr, Option<RelayId>)> {
    let p = peers.get(id)?;
    match p.via {
        None => p.endpoint.map(|e| (e, None)),
        Some(r) => {
            let relay = peers.get(r)?;
            Some((relay.endpoint?, Some(RelayId::of(&p.config.public_key))))
        }
    }
}

/// Encapsulates `packet` for peer `id` into `out` (behind the relay header when the peer is
/// reached through a relay). `now` times a handshake initiation it may start.
#[inline]
fn send_to(
    peers: &mut PeerTable,
    id: PeerId,
    now: Instant,
    packet: &[u8],
    out: &mut [u8],
) -> Result<Action, DropReason> {
    let path = path_of(peers, id);
    let Some(peer) = peers.get_mut(id) else {
        return Err(DropReason::NoRoute);
    };
    match peer.transport {
        Transport::Quic => {
            if out.len() < packet.len() {
                return Err(DropReason::TooLarge);
            }
            out[..packet.len()].copy_from_slice(packet);
            Ok(Action::SendPeer {
                peer: peer.id,
                transport: Transport::Quic,
                len: packet.len(),
            })
        }
        Transport::Wg => {
            let Some((dst, header)) = path else {
                return Err(DropReason::NoEndpoint);
            };
            let off = header.map_or(0, |_| RELAY_HEADER);
            if out.len() <= off {
                return Err(DropReason::TooLarge);
            }
            let (head, body) = out.split_at_mut(off);
            match peer.session.encapsulate(packet, body)? {
                SessionOutput::Network(a, b) => {
                    peer.handshake_rtt.sent(now, &body[a..b]);
                    if a != 0 {
                        body.copy_within(a..b, 0);
                    }
                    if let Some(h) = header {
                        h.write_header(head);
                    }
                    peer.counters.tx_bytes += (b - a) as u64;
                    peer.counters.tx_packets += 1;
                    Ok(Action::SendUdp(Transmit {
                        dst,
                        peer: Some(peer.id),
                        len: off + b - a,
                    }))
                }
                SessionOutput::Done => Ok(Action::None),
                SessionOutput::Tunnel(..) => Err(DropReason::Malformed),
            }
        }
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
