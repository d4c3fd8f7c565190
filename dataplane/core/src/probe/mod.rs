//! Data-path probes: a smoltcp interface inside the dataplane, on this node's tunnel address.
//!
//! - Answering: packets from peers to the tunnel address ([`Prober::address`]) that are ICMP
//!   echo requests or UDP to [`PROBE_PORT`] are diverted to the interface (smoltcp answers
//!   the echo, the probe socket answers the request) instead of the TUN device; everything
//!   else to that address still goes to the kernel, which owns the address as before.
//! - Probing: every `probe.interval_ms` each peer with a probe address (its
//!   `PeerConfig::probe_address`, or learned from the source of its own probe requests) gets
//!   a request; the reply is timed into the peer's [`ProbeWindow`].
//!
//! The interface's packets enter the same encrypt/route path as TUN packets (see
//! `Dataplane::poll_probe`). The core drives it with the caller's `now`; nothing here reads
//! a clock. The data path pays one address comparison per packet delivered to this node.

mod device;
pub mod message;
pub mod window;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv6Packet, IpAddress, IpCidr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, UdpPacket,
};

use crate::config::ProbeSettings;
use crate::peer::PeerTable;
use crate::route::RouteTable;
use device::QueueDevice;
pub use message::{Kind, MESSAGE_LEN, Message, PROBE_PORT};
pub use window::{ProbeSummary, ProbeWindow};

/// Probe messages the socket buffers each way (one per peer per round).
const SOCKET_SLOTS: usize = 256;

/// Counters of the probe interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCounters {
    /// Probe requests sent.
    pub requests_sent: u64,
    /// Replies that answered a probe in a window.
    pub replies: u64,
    /// Probe requests of peers answered.
    pub requests_answered: u64,
    /// ICMP echo requests handed to the interface (it answers them).
    pub echo_requests: u64,
    /// Packets for the interface dropped as malformed (bad header, length or checksum).
    pub malformed: u64,
    /// Well-formed packets dropped as unexpected: not a probe message, a reply to no probe
    /// waiting (duplicate, late, unknown sender), or a full queue.
    pub unexpected: u64,
}

/// What a packet to the probe address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A probe message for the probe socket.
    Probe,
    /// An ICMP echo request (the interface answers it).
    Echo,
    /// Meant for the probe interface but malformed: drop and count.
    Malformed,
    /// Anything else: the kernel's, deliver to the TUN as before.
    Kernel,
}

/// A peer's probe state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProbe {
    /// Where its probe responder is (configured or learned).
    pub target: Option<IpAddr>,
    /// The configured address (`PeerConfig::probe_address`).
    pub configured: Option<IpAddr>,
    /// Its probes.
    pub window: ProbeWindow,
    /// Liveness as of the last round (for logging its changes).
    pub alive: Option<bool>,
}

impl PeerProbe {
    /// State for a peer with `configured` as its probe address.
    pub fn new(configured: Option<IpAddr>, window: usize) -> Self {
        Self {
            target: configured,
            configured,
            window: ProbeWindow::new(window),
            alive: None,
        }
    }

    /// Applies a new configuration: a changed address or window size starts afresh; a
    /// learned address stays while none is configured.
    pub fn reconfigure(&mut self, configured: Option<IpAddr>, window: usize) {
        if configured != self.configured || window != self.window.len() {
            let learned = self.target.filter(|_| configured.is_none());
            *self = Self::new(configured, window);
            self.target = configured.or(learned);
        }
    }
}

/// The probe interface of one dataplane.
pub struct Prober {
    address: Option<IpAddr>,
    base: Instant,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    settings: ProbeSettings,
    next_round: Instant,
    /// Counters.
    pub counters: ProbeCounters,
}

