//! Lookup cost of the route table (longest-prefix match) and the peer table as they grow:
//! routes 10 .. 10,000, peers 10 .. 1,000. `cargo bench -p fleetboard-dataplane-core --bench
//! tables`; perf/RESULTS.md shows the curve.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fleetboard_dataplane_core::route::RouteTable;
use fleetboard_dataplane_core::{Dataplane, DataplaneConfig, PeerId, SecretKey};
use ipnet::{IpNet, Ipv4Net};

/// A small deterministic generator (xorshift), so every run benches the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
}

/// `n` routes like a large fleet's: mostly /24 node blocks and /16 cluster blocks inside
/// 100.64.0.0/10, some /32 service VIPs, one /10 default toward the hub.
fn routes(n: usize, rng: &mut Rng) -> Vec<(IpNet, PeerId)> {
    let mut v = vec![("100.64.0.0/10".parse().unwrap(), PeerId(0))];
    while v.len() < n {
        let len = match rng.next() % 10 {
            0 => 16,
            1 => 32,
            _ => 24,
        };
        let addr = Ipv4Addr::from(0x6440_0000 | (rng.next() & 0x003f_ffff));
        let net = IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc());
        v.push((net, PeerId(v.len() as u32)));
    }
    v
}

/// Probe addresses: half inside a route's network, half anywhere in 100.64.0.0/10.
fn probes(routes: &[(IpNet, PeerId)], rng: &mut Rng) -> Vec<IpAddr> {
    (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                let (net, _) = routes[rng.next() as usize % routes.len()];
                match net {
                    IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                        u32::from(n.network()) | (rng.next() & !u32::from(n.netmask())),
                    )),
                    IpNet::V6(_) => unreachable!(),
                }
            } else {
                IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (rng.next() & 0x003f_ffff)))
            }
        })
        .collect()
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 100, 1_000, 10_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let rs = routes(n, &mut rng);
        let mut t = RouteTable::new();
        for (net, p) in &rs {
            t.insert(*net, *p);
        }
        let ps = probes(&rs, &mut rng);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(t.lookup(black_box(ps[i])))
            })
        });
    }
    g.finish();
}

/// A dataplane with `n` peers, each with one /24 of 100.64.0.0/10 (n routes); built from
/// JSON so fields added to the config later keep their defaults.
fn dataplane(n: usize) -> (Dataplane, Vec<fleetboard_dataplane_core::PublicKey>) {
    let keys: Vec<_> = (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[8..16].copy_from_slice(&(i as u64 + 7).to_le_bytes());
            SecretKey::from_random_bytes(b).public_key()
        })
        .collect();
    let peers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            serde_json::json!({
                "public_key": k.to_base64(),
                "allowed_ips": [format!("100.{}.{}.0/24", 64 + (i >> 8), i & 0xff)],
            })
        })
        .collect();
    let cfg: DataplaneConfig = serde_json::from_value(serde_json::json!({
        "interface": {"name": "fb0", "addresses": ["100.127.255.1/10"]},
        "private_key": SecretKey::from_random_bytes([1; 32]).to_base64(),
        "peers": peers,
    }))
    .expect("bench config");
    (
        Dataplane::new(cfg, std::time::Instant::now()).expect("valid"),
        keys,
    )
}

fn peer_lookup(c: &mut Criterion) {
    for n in [10usize, 100, 1_000] {
        let (dp, keys) = dataplane(n);
        let ids: Vec<PeerId> = keys.iter().map(|k| dp.peer_by_key(k).unwrap()).collect();
        let dsts: Vec<IpAddr> = (0..n)
            .map(|i| {
                format!("100.{}.{}.9", 64 + (i >> 8), i & 0xff)
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut i = 0;
        c.benchmark_group("peer_by_id (data path: session index)")
            .bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 7) % n;
                    black_box(dp.peer(black_box(ids[i])).is_some())
                })
            });
        c.benchmark_group("peer_by_destination (data path: route to peer)")
            .bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 7) % n;
                    black_box(dp.route(black_box(dsts[i])))
                })
            });
        c.benchmark_group("peer_by_key (handshakes, config)")
            .bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 7) % n;
                    black_box(dp.peer_by_key(black_box(&keys[i])))
                })
            });
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
}

criterion_group! {
    name = tables;
    config = config();
    targets = route_lookup, peer_lookup
}
criterion_main!(tables);
