//! Setup shared by the data-path benches: nodes with fixed keys, a completed WireGuard
//! handshake between two of them, IPv4 packets.

use std::net::SocketAddr;
use std::time::Instant;

use fleetboard_dataplane_core::{Action, Dataplane, DataplaneConfig, MAX_PACKET, SecretKey};

/// Underlay endpoints of node a and node b.
pub const A: &str = "198.18.0.1:31820";
pub const B: &str = "198.18.0.2:31820";
/// Bytes of the IP packets the benches send (a full-size packet under a 1,500-byte underlay).
pub const PACKET: usize = 1400;

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_random_bytes([n; 32])
}

/// A node with key `k`, its address, and peers `(key, endpoint, cidr)`.
pub fn node(k: u8, addr: &str, peers: &[(u8, &str, &str)], relay: bool) -> Dataplane {
    let peers: Vec<_> = peers
        .iter()
        .map(|(pk, ep, cidr)| {
            serde_json::json!({
                "public_key": key(*pk).public_key().to_base64(),
                "endpoint": ep,
                "allowed_ips": [cidr],
            })
        })
        .collect();
    let cfg: DataplaneConfig = serde_json::from_value(serde_json::json!({
        "interface": { "name": "fb0", "addresses": [addr] },
        "private_key": key(k).to_base64(),
        "peers": peers,
        "relay": relay,
    }))
    .unwrap();
    Dataplane::new(cfg, Instant::now()).unwrap()
}

pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[..20].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// A full-size packet from a (100.64.1.1) to b (100.64.2.1).
pub fn a_to_b() -> Vec<u8> {
    ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], PACKET)
}

/// Two nodes with a completed WireGuard handshake: a (100.64.1.1) and b (100.64.2.1).
pub fn pair() -> (Dataplane, Dataplane) {
    let mut a = node(1, "100.64.1.1/10", &[(2, B, "100.64.2.0/24")], false);
    let mut b = node(2, "100.64.2.1/10", &[(1, A, "100.64.1.0/24")], false);
    let (ea, eb): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let mut out = vec![0u8; MAX_PACKET];
    let mut wire: Vec<(bool, Vec<u8>)> = Vec::new(); // (to b, datagram)
    let now = Instant::now();
    let first = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], 100);
    if let Action::SendUdp(t) = a.handle_tun(now, &first, &mut out) {
        wire.push((true, out[..t.len].to_vec()));
    }
    for _ in 0..16 {
        let Some((to_b, d)) = wire.pop() else { break };
        let (dst, from) = if to_b { (&mut b, ea) } else { (&mut a, eb) };
        if let Action::SendUdp(t) = dst.handle_udp(now, from, &d, &mut out) {
            wire.push((!to_b, out[..t.len].to_vec()));
        }
        while let Some(t) = dst.poll_transmit(&mut out) {
            wire.push((!to_b, out[..t.len].to_vec()));
        }
    }
    (a, b)
}

/// The hub of the end-to-end relay between a and b.
pub fn relay_hub() -> Dataplane {
    node(
        9,
        "100.64.0.1/10",
        &[(1, A, "100.64.1.0/24"), (2, B, "100.64.2.0/24")],
        true,
    )
}

/// A relay message from a for b as the hub receives it (marker, b's key prefix, the
/// WireGuard data message it forwards unchanged).
pub fn relay_message() -> Vec<u8> {
    let mut msg = vec![0xfbu8];
    msg.extend_from_slice(&key(2).public_key().0[..7]);
    msg.extend_from_slice(&vec![4u8; PACKET + 32]);
    msg
}
