//! One WireGuard session's keys ([`TransportKeys`]) shared by 1 and then 2 threads: each thread
//! seals (then, separately, opens) 1,400-byte packets in batches, all sealing threads drawing
//! from the session's one atomic send counter. This is the case a multi-core dataplane must
//! parallelise (two gateways exchange all their traffic as one UDP flow, so one session).
//! Sealing is measured twice: one atomic add per packet (`seal_in_place`) and one per batch
//! (`reserve`). A control row runs 2 threads on 2 separate sessions: the gap between it and
//! the shared row is what sharing the counter's cache line costs.
//!
//! `cargo bench --offline -p fleetboard-dataplane-core --bench shared_session` prints a markdown
//! table (packets/s, Gbit/s of plaintext, speed-up over 1 thread) and the load average, since
//! a speed-up on a shared machine means little without it; for the same reason it also prints
//! packets per CPU-second of the workers (from `/proc/thread-self/schedstat`): if 2 threads on
//! one session keep 1 thread's figure, sharing costs nothing per packet and the wall-clock
//! speed-up is bounded only by the free cores. `SHARED_SESSION_SECS` sets the seconds per row
//! (default 3).

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetboard_dataplane_core::wg::TransportKeys;
use fleetboard_dataplane_core::wg::transport::{DATA_HEADER_LEN, DATA_OVERHEAD};

/// Plaintext bytes per packet: a full-size inner packet under a 1,500-byte underlay MTU.
const PACKET: usize = 1400;
/// Packets per batch, as a worker fed by recvmmsg/GRO would get them.
const BATCH: usize = 64;
/// Distinct sealed messages the openers cycle through (about 1.4 MB: past L2, like real
/// traffic arriving in fresh buffers).
const CORPUS: usize = 1024;

#[derive(Clone, Copy)]
enum Work {
    /// `seal_in_place`: one atomic add on the shared counter per packet.
    Seal,
    /// `reserve(BATCH)` then the batch's `seal_in_place`: one atomic add per batch.
    SealBatch,
    /// `open` (one copy into the destination, decrypted there).
    Open,
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`), 0 if unknown.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `threads` workers for `run`, worker `i` on `sessions[i % sessions.len()]`; returns
/// the packets all of them processed per second of wall time and per second of their CPU time
/// (which a busy machine does not distort: it shows what sharing costs per packet).
fn measure(work: Work, sessions: &[TransportKeys], threads: usize, run: Duration) -> (f64, f64) {
    let peer = TransportKeys::new(&[2; 32], &[1; 32], 2, 1);
    let corpus: Vec<Vec<u8>> = (0..CORPUS)
        .map(|i| {
            let mut m = vec![i as u8; PACKET + DATA_OVERHEAD];
            peer.seal_in_place(&mut m, PACKET).unwrap();
            m
        })
        .collect();
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (keys, corpus, stop, start) =
                    (&sessions[i % sessions.len()], &corpus, &stop, &start);
                s.spawn(move || {
                    let mut bufs = vec![vec![0u8; PACKET + DATA_OVERHEAD]; BATCH];
                    let mut out = vec![0u8; PACKET];
                    let mut done = 0u64;
                    let mut next = 0;
                    start.wait();
                    let cpu0 = thread_cpu_ns();
                    while !stop.load(Ordering::Relaxed) {
                        match work {
                            Work::Seal => {
                                for b in &mut bufs {
                                    b[DATA_HEADER_LEN] = done as u8;
                                    black_box(keys.seal_in_place(b, PACKET).unwrap());
                                }
                            }
                            Work::SealBatch => {
                                let mut batch = keys.reserve(BATCH as u64);
                                for b in &mut bufs {
                                    b[DATA_HEADER_LEN] = done as u8;
                                    black_box(batch.seal_in_place(b, PACKET).unwrap());
                                }
                            }
                            Work::Open => {
                                for _ in 0..BATCH {
                                    black_box(keys.open(&corpus[next], &mut out).unwrap());
                                    next = (next + 1) % CORPUS;
                                }
                            }
                        }
                        done += BATCH as u64;
                    }
                    (done, thread_cpu_ns() - cpu0)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        // A timed run, not a wait for a condition: the workers count what they did meanwhile.
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
        let (mut total, mut cpu_ns) = (0, 0);
        for w in workers {
            let (done, cpu) = w.join().unwrap();
            total += done;
            cpu_ns += cpu;
        }
        let wall = t0.elapsed().as_secs_f64();
        (
            total as f64 / wall,
            total as f64 / (cpu_ns.max(1) as f64 / 1e9),
        )
    })
}

fn main() {
    let secs = std::env::var("SHARED_SESSION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(secs);
    let session = || TransportKeys::new(&[1; 32], &[2; 32], 1, 2);
    let shared = [session()];
    let separate = [session(), session()];
    // Warm up caches, frequency and the allocator before the first measured row.
    measure(Work::Seal, &shared, 1, Duration::from_millis(500));

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n{cores} CPUs available; load average before: {}",
        load.trim()
    );
    println!("{PACKET}-byte packets, batches of {BATCH}, {secs} s per row\n");
    println!(
        "| operation | threads | sessions | packets/s | Gbit/s | speed-up | packets/CPU-s | per-CPU vs 1 thread |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (work, name) in [
        (Work::Seal, "seal, counter per packet"),
        (Work::SealBatch, "seal, counters per batch"),
        (Work::Open, "open"),
    ] {
        let one = measure(work, &shared, 1, run);
        let rows = [
            (1, 1, one),
            (2, 1, measure(work, &shared, 2, run)),
            (2, 2, measure(work, &separate, 2, run)),
        ];
        for (threads, sessions, (pps, per_cpu)) in rows {
            let gbps = pps * (PACKET * 8) as f64 / 1e9;
            println!(
                "| {name} | {threads} | {sessions} | {pps:.0} | {gbps:.2} | {:.2}x | {per_cpu:.0} | {:.2}x |",
                pps / one.0,
                per_cpu / one.1
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average after: {}", load.trim());
}
