//! Cost per packet of the data path, 1,400-byte IP packets: encrypt (`handle_tun` to a wg
//! peer), decrypt (`handle_udp` of a data message, delivered to the TUN), and what the hub does
//! per packet of the end-to-end relay (`handle_udp` of a relay message: forwarded unchanged).
//! `cargo bench -p fleetboard-dataplane-core --bench packet_path`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fleetboard_dataplane_core::{Action, Dataplane, DataplaneConfig, MAX_PACKET, SecretKey};

const A: &str = "198.18.0.1:31820";
const B: &str = "198.18.0.2:31820";
const PACKET: usize = 1400;

fn key(n: u8) -> SecretKey {
    SecretKey::from_random_bytes([n; 32])
}

/// A node with key `k`, its address, and peers `(key, endpoint, cidr)`.
fn node(k: u8, addr: &str, peers: &[(u8, &str, &str)], relay: bool) -> Dataplane {
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

fn ipv4_udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
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

/// Two nodes with a completed WireGuard handshake: a (100.64.1.1) and b (100.64.2.1).
fn pair() -> (Dataplane, Dataplane) {
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

fn data_path(c: &mut Criterion) {
    let (mut a, mut b) = pair();
    let pkt = ipv4_udp([100, 64, 1, 1], [100, 64, 2, 1], PACKET);
    let mut out = vec![0u8; MAX_PACKET];
    let now = Instant::now();
    let mut g = c.benchmark_group("packet_path");
    g.throughput(Throughput::Bytes(PACKET as u64));
    g.bench_function("encrypt (handle_tun, wg peer)", |bch| {
        bch.iter(|| {
            let act = a.handle_tun(now, black_box(&pkt), &mut out);
            assert!(matches!(act, Action::SendUdp(_)), "{act:?}");
        })
    });
    let from: SocketAddr = A.parse().unwrap();
    let mut dg = vec![0u8; MAX_PACKET];
    g.bench_function("decrypt (handle_udp, to the TUN)", |bch| {
        bch.iter_batched_ref(
            || match a.handle_tun(now, &pkt, &mut dg) {
                Action::SendUdp(t) => dg[..t.len].to_vec(),
                other => panic!("{other:?}"),
            },
            |d| {
                let act = b.handle_udp(now, from, black_box(d), &mut out);
                assert!(matches!(act, Action::WriteTun { .. }), "{act:?}");
            },
            BatchSize::SmallInput,
        )
    });

    // The hub of the end-to-end relay: a message from a for b, forwarded unchanged.
    let mut hub = node(
        9,
        "100.64.0.1/10",
        &[(1, A, "100.64.1.0/24"), (2, B, "100.64.2.0/24")],
        true,
    );
    let mut msg = vec![0xfbu8];
    msg.extend_from_slice(&key(2).public_key().0[..7]);
    msg.extend_from_slice(&vec![4u8; PACKET + 32]);
    g.bench_function("relay forward (handle_udp on the hub)", |bch| {
        bch.iter(|| {
            let act = hub.handle_udp(now, from, black_box(&msg), &mut out);
            assert!(matches!(act, Action::Forward(_)), "{act:?}");
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = data_path
}
criterion_main!(benches);
