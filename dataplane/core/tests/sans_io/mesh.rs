//! A `Mesh` harness: three cores (hub, a, b) wired by an in-memory underlay, no sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetboard_dataplane_core::{
    Action, Dataplane, DataplaneConfig, DropReason, MAX_PACKET, PeerConfig, PeerId, SecretKey,
    Transport,
};

pub(crate) struct Node {
    pub(crate) dp: Dataplane,
    pub(crate) addr: SocketAddr,
    pub(crate) tun_out: Vec<Vec<u8>>,
}

pub(crate) struct Mesh {
    pub(crate) nodes: Vec<Node>,
    /// Datagrams in flight: from, to, data, and when they arrive.
    pub(crate) wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>, Instant)>,
    /// Every datagram that crossed the wire (to check that nothing went in clear).
    pub(crate) seen: Vec<Vec<u8>>,
    pub(crate) now: Instant,
    /// One-way delay of every datagram on the wire (none unless a test sets it).
    delay: Duration,
    pub(crate) buf: Vec<u8>,
}

/// The origin of the tests' virtual clock. It reads the real clock once, only because an
/// `Instant` cannot be made otherwise; every later time a test passes to a core is this plus
/// what the test advanced (`Mesh::tick`, the wire's delay), so the core's timers (forced
/// handshakes, handshake RTTs, probes) act when the test says, on any machine. boringtun
/// keeps its own timers inside each session on the real clock (its API takes no time): no
/// assertion here reads them, and a test lasts milliseconds of real time, far from their
/// first deadline (5 s).
pub(crate) fn epoch() -> Instant {
    Instant::now()
}

pub(crate) fn key(n: u8) -> SecretKey {
    SecretKey::from_random_bytes([n; 32])
}

pub(crate) fn config(k: u8, addr: &str, peers: Vec<PeerConfig>) -> DataplaneConfig {
    DataplaneConfig {
        peers,
        ..DataplaneConfig::new(key(k), "fb0", vec![addr.parse().unwrap()])
    }
}