impl Prober {
    /// An interface on `address` (none: it answers nothing and sends nothing).
    pub fn new(address: Option<IpAddr>, settings: ProbeSettings, mtu: usize, now: Instant) -> Self {
        let mut device = QueueDevice::new(mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 0x6662_7072_6f62_6521;
        let iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        let meta = || vec![udp::PacketMetadata::EMPTY; SOCKET_SLOTS];
        let bytes = || vec![0u8; SOCKET_SLOTS * MESSAGE_LEN];
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(meta(), bytes()),
            udp::PacketBuffer::new(meta(), bytes()),
        );
        socket
            .bind(PROBE_PORT)
            .expect("a fresh socket binds a non-zero port");
        let mut sockets = SocketSet::new(Vec::new());
        let udp = sockets.add(socket);
        let mut p = Self {
            address: None,
            base: now,
            iface,
            device,
            sockets,
            udp,
            settings,
            next_round: now,
            counters: ProbeCounters::default(),
        };
        p.set_address(address);
        p
    }

    /// The address it answers on.
    #[inline]
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    /// Moves the interface to `address`.
    pub fn set_address(&mut self, address: Option<IpAddr>) {
        if self.address == address {
            return;
        }
        self.address = address;
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(a) = address {
                // Prefix 0: every peer address is on the (point-to-point) link.
                let _ = addrs.push(IpCidr::new(IpAddress::from(a), 0));
            }
        });
    }

    /// New settings (the next round is due at once when the interval changed).
    pub fn set_settings(&mut self, settings: ProbeSettings) {
        if settings.interval_ms != self.settings.interval_ms {
            self.next_round = self.base;
        }
        self.settings = settings;
    }

    /// The settings in force.
    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.base).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// When the next round of probes is due (none: probing is off).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.settings.interval_ms > 0 && self.address.is_some()).then_some(self.next_round)
    }

    /// Takes a packet to the probe address from a peer: true when it was the interface's
    /// (answered, timed or dropped and counted), false when it is the kernel's.
    pub fn receive(
        &mut self,
        now: Instant,
        packet: &[u8],
        peers: &mut PeerTable,
        routes: &RouteTable,
    ) -> bool {
        match classify(packet) {
            Verdict::Kernel => return false,
            Verdict::Malformed => {
                self.counters.malformed += 1;
                return true;
            }
            Verdict::Echo => self.counters.echo_requests += 1,
            Verdict::Probe => {}
        }
        if self.device.rx.len() >= device::MAX_QUEUED {
            self.counters.unexpected += 1;
            return true;
        }
        self.device.rx.push_back(packet.to_vec());
        self.poll(now, peers, routes);
        true
    }

    /// Runs the interface: takes in queued packets, answers requests, times replies.
    pub fn poll(&mut self, now: Instant, peers: &mut PeerTable, routes: &RouteTable) {
        let ts = self.ts(now);
        let _ = self.iface.poll(ts, &mut self.device, &mut self.sockets);
        loop {
            let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
            let Ok((payload, meta)) = socket.recv() else {
                break;
            };
            let message = Message::decode(payload);
            let from = IpAddr::from(meta.endpoint.addr);
            let port = meta.endpoint.port;
            match message {
                Some(Message {
                    kind: Kind::Request,
                    seq,
                }) => {
                    let reply = Message {
                        kind: Kind::Reply,
                        seq,
                    }
                    .encode();
                    if socket
                        .send_slice(&reply, (meta.endpoint.addr, port))
                        .is_ok()
                    {
                        self.counters.requests_answered += 1;
                    } else {
                        self.counters.unexpected += 1;
                    }
                    // Its source passed the cryptokey check: that peer's responder.
                    if let Some(p) = routes.lookup(from).and_then(|id| peers.get_mut(id))
                        && p.probe.target.is_none()
                    {
                        tracing::debug!(peer = %p.config.label(), %from, "probe address learned");
                        p.probe.target = Some(from);
                    }
                }
                Some(Message {
                    kind: Kind::Reply,
                    seq,
                }) if port == PROBE_PORT => {
                    let answered = routes
                        .lookup(from)
                        .and_then(|id| peers.get_mut(id))
                        .filter(|p| p.probe.target == Some(from))
                        .is_some_and(|p| p.probe.window.answer(seq, now));
                    if answered {
                        self.counters.replies += 1;
                    } else {
                        self.counters.unexpected += 1;
                    }
                }
                _ => self.counters.unexpected += 1,
            }
        }
        self.flush(ts);
    }

    /// Moves every message queued in the socket to the device (smoltcp sends one datagram of
    /// a socket per poll).
    fn flush(&mut self, ts: smoltcp::time::Instant) {
        loop {
            let queued = self.sockets.get::<udp::Socket>(self.udp).send_queue();
            let _ = self.iface.poll(ts, &mut self.device, &mut self.sockets);
            let left = self.sockets.get::<udp::Socket>(self.udp).send_queue();
            if left == 0 || left >= queued {
                break;
            }
        }
        self.counters.unexpected += std::mem::take(&mut self.device.tx_dropped);
    }

    /// Sends a round of probes when one is due.
    pub fn handle_timeout(&mut self, now: Instant, peers: &mut PeerTable, routes: &RouteTable) {
        let Some(due) = self.poll_timeout() else {
            return;
        };
        if now < due {
            return;
        }
        self.next_round = now + Duration::from_millis(u64::from(self.settings.interval_ms));
        let ts = self.ts(now);
        for p in peers.iter_mut() {
            let Some(target) = p.probe.target else {
                continue;
            };
            let seq = p.probe.window.send(now);
            let m = Message {
                kind: Kind::Request,
                seq,
            }
            .encode();
            let alive = p.probe.window.liveness(now, self.settings.dead_after());
            if alive != p.probe.alive && alive.is_some() {
                match alive {
                    Some(false) => {
                        tracing::warn!(peer = %p.config.label(), %target, "probes unanswered: peer dead")
                    }
                    _ => {
                        tracing::info!(peer = %p.config.label(), %target, "probes answered: peer alive")
                    }
                }
            }
            p.probe.alive = alive;
            if !self.sockets.get::<udp::Socket>(self.udp).can_send() {
                // More peers than socket slots: move the queued probes to the device first.
                self.flush(ts);
            }
            let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
            if socket
                .send_slice(&m, (IpAddress::from(target), PROBE_PORT))
                .is_ok()
            {
                self.counters.requests_sent += 1;
            } else {
                // Counted lost by the window after the timeout.
                self.counters.unexpected += 1;
            }
        }
        self.poll(now, peers, routes);
    }

    /// The next packet the interface sends (to be routed to a peer).
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// One peer's probe-based liveness at `now` (see [`ProbeWindow::liveness`]).
    pub fn liveness(&self, probe: &PeerProbe, now: Instant) -> Option<bool> {
        probe.window.liveness(now, self.settings.dead_after())
    }

    /// The figures of one peer's window at `now`.
    pub fn summary(&self, probe: &PeerProbe, now: Instant) -> ProbeSummary {
        let timeout = Duration::from_millis(u64::from(self.settings.timeout_ms));
        probe.window.summary(now, timeout)
    }
}

