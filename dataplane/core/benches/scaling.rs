//! How the core's per-packet work scales over threads: each thread runs its own state (its
//! own pair of nodes with their own WireGuard session, its own relay hub), as a worker of a
//! shared-nothing multi-core dataplane would. For 1 and 2 threads (or the counts given):
//! encrypt (`handle_tun`), decrypt (`handle_udp` to the TUN) and the hub's relay forward,
//! 1,400-byte packets; prints packets/s, Gbit/s and the speed-up over one thread.
//!
//! `cargo bench -p fleetboard-dataplane-core --bench scaling [-- SECONDS [THREADS...]]`
//! (default 3 s per case, threads 1 2). perf/RESULTS.md keeps the figures.

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{A, PACKET, pair, relay_hub, relay_message};
use fleetboard_dataplane_core::{Action, MAX_PACKET};

/// Ciphertexts made ahead of each timed decrypt round (made untimed, then decrypted in order,
/// so the replay window accepts every one).
const DECRYPT_ROUND: usize = 2048;

#[derive(Clone, Copy, Debug)]
enum Work {
    Encrypt,
    Decrypt,
    RelayForward,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Encrypt => "encrypt (handle_tun)",
            Work::Decrypt => "decrypt (handle_udp)",
            Work::RelayForward => "relay forward (hub)",
        }
    }
}

/// Runs `work` for `secs` on one thread's own state; returns (packets, busy time).
fn worker(work: Work, secs: Duration, start: &Barrier) -> (u64, Duration) {
    let (mut a, mut b) = pair();
    let mut hub = relay_hub();
    let msg = relay_message();
    let pkt = common::a_to_b();
    let from: SocketAddr = A.parse().unwrap();
    let mut out = vec![0u8; MAX_PACKET];
    let mut ready: Vec<Vec<u8>> = (0..DECRYPT_ROUND).map(|_| vec![0u8; MAX_PACKET]).collect();
    let mut lens = vec![0usize; DECRYPT_ROUND];
    let now = Instant::now();
    let (mut packets, mut busy) = (0u64, Duration::ZERO);
    start.wait();
    let began = Instant::now();
    while began.elapsed() < secs {
        match work {
            Work::Encrypt | Work::RelayForward => {
                let t = Instant::now();
                for _ in 0..1024 {
                    let act = match work {
                        Work::Encrypt => a.handle_tun(now, black_box(&pkt), &mut out),
                        _ => hub.handle_udp(now, from, black_box(&msg), &mut out),
                    };
                    assert!(
                        matches!(act, Action::SendUdp(_) | Action::Forward(_)),
                        "{act:?}"
                    );
                }
                busy += t.elapsed();
                packets += 1024;
            }
            Work::Decrypt => {
                for (buf, len) in ready.iter_mut().zip(lens.iter_mut()) {
                    match a.handle_tun(now, &pkt, buf) {
                        Action::SendUdp(t) => *len = t.len,
                        other => panic!("{other:?}"),
                    }
                }
                let t = Instant::now();
                for (buf, len) in ready.iter().zip(&lens) {
                    let act = b.handle_udp(now, from, black_box(&buf[..*len]), &mut out);
                    assert!(matches!(act, Action::WriteTun { .. }), "{act:?}");
                }
                busy += t.elapsed();
                packets += DECRYPT_ROUND as u64;
            }
        }
    }
    (packets, busy)
}

/// Packets per second of `threads` workers together (each rate taken over its busy time).
fn rate(work: Work, threads: usize, secs: Duration) -> f64 {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| worker(work, secs, &start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (packets, busy) = h.join().expect("worker panicked");
                packets as f64 / busy.as_secs_f64()
            })
            .sum()
    })
}

fn main() {
    // `cargo bench` passes `--bench`; figures are the arguments that parse.
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let secs = Duration::from_secs_f64(args.first().copied().unwrap_or(3.0));
    let threads: Vec<usize> = match args.get(1..) {
        Some(t) if !t.is_empty() => t.iter().map(|&n| n as usize).collect(),
        _ => vec![1, 2],
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "scaling: {PACKET}-byte packets, {:.1} s per case, {cores} cores available",
        secs.as_secs_f64()
    );
    println!("| work | threads | Mpackets/s | Gbit/s | speed-up over 1 thread |");
    println!("|---|---|---|---|---|");
    for work in [Work::Encrypt, Work::Decrypt, Work::RelayForward] {
        let mut one = None;
        for &n in &threads {
            let r = rate(work, n, secs);
            let base = *one.get_or_insert(r / n as f64);
            println!(
                "| {} | {n} | {:.3} | {:.2} | {:.2}x |",
                work.name(),
                r / 1e6,
                r * PACKET as f64 * 8.0 / 1e9,
                r / base
            );
        }
    }
}
