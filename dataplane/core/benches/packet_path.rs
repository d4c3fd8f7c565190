//! Cost per packet of the data path, 1,400-byte IP packets: encrypt (`handle_tun` to a wg
//! peer), decrypt (`handle_udp` of a data message, delivered to the TUN), and what the hub does
//! per packet of the end-to-end relay (`handle_udp` of a relay message: forwarded unchanged).
//! `cargo bench -p fleetboard-dataplane-core --bench packet_path`.

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use common::{A, PACKET, pair, relay_hub, relay_message};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fleetboard_dataplane_core::{Action, MAX_PACKET};

fn data_path(c: &mut Criterion) {
    let (mut a, mut b) = pair();
    let pkt = common::a_to_b();
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
    let mut hub = relay_hub();
    let msg = relay_message();
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