/// Sorts a packet to the probe address (its IP header already parsed by the caller).
pub fn classify(packet: &[u8]) -> Verdict {
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(ip) = Ipv4Packet::new_checked(packet) else {
                return Verdict::Kernel;
            };
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Verdict::Kernel;
            }
            let (proto, payload) = (ip.next_header(), ip.payload());
            let wanted = match proto {
                IpProtocol::Icmp => payload.first() == Some(&8),
                IpProtocol::Udp => udp_dst_port(payload) == Some(PROBE_PORT),
                _ => false,
            };
            if !wanted {
                return Verdict::Kernel;
            }
            let Ok(repr) = Ipv4Repr::parse(&ip, &caps) else {
                return Verdict::Malformed;
            };
            let ok = match proto {
                IpProtocol::Udp => udp_ok(payload, &repr.src_addr.into(), &repr.dst_addr.into()),
                _ => Icmpv4Packet::new_checked(payload).is_ok_and(|p| p.verify_checksum()),
            };
            verdict(proto, ok)
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(packet) else {
                return Verdict::Kernel;
            };
            let (proto, payload) = (ip.next_header(), ip.payload());
            let wanted = match proto {
                IpProtocol::Icmpv6 => payload.first() == Some(&128),
                IpProtocol::Udp => udp_dst_port(payload) == Some(PROBE_PORT),
                _ => false,
            };
            if !wanted {
                return Verdict::Kernel;
            }
            if usize::from(ip.payload_len()) != payload.len() {
                return Verdict::Malformed;
            }
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let ok = match proto {
                IpProtocol::Udp => udp_ok(payload, &src.into(), &dst.into()),
                _ => {
                    Icmpv6Packet::new_checked(payload).is_ok_and(|p| p.verify_checksum(&src, &dst))
                }
            };
            verdict(proto, ok)
        }
        _ => Verdict::Kernel,
    }
}