pub(crate) fn peer(k: u8, endpoint: Option<&str>, cidrs: &[&str]) -> PeerConfig {
    PeerConfig {
        name: Some(format!("n{k}")),
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        persistent_keepalive: Some(5),
        ..PeerConfig::new(
            key(k).public_key(),
            cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }
}

pub(crate) const HUB: &str = "198.18.0.1:31820";
const A: &str = "198.18.0.2:31820";
const B: &str = "198.18.0.3:31820";

impl Mesh {
    /// hub (key 1) relays between a (key 2, 100.64.1.0/24) and b (key 3, 100.64.2.0/24).
    pub(crate) fn hub_and_spokes() -> Self {
        let now = epoch();
        let hub = config(
            1,
            "100.64.0.1/10",
            vec![
                peer(2, None, &["100.64.1.0/24"]),
                peer(3, None, &["100.64.2.0/24"]),
            ],
        );
        let a = config(
            2,
            "100.64.1.1/10",
            vec![peer(1, Some(HUB), &["100.64.0.0/10"])],
        );
        let b = config(
            3,
            "100.64.2.1/10",
            vec![peer(1, Some(HUB), &["100.64.0.0/10"])],
        );
        let nodes = [(hub, HUB), (a, A), (b, B)]
            .into_iter()
            .map(|(c, addr)| Node {
                dp: Dataplane::new(c, now).unwrap(),
                addr: addr.parse().unwrap(),
                tun_out: vec![],
            })
            .collect();
        Mesh {
            nodes,
            wire: VecDeque::new(),
            seen: vec![],
            now,
            delay: Duration::ZERO,
            buf: vec![0; MAX_PACKET],
        }
    }

    /// hub_and_spokes, but a and b keep a session with each other through the hub, which
    /// only forwards (relay: true).
    pub(crate) fn end_to_end_relay() -> Self {
        let mut m = Self::hub_and_spokes();
        let mut hub = m.nodes[0].dp.config().clone();
        hub.relay = true;
        m.nodes[0].dp.apply_config(hub).unwrap();
        for (i, other, cidr) in [(1, 3, "100.64.2.0/24"), (2, 2, "100.64.1.0/24")] {
            let mut c = m.nodes[i].dp.config().clone();
            let mut p = peer(other, None, &[cidr]);
            p.via = Some(key(1).public_key());
            c.peers.push(p);
            m.nodes[i].dp.apply_config(c).unwrap();
        }
        m
    }

    /// a and b each send one packet to the hub ("a", "b"): the hub learns their endpoints.
    pub(crate) fn greet_hub(&mut self) {
        self.send_tun(1, &ipv4_udp([100, 64, 1, 1], [100, 64, 0, 1], b"a"));
        self.send_tun(2, &ipv4_udp([100, 64, 2, 1], [100, 64, 0, 1], b"b"));
        self.run();
    }

    pub(crate) fn act(&mut self, i: usize, a: Action) {
        self.act_on(i, a, &[]);
    }

    pub(crate) fn act_on(&mut self, i: usize, a: Action, input: &[u8]) {
        let from = self.nodes[i].addr;
        let at = self.now + self.delay;
        match a {
            Action::None => {}
            Action::Forward(t) => self
                .wire
                .push_back((from, t.dst, input[..t.len].to_vec(), at)),
            Action::SendUdp(t) => {
                self.wire
                    .push_back((from, t.dst, self.buf[..t.len].to_vec(), at))
            }
            Action::WriteTun { len } => self.nodes[i].tun_out.push(self.buf[..len].to_vec()),
            Action::SendPeer { .. } => panic!("no quic in this mesh"),
        }
        while let Some(t) = self.nodes[i].dp.poll_transmit(&mut self.buf) {
            self.wire
                .push_back((from, t.dst, self.buf[..t.len].to_vec(), at));
        }
        // The probe interface's packets, encrypted like TUN packets.
        while let Some(a) = self.nodes[i].dp.poll_probe(self.now, &mut self.buf) {
            match a {
                Action::SendUdp(t) => {
                    self.wire
                        .push_back((from, t.dst, self.buf[..t.len].to_vec(), at))
                }
                Action::None => {}
                other => panic!("probe packet action {other:?}"),
            }
            while let Some(t) = self.nodes[i].dp.poll_transmit(&mut self.buf) {
                self.wire
                    .push_back((from, t.dst, self.buf[..t.len].to_vec(), at));
            }
        }
    }

    pub(crate) fn send_tun(&mut self, i: usize, pkt: &[u8]) {
        let a = self.nodes[i].dp.handle_tun(self.now, pkt, &mut self.buf);
        self.act(i, a);
    }

    /// Delivers what is on the wire, in order, until nothing is; the clock advances to each
    /// datagram's arrival (the delay is the same for all, so the wire is in arrival order).
    pub(crate) fn run(&mut self) {
        for _ in 0..1000 {
            let Some((from, to, data, at)) = self.wire.pop_front() else {
                return;
            };
            self.now = self.now.max(at);
            self.seen.push(data.clone());
            let Some(i) = self.nodes.iter().position(|n| n.addr == to) else {
                continue;
            };
            let a = self.nodes[i]
                .dp
                .handle_udp(self.now, from, &data, &mut self.buf);
            self.act_on(i, a, &data);
        }
        panic!("mesh did not settle");
    }

    pub(crate) fn tick(&mut self, d: Duration) {
        self.now += d;
        for i in 0..self.nodes.len() {
            self.nodes[i].dp.handle_timeout(self.now);
            self.act(i, Action::None);
        }
        self.run();
    }
}

pub(crate) fn ipv4_udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

#[test]
fn a_reaches_b_through_the_hub_relay() {
    let mut m = Mesh::hub_and_spokes();
    // b must be known to the hub first (it has no endpoint for b): b says hello.
    m.send_tun(2, &ipv4_udp([100, 64, 2, 1], [100, 64, 0, 1], b"hello hub"));
    m.run();
    assert_eq!(m.nodes[0].tun_out.len(), 1, "hub got b's packet on its TUN");

    let pkt = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"through the hub");
    m.send_tun(1, &pkt);
    m.run();
    assert_eq!(
        m.nodes[2].tun_out,
        vec![pkt.clone()],
        "b received a's packet"
    );
    assert_eq!(
        m.nodes[0].tun_out.len(),
        1,
        "relay never touches the hub's TUN"
    );

    // And back.
    let back = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], b"reply");
    m.send_tun(2, &back);
    m.run();
    assert_eq!(m.nodes[1].tun_out, vec![back]);
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut m = Mesh::hub_and_spokes();
    m.send_tun(2, &ipv4_udp([100, 64, 2, 1], [100, 64, 0, 1], b"hi"));
    m.run();
    // a claims to be 100.64.2.9 (b's range): the hub must refuse it.
    m.send_tun(1, &ipv4_udp([100, 64, 2, 9], [100, 64, 0, 1], b"spoof"));
    m.run();
    assert_eq!(m.nodes[0].tun_out.len(), 1);
    assert_eq!(m.nodes[0].dp.drops().get(DropReason::SourceNotAllowed), 1);
}

