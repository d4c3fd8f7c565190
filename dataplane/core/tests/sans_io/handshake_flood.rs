//! A flood of handshake initiations at a member: its established session keeps passing data,
//! and a new member reaching it through the hub's end-to-end relay completes its handshake
//! after the cookie round (the cookie reply travels back through the relay).

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use fleetboard_dataplane_core::{DropReason, MAX_PACKET};

use super::mesh::{HUB, Mesh, Node, contains, ipv4_udp, key, peer};

const C: &str = "198.18.0.4:31820";

/// The end-to-end relay mesh (hub 0, a 1, b 2) plus c (3, key 4, 100.64.3.0/24), a member
/// that reaches b through the hub.
fn mesh_with_c() -> Mesh {
    let mut m = Mesh::end_to_end_relay();
    let mut hub = m.nodes[0].dp.config().clone();
    hub.peers.push(peer(4, None, &["100.64.3.0/24"]));
    m.nodes[0].dp.apply_config(hub).unwrap();
    let mut b = m.nodes[2].dp.config().clone();
    let mut c_at_b = peer(4, None, &["100.64.3.0/24"]);
    c_at_b.via = Some(key(1).public_key());
    b.peers.push(c_at_b);
    m.nodes[2].dp.apply_config(b).unwrap();
    let mut b_at_c = peer(3, None, &["100.64.2.0/24"]);
    b_at_c.via = Some(key(1).public_key());
    let c = super::mesh::config(
        4,
        "100.64.3.1/10",
        vec![peer(1, Some(HUB), &["100.64.0.0/10"]), b_at_c],
    );
    m.nodes.push(Node {
        dp: fleetboard_dataplane_core::Dataplane::new(c, m.now).unwrap(),
        addr: C.parse().unwrap(),
        tun_out: vec![],
    });
    m
}

/// An attacker that knows b's public key: every call is a fresh initiation with a valid
/// mac1 (what passes the cheap check and costs a responder a DH when it is not under load).
struct Flooder {
    tunn: Tunn,
    buf: Vec<u8>,
}

impl Flooder {
    fn new(target: &fleetboard_dataplane_core::PublicKey) -> Self {
        let secret = x25519::StaticSecret::from([0x66; 32]);
        let tunn = Tunn::new(
            secret,
            x25519::PublicKey::from(target.0),
            None,
            None,
            7,
            None,
        );
        Self {
            tunn,
            buf: vec![0; MAX_PACKET],
        }
    }

    fn initiation(&mut self) -> Vec<u8> {
        match self.tunn.format_handshake_initiation(&mut self.buf, true) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        }
    }
}

/// `n` initiations straight at node `i` from `n` different (spoofed) addresses; returns how
/// many were answered with a cookie reply.
fn flood_direct(m: &mut Mesh, f: &mut Flooder, i: usize, n: u32) -> u32 {
    let mut cookies = 0;
    for k in 0..n {
        let from: SocketAddr = SocketAddr::from(([203, 0, (k >> 8) as u8, k as u8], 5000));
        let init = f.initiation();
        let a = m.nodes[i].dp.handle_udp(m.now, from, &init, &mut m.buf);
        if let fleetboard_dataplane_core::Action::SendUdp(t) = a {
            assert_eq!(t.dst, from, "a cookie reply goes back to the sender");
            assert_eq!(m.buf[0], 3, "cookie reply");
            cookies += 1;
        }
    }
    cookies
}

/// `n` initiations for b sent through the hub by a (a member that turned hostile): the hub
/// forwards them (a is an authenticated peer), b answers cookies back through the hub.
fn flood_relayed(m: &mut Mesh, f: &mut Flooder, n: u32) {
    let a = m.nodes[1].addr;
    let hub = m.nodes[0].addr;
    for _ in 0..n {
        let mut msg = vec![0xfb];
        msg.extend_from_slice(&key(3).public_key().0[..7]);
        msg.extend_from_slice(&f.initiation());
        m.wire.push_back((a, hub, msg, m.now));
    }
    m.run();
}

fn delivered(m: &Mesh, i: usize, pkt: &[u8]) -> bool {
    m.nodes[i].tun_out.iter().any(|p| p == pkt)
}