fn udp_dst_port(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(payload.get(2..4)?.try_into().ok()?))
}

/// A UDP datagram whose length fields and checksum hold.
fn udp_ok(payload: &[u8], src: &IpAddress, dst: &IpAddress) -> bool {
    UdpPacket::new_checked(payload)
        .is_ok_and(|u| usize::from(u.len()) == payload.len() && u.verify_checksum(src, dst))
}

fn verdict(proto: IpProtocol, ok: bool) -> Verdict {
    match (ok, proto) {
        (false, _) => Verdict::Malformed,
        (true, IpProtocol::Udp) => Verdict::Probe,
        (true, _) => Verdict::Echo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An IPv4 header (checksum right) for `proto` from 100.64.1.1 to 100.64.0.1, then `body`.
    fn ipv4(proto: u8, body: &[u8]) -> Vec<u8> {
        let total = 20 + body.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[100, 64, 1, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 1]);
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.fill_checksum();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn only_echo_requests_and_the_probe_port_are_taken() {
        // An echo reply (the kernel's own ping answered) and UDP to another port: the kernel's.
        assert_eq!(
            classify(&ipv4(1, &[0, 0, 0xff, 0xff, 0, 0, 0, 0])),
            Verdict::Kernel
        );
        let mut udp = vec![0u8; 8];
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(classify(&ipv4(17, &udp)), Verdict::Kernel);
        assert_eq!(classify(&ipv4(6, &[0; 20])), Verdict::Kernel);
        // An echo request with a wrong checksum, a truncated UDP header to the probe port.
        assert_eq!(
            classify(&ipv4(1, &[8, 0, 0, 0, 0, 0, 0, 0])),
            Verdict::Malformed
        );
        let port = PROBE_PORT.to_be_bytes();
        assert_eq!(
            classify(&ipv4(17, &[0, 0, port[0], port[1]])),
            Verdict::Malformed
        );
        assert_eq!(classify(&[]), Verdict::Kernel);
        assert_eq!(classify(&[0x45]), Verdict::Kernel);
    }

    proptest! {
        /// Arbitrary bytes after a valid IPv4 header (ICMP or UDP to the probe port), and
        /// arbitrary bytes altogether: never a panic; whatever is taken is counted.
        #[test]
        fn arbitrary_packets_to_the_probe_address_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            raw in proptest::collection::vec(any::<u8>(), 0..96),
            udp in any::<bool>(),
        ) {
            let now = Instant::now();
            let settings = ProbeSettings::default();
            let mut p = Prober::new(Some("100.64.0.1".parse().unwrap()), settings, 1420, now);
            let mut peers = PeerTable::default();
            let routes = RouteTable::new();
            let mut body = body;
            if udp && body.len() >= 4 {
                body[2..4].copy_from_slice(&PROBE_PORT.to_be_bytes());
            }
            for pkt in [ipv4(if udp { 17 } else { 1 }, &body), raw] {
                let before = p.counters;
                let taken = p.receive(now, &pkt, &mut peers, &routes);
                let c = p.counters;
                let counted = c.malformed + c.unexpected + c.echo_requests + c.requests_answered
                    - (before.malformed + before.unexpected + before.echo_requests
                        + before.requests_answered);
                prop_assert_eq!(taken, counted == 1, "{:02x?}", pkt);
                while p.pop_transmit().is_some() {}
            }
        }
    }
}