#[test]
fn garbage_and_unknown_keys_are_counted_not_delivered() {
    let mut m = Mesh::hub_and_spokes();
    let from: SocketAddr = "198.18.0.9:5000".parse().unwrap();
    let now = m.now;
    let mut buf = vec![0; MAX_PACKET];
    for g in [
        &b""[..],
        b"\x01",
        b"\x04\0\0\0garbage-garbage-garbage-garbage-garbage",
        &[1u8; 148],
    ] {
        assert_eq!(
            m.nodes[0].dp.handle_udp(now, from, g, &mut buf),
            Action::None
        );
    }
    assert!(m.nodes[0].dp.drops().total() >= 4);

    // A stranger (key 9) who knows the hub's key but is not a peer of it.
    let stranger = config(
        9,
        "100.64.9.1/10",
        vec![peer(1, Some(HUB), &["100.64.0.0/10"])],
    );
    m.nodes.push(Node {
        dp: Dataplane::new(stranger, now).unwrap(),
        addr: "198.18.0.9:31820".parse().unwrap(),
        tun_out: vec![],
    });
    m.send_tun(3, &ipv4_udp([100, 64, 9, 1], [100, 64, 0, 1], b"let me in"));
    m.run();
    assert!(m.nodes[0].tun_out.is_empty());
    assert!(m.nodes[0].dp.drops().get(DropReason::UnknownPeer) >= 1);
}

#[test]
fn restarted_hub_is_reconnected_by_keepalive_peers() {
    let mut m = Mesh::hub_and_spokes();
    m.greet_hub();
    for _ in 0..8 {
        m.tick(Duration::from_secs(1));
    }
    // Restart the hub: new state, same config.
    let cfg = m.nodes[0].dp.config().clone();
    m.nodes[0].dp = Dataplane::new(cfg, m.now).unwrap();
    m.nodes[0].tun_out.clear();
    // Silent spokes re-handshake within 2 * keepalive + grace.
    for _ in 0..40 {
        m.tick(Duration::from_millis(500));
    }
    let pkt = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"after restart");
    m.send_tun(1, &pkt);
    m.run();
    assert_eq!(m.nodes[2].tun_out.last(), Some(&pkt));
}

/// A gateway move: another node starts with the cluster's key at another address, and sends
/// nothing. It handshakes with the hub at its first timer tick (not after a keepalive
/// interval), so the hub sends b's next packet to the new address.
#[test]
fn a_new_peer_with_keepalive_handshakes_at_the_first_tick() {
    let mut m = Mesh::hub_and_spokes();
    m.greet_hub();
    let cfg = m.nodes[1].dp.config().clone();
    m.nodes[1] = Node {
        dp: Dataplane::new(cfg, m.now).unwrap(),
        addr: "198.18.0.4:31820".parse().unwrap(),
        tun_out: vec![],
    };
    m.tick(Duration::from_millis(250));
    let pkt = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], b"to the new gateway");
    m.send_tun(2, &pkt);
    m.run();
    assert_eq!(
        m.nodes[1].tun_out.last(),
        Some(&pkt),
        "delivered within one tick"
    );
}

#[test]
fn removing_a_peer_at_runtime_stops_its_traffic_only() {
    let mut m = Mesh::hub_and_spokes();
    m.greet_hub();
    let mut cfg = m.nodes[0].dp.config().clone();
    cfg.peers.retain(|p| p.name.as_deref() != Some("n3"));
    m.nodes[0].dp.apply_config(cfg).unwrap();
    m.send_tun(2, &ipv4_udp([100, 64, 2, 1], [100, 64, 0, 1], b"b2"));
    m.send_tun(1, &ipv4_udp([100, 64, 1, 1], [100, 64, 0, 1], b"a2"));
    m.run();
    let got: Vec<&[u8]> = m.nodes[0].tun_out.iter().map(|p| &p[28..]).collect();
    assert_eq!(got, vec![&b"a"[..], b"b", b"a2"]);
}