#[test]
fn handshake_flood_leaves_sessions_up_and_new_relayed_peers_complete_after_a_cookie() {
    let mut m = mesh_with_c();
    m.greet_hub();
    m.send_tun(3, &ipv4_udp([100, 64, 3, 1], [100, 64, 0, 1], b"c"));
    m.run();
    // a and b establish their end-to-end session before the flood.
    let first = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], b"before the flood");
    m.send_tun(1, &first);
    m.run();
    assert!(delivered(&m, 2, &first));

    let mut f = Flooder::new(&key(3).public_key());
    let started = Instant::now();
    let n = 2000;
    let cookies = flood_direct(&mut m, &mut f, 2, n);
    let took = started.elapsed();
    // The limiter lets the first 100 a second through (a DH each), then answers cookies.
    assert!(cookies >= n - 100, "{cookies} cookies for {n} initiations");
    eprintln!(
        "flood: {n} initiations in {took:?} ({:.0}/s handled, {cookies} cookie replies)",
        f64::from(n) / took.as_secs_f64()
    );
    flood_relayed(&mut m, &mut f, 200);

    // The established session keeps passing data both ways during the flood.
    for k in 0..20u8 {
        flood_direct(&mut m, &mut f, 2, 100);
        let ab = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], &[b'x', k]);
        let ba = ipv4_udp([100, 64, 2, 1], [100, 64, 1, 1], &[b'y', k]);
        m.send_tun(1, &ab);
        m.send_tun(2, &ba);
        m.run();
        assert!(delivered(&m, 2, &ab), "a -> b packet {k} lost in the flood");
        assert!(delivered(&m, 1, &ba), "b -> a packet {k} lost in the flood");
    }

    // c, new, reaches b through the hub while b is still under load: its first initiation
    // gets a cookie reply (through the hub), its retry carries the cookie and completes.
    flood_direct(&mut m, &mut f, 2, 200);
    let under_load_before = m.nodes[2].dp.drops().get(DropReason::UnderLoad);
    let seen_before = m.seen.len();
    let hello = ipv4_udp([100, 64, 3, 1], [100, 64, 2, 1], b"new peer under flood");
    m.send_tun(3, &hello);
    m.run();
    assert!(
        m.nodes[2].dp.drops().get(DropReason::UnderLoad) > under_load_before,
        "b was under load when c arrived"
    );
    let mut relayed_cookie = vec![0xfb];
    relayed_cookie.extend_from_slice(&key(1).public_key().0[..7]);
    relayed_cookie.push(3);
    assert!(
        m.seen[seen_before..]
            .iter()
            .any(|d| d.len() == 72 && d.starts_with(&relayed_cookie)),
        "b's cookie reply went to the hub"
    );
    let mut cookie_for_c = vec![0xfb];
    cookie_for_c.extend_from_slice(&key(4).public_key().0[..7]);
    cookie_for_c.push(3);
    assert!(
        m.seen[seen_before..]
            .iter()
            .any(|d| d.len() == 72 && d.starts_with(&cookie_for_c)),
        "the hub sent the cookie reply on to c"
    );
    assert!(
        delivered(&m, 2, &hello),
        "c's handshake completed after the cookie round and its packet arrived"
    );
    let back = ipv4_udp([100, 64, 2, 1], [100, 64, 3, 1], b"welcome");
    m.send_tun(2, &back);
    m.run();
    assert!(delivered(&m, 3, &back));
    // Nothing relayed was decrypted by the hub; the flood never reached its TUN.
    assert!(!m.nodes[0].tun_out.iter().any(|p| contains(p, b"flood")));
    let b = m.nodes[2].dp.status();
    assert!(
        b.drops.get(DropReason::UnderLoad) >= u64::from(n),
        "{:?}",
        b.drops
    );
}

#[test]
fn a_cookie_reply_to_the_relay_without_a_forwarded_initiation_is_not_forwarded() {
    let mut m = mesh_with_c();
    m.greet_hub();
    let b_addr = m.nodes[2].addr;
    let mut msg = vec![0xfb];
    msg.extend_from_slice(&key(1).public_key().0[..7]);
    msg.push(3);
    msg.extend_from_slice(&[0; 63]);
    let a = m.nodes[0].dp.handle_udp(m.now, b_addr, &msg, &mut m.buf);
    assert_eq!(a, fleetboard_dataplane_core::Action::None);
    assert_eq!(m.nodes[0].dp.status().relayed_packets, 0);
}
