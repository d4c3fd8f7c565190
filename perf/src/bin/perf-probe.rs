//! UDP round-trip probe: `perf-probe server --listen ADDR` echoes datagrams;
//! `perf-probe client --to ADDR` sends one probe at a time (sequence number + send time),
//! waits for its echo and prints `{"sent","received","p50_us","p99_us","mean_us"}` as JSON.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetboard_perf::stats::quantile;

#[derive(Parser)]
#[command(about = "UDP echo round-trip probe (perf/run.sh)")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every datagram back to its sender.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Measure round trips to a server.
    Client {
        /// The server.
        #[arg(long)]
        to: SocketAddr,
        /// Probes to send.
        #[arg(long, default_value_t = 2000)]
        count: u32,
        /// Pause between a reply and the next probe, microseconds.
        #[arg(long, default_value_t = 200)]
        interval_us: u64,
        /// Probe payload size in bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Probes sent first and not counted (ARP, handshakes, caches).
        #[arg(long, default_value_t = 50)]
        warmup: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Server { listen } => server(listen),
        Cmd::Client {
            to,
            count,
            interval_us,
            size,
            warmup,
        } => client(to, count, interval_us, size.max(16), warmup),
    }
}

fn server(listen: SocketAddr) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn client(
    to: SocketAddr,
    count: u32,
    interval_us: u64,
    size: usize,
    warmup: u32,
) -> anyhow::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let base = Instant::now();
    let mut out = vec![0u8; size];
    let mut buf = vec![0u8; size + 64];
    let mut rtts = Vec::with_capacity(count as usize);
    let mut sent = 0u32;
    for seq in 0..(warmup + count) {
        let t0 = base.elapsed().as_nanos() as u64;
        out[..4].copy_from_slice(&seq.to_be_bytes());
        out[8..16].copy_from_slice(&t0.to_be_bytes());
        sock.send(&out)?;
        if seq >= warmup {
            sent += 1;
        }
        // Wait for this probe's echo; older (late) echoes are skipped.
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 16 && buf[..4] == seq.to_be_bytes() => {
                    let t = u64::from_be_bytes(buf[8..16].try_into()?);
                    if seq >= warmup {
                        let now = base.elapsed().as_nanos() as u64;
                        rtts.push((now - t) as f64 / 1000.0);
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => break, // timeout: lost
            }
        }
        std::thread::sleep(Duration::from_micros(interval_us));
    }
    rtts.sort_by(f64::total_cmp);
    let mean = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    let j = serde_json::json!({
        "sent": sent,
        "received": rtts.len(),
        "p50_us": quantile(&rtts, 0.5),
        "p99_us": quantile(&rtts, 0.99),
        "mean_us": mean,
    });
    println!("{j}");
    Ok(())
}