/// Node 1 at `addr` with a wg peer (100.64.1.0/24) and a quic peer (100.64.2.0/24).
fn wg_and_quic_node(now: Instant, addr: &str) -> (Dataplane, PeerId) {
    let mut cfg = config(
        1,
        addr,
        vec![
            peer(2, None, &["100.64.1.0/24"]),
            peer(3, None, &["100.64.2.0/24"]),
        ],
    );
    cfg.peers[1].transport = Some(Transport::Quic);
    // A quic peer needs a pinned key and this node a QUIC identity (config validation).
    cfg.peers[1].fingerprint = Some("ab".repeat(32));
    cfg.quic.certificate = Some("/etc/fleetboard/quic.crt".into());
    cfg.quic.private_key = Some("/etc/fleetboard/quic.key".into());
    let dp = Dataplane::new(cfg, now).unwrap();
    let quic_peer = dp.peer_by_key(&key(3).public_key()).unwrap();
    (dp, quic_peer)
}

#[test]
fn non_wg_peers_get_plaintext_for_their_transport() {
    let now = epoch();
    let (mut dp, quic_peer) = wg_and_quic_node(now, "100.64.0.1/10");
    let mut out = vec![0; MAX_PACKET];

    // TUN -> quic peer: the plaintext packet, for the transport to carry.
    let pkt = ipv4_udp([100, 64, 0, 1], [100, 64, 2, 5], b"over quic");
    match dp.handle_tun(now, &pkt, &mut out) {
        Action::SendPeer {
            peer,
            transport,
            len,
        } => {
            assert_eq!((peer, transport), (quic_peer, Transport::Quic));
            assert_eq!(&out[..len], &pkt[..]);
        }
        other => panic!("{other:?}"),
    }
    // quic peer -> TUN, with the cryptokey-routing source check.
    let back = ipv4_udp([100, 64, 2, 5], [100, 64, 0, 1], b"back");
    assert_eq!(
        dp.handle_peer_packet(now, quic_peer, &back, &mut out),
        Action::WriteTun { len: back.len() }
    );
    let spoof = ipv4_udp([100, 64, 1, 5], [100, 64, 0, 1], b"spoof");
    assert_eq!(
        dp.handle_peer_packet(now, quic_peer, &spoof, &mut out),
        Action::None
    );
    assert_eq!(dp.drops().get(DropReason::SourceNotAllowed), 1);
    // The core times no QUIC round trips (the QUIC transport fills them in).
    let st = dp.status();
    assert!(st.peers.iter().all(|p| p.rtt_micros.is_none()), "{st:?}");
}

#[test]
fn generated_icmp_goes_back_to_the_peer_of_its_destination() {
    let now = epoch();
    let (mut dp, quic_peer) = wg_and_quic_node(now, "100.64.0.1/24");
    let mut out = vec![0; MAX_PACKET];

    // An error about a packet relayed from 100.64.2.5 goes back to that sender's peer.
    let icmp = ipv4_udp([100, 64, 0, 1], [100, 64, 2, 5], b"icmp-ish");
    match dp.handle_local(now, &icmp, &mut out) {
        Action::SendPeer { peer, len, .. } => {
            assert_eq!(peer, quic_peer);
            assert_eq!(&out[..len], &icmp[..]);
        }
        other => panic!("{other:?}"),
    }
    // No peer owns the destination: it is this node's, the TUN gets it.
    let local = ipv4_udp([100, 64, 0, 1], [100, 64, 0, 9], b"local");
    assert_eq!(
        dp.handle_local(now, &local, &mut out),
        Action::WriteTun { len: local.len() }
    );
    assert_eq!(&out[..local.len()], &local[..]);
    // Garbage is counted, not sent.
    assert_eq!(dp.handle_local(now, &[0x45, 0, 0], &mut out), Action::None);
}

#[test]
fn a_peer_that_changes_address_keeps_working() {
    let mut m = Mesh::hub_and_spokes();
    m.send_tun(
        1,
        &ipv4_udp([100, 64, 1, 1], [100, 64, 0, 1], b"from old address"),
    );
    m.send_tun(2, &ipv4_udp([100, 64, 2, 1], [100, 64, 0, 1], b"b"));
    m.run();
    // a's NAT mapping changes: same keys, new source address and port.
    m.nodes[1].addr = "198.18.0.22:40000".parse().unwrap();
    m.send_tun(
        1,
        &ipv4_udp([100, 64, 1, 1], [100, 64, 0, 1], b"from new address"),
    );
    m.run();
    // The hub learnt the new endpoint from the authenticated packet: b's reply reaches a.
    let reply = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], b"reply to roamed a");
    m.send_tun(2, &reply);
    m.run();
    assert_eq!(m.nodes[1].tun_out.last(), Some(&reply));
    let hub = m.nodes[0].dp.status();
    let a = hub
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("n2"))
        .unwrap();
    assert_eq!(a.endpoint, Some("198.18.0.22:40000".parse().unwrap()));
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn relayed_members_talk_end_to_end_and_the_hub_only_forwards() {
    let mut m = Mesh::end_to_end_relay();
    // The hub learns where a and b are from their own sessions with it.
    m.greet_hub();
    assert_eq!(m.nodes[0].tun_out.len(), 2);

    let secret = b"only a and b can read this";
    let pkt = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], secret);
    m.send_tun(1, &pkt);
    m.run();
    assert_eq!(
        m.nodes[2].tun_out,
        vec![pkt.clone()],
        "b received a's packet"
    );
    let back = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], b"reply");
    m.send_tun(2, &back);
    m.run();
    assert_eq!(m.nodes[1].tun_out, vec![back]);

    let hub = m.nodes[0].dp.status();
    assert_eq!(
        m.nodes[0].tun_out.len(),
        2,
        "nothing relayed reached the hub's TUN"
    );
    // Handshake initiation + response + two data packets (one each way).
    assert!(hub.relayed_packets >= 4, "{}", hub.relayed_packets);
    assert_eq!(hub.drops.total(), 0, "{:?}", hub.drops);
    assert!(
        !m.seen.iter().any(|d| contains(d, secret)),
        "the payload crossed the wire in clear"
    );
    // a keeps b behind the relay: it never roams b to the hub's address.
    let a = m.nodes[1].dp.status();
    let b = a
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("n3"))
        .unwrap();
    assert_eq!(b.endpoint, None);
    // a and b completed a handshake, timed on the virtual clock (no delay on the wire).
    assert_eq!(b.rtt_micros, Some(0), "{b:?}");
}

#[test]
fn relayed_sessions_survive_keepalive_timers() {
    let mut m = Mesh::end_to_end_relay();
    m.greet_hub();
    m.send_tun(1, &ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"first"));
    m.run();
    assert_rtt(rtt_of(&m, 1, "n3"), Duration::ZERO);
    // 30 silent seconds: the a-b session's timers (a new handshake for a keepalive peer that
    // fell silent) send through the relay too. The wire is slower now, so a handshake made
    // in those seconds shows as an RTT of two hops each way.
    let one_way = Duration::from_millis(10);
    m.delay = one_way;
    let relayed = m.nodes[0].dp.status().relayed_packets;
    for _ in 0..30 {
        m.tick(Duration::from_secs(1));
    }
    assert!(m.nodes[0].dp.status().relayed_packets > relayed);
    assert_rtt(rtt_of(&m, 1, "n3"), 4 * one_way);
    assert_rtt(rtt_of(&m, 2, "n2"), 4 * one_way);
    let pkt = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], b"thirty seconds later");
    m.send_tun(2, &pkt);
    m.run();
    assert_eq!(m.nodes[1].tun_out.last(), Some(&pkt));
    assert_eq!(m.nodes[0].dp.drops().total(), 0);
}

#[test]
fn relay_messages_from_strangers_or_to_non_relays_are_refused() {
    let mut m = Mesh::end_to_end_relay();
    m.greet_hub();
    let now = m.now;
    let mut buf = vec![0; MAX_PACKET];
    // For b, but from an address that is no peer's endpoint: not forwarded.
    let mut msg = vec![0xfbu8];
    msg.extend_from_slice(&key(3).public_key().0[..7]);
    msg.extend_from_slice(&[4u8; 64]);
    let stranger: SocketAddr = "198.18.0.99:4000".parse().unwrap();
    assert_eq!(
        m.nodes[0].dp.handle_udp(now, stranger, &msg, &mut buf),
        Action::None
    );
    // From a, but for a key the hub does not know.
    let mut unknown = msg.clone();
    unknown[1..8].copy_from_slice(&[0xee; 7]);
    let a_addr = m.nodes[1].addr;
    assert_eq!(
        m.nodes[0].dp.handle_udp(now, a_addr, &unknown, &mut buf),
        Action::None
    );
    assert_eq!(m.nodes[0].dp.drops().get(DropReason::RelayRefused), 2);
    // A member does not relay (relay is off there): a message for b sent to a is refused.
    let hub_addr = m.nodes[0].addr;
    assert_eq!(
        m.nodes[1].dp.handle_udp(now, hub_addr, &msg, &mut buf),
        Action::None
    );
    assert_eq!(m.nodes[1].dp.drops().get(DropReason::RelayRefused), 1);
    // Truncated relay messages are malformed.
    assert_eq!(
        m.nodes[0].dp.handle_udp(now, a_addr, &msg[..8], &mut buf),
        Action::None
    );
    assert_eq!(m.nodes[0].dp.drops().get(DropReason::Malformed), 1);
    // And the forwarded one from a, for b, goes to b unchanged.
    match m.nodes[0].dp.handle_udp(now, a_addr, &msg, &mut buf) {
        Action::Forward(t) => {
            assert_eq!(t.dst, m.nodes[2].addr);
            assert_eq!(t.len, msg.len());
        }
        other => panic!("{other:?}"),
    }
}

/// The RTT that node `i` reports for its peer named `name`.
fn rtt_of(m: &Mesh, i: usize, name: &str) -> Option<Duration> {
    let st = m.nodes[i].dp.status();
    let p = st
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("node {i} has no peer {name}"));
    p.rtt_micros.map(Duration::from_micros)
}

/// `got` is `want` give or take 1 µs (the virtual clock is exact; the status is in µs).
#[track_caller]
fn assert_rtt(got: Option<Duration>, want: Duration) {
    let got = got.expect("an RTT");
    assert!(
        got.abs_diff(want) <= Duration::from_micros(1),
        "RTT {got:?}, want {want:?}"
    );
}

#[test]
fn wireguard_rtt_is_timed_on_both_sides_of_a_handshake() {
    let mut m = Mesh::hub_and_spokes();
    let one_way = Duration::from_millis(7);
    m.delay = one_way;
    assert_eq!(rtt_of(&m, 1, "n1"), None, "no handshake yet");
    // a and b initiate (their first packet), the hub responds: the initiators time
    // initiation -> response, the hub response -> their keepalive.
    m.greet_hub();
    assert_eq!(m.nodes[0].tun_out.len(), 2);
    for (i, name) in [(1, "n1"), (2, "n1"), (0, "n2"), (0, "n3")] {
        assert_rtt(rtt_of(&m, i, name), 2 * one_way);
    }
    // Traffic on the session changes nothing.
    m.delay = Duration::from_millis(30);
    m.send_tun(1, &ipv4_udp([100, 64, 1, 1], [100, 64, 0, 1], b"more"));
    m.run();
    assert_rtt(rtt_of(&m, 0, "n2"), 2 * one_way);
}

#[test]
fn wireguard_rtt_is_the_latest_handshake() {
    let mut m = Mesh::hub_and_spokes();
    m.delay = Duration::from_millis(3);
    m.greet_hub();
    assert_rtt(rtt_of(&m, 1, "n1"), Duration::from_millis(6));
    // The hub restarts behind a slower path: a's timers start the next handshake (the
    // silent-peer rule), which is timed like the first.
    m.delay = Duration::from_millis(40);
    let cfg = m.nodes[0].dp.config().clone();
    m.nodes[0].dp = Dataplane::new(cfg, m.now).unwrap();
    for _ in 0..40 {
        m.tick(Duration::from_millis(500));
    }
    assert_rtt(rtt_of(&m, 1, "n1"), Duration::from_millis(80));
    assert_rtt(rtt_of(&m, 0, "n2"), Duration::from_millis(80));
}

#[test]
fn wireguard_rtt_through_the_relay_is_end_to_end() {
    let mut m = Mesh::end_to_end_relay();
    let one_way = Duration::from_millis(5);
    m.delay = one_way;
    m.greet_hub();
    m.send_tun(1, &ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"to b"));
    m.run();
    assert_eq!(m.nodes[2].tun_out.len(), 1);
    // a <-> b crosses two hops each way (a -> hub -> b): both time four one-way delays.
    assert_rtt(rtt_of(&m, 1, "n3"), 4 * one_way);
    assert_rtt(rtt_of(&m, 2, "n2"), 4 * one_way);
    // Their own sessions with the hub: one hop each way.
    assert_rtt(rtt_of(&m, 1, "n1"), 2 * one_way);
    assert_rtt(rtt_of(&m, 0, "n3"), 2 * one_way);
}
