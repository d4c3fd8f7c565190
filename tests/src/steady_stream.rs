//! A long-lived TCP stream between two network namespaces at a steady rate, watched for
//! gaps: what "established traffic keeps flowing" means, measured.
//!
//! The sender and the receiver are threads of the test process that entered the namespaces
//! (`setns` changes only the calling thread; a socket stays in the namespace it was made
//! in). The sender writes a [`CHUNK`] every [`EVERY`]; every byte follows a known pattern,
//! so the receiver checks the stream is intact as it reads, and records the longest time
//! between two reads.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::Netns;

/// Bytes per write.
pub const CHUNK: usize = 1024;
/// Time between writes (100 KiB/s: steady, and light on a busy 2-core machine).
pub const EVERY: Duration = Duration::from_millis(10);
/// How long the sender keeps trying to connect.
const CONNECT_FOR: Duration = Duration::from_secs(60);

/// The byte at stream offset `i`.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Runs the rest of the calling thread inside namespace `ns` (`/run/netns/<ns>`).
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns with a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(
        rc == 0,
        "setns into {ns}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    received: AtomicU64,
    /// (last read, longest gap between two reads).
    gaps: Mutex<Option<(Instant, Duration)>>,
}

/// What a finished stream measured.
#[derive(Debug, Clone, Copy)]
pub struct StreamReport {
    /// Bytes sent (all written to the socket).
    pub sent: u64,
    /// Bytes received, every one as the pattern says.
    pub received: u64,
    /// Longest time between two reads, from the first read to the last.
    pub longest_gap: Duration,
    /// How long it ran.
    pub ran: Duration,
}

/// A running stream (stopped and joined by [`SteadyStream::finish`]; dropped, it stops).
pub struct SteadyStream {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<anyhow::Result<u64>>>,
    receiver: Option<JoinHandle<anyhow::Result<u64>>>,
    started: Instant,
}

impl SteadyStream {
    /// Listens on `to_ip:port` inside `to`, connects from inside `from`, and starts sending.
    pub fn start(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let addr = SocketAddr::from((to_ip, port));
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let to_name = to.name().to_string();
        let rx_shared = shared.clone();
        let receiver = std::thread::Builder::new()
            .name("stream-rx".into())
            .spawn(move || {
                let listener = enter(&to_name).and_then(|()| {
                    TcpListener::bind(addr).with_context(|| format!("bind {addr} in {to_name}"))
                });
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let (conn, _) = listener.accept()?;
                receive(conn, &rx_shared)
            })?;
        ready_rx.recv().context("receiver thread ended")??;
        let from_name = from.name().to_string();
        let tx_shared = shared.clone();
        let sender = std::thread::Builder::new()
            .name("stream-tx".into())
            .spawn(move || {
                enter(&from_name)?;
                send(addr, &tx_shared)
            })?;
        Ok(Self {
            shared,
            sender: Some(sender),
            receiver: Some(receiver),
            started: Instant::now(),
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// The longest gap so far, counting the one still open (time since the last read).
    pub fn longest_gap(&self) -> Duration {
        match *self.shared.gaps.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((last, longest)) => longest.max(last.elapsed()),
            None => Duration::ZERO,
        }
    }

    /// True while both ends run (no error, no end of stream).
    pub fn running(&self) -> bool {
        self.sender.as_ref().is_some_and(|h| !h.is_finished())
            && self.receiver.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops sending, waits until the receiver has read everything, and reports.
    pub fn finish(mut self) -> anyhow::Result<StreamReport> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let sent = join(self.sender.take(), "sender")?;
        let received = join(self.receiver.take(), "receiver")?;
        anyhow::ensure!(sent == received, "sent {sent} bytes, received {received}");
        let longest_gap = self
            .shared
            .gaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, g)| g)
            .unwrap_or_default();
        Ok(StreamReport {
            sent,
            received,
            longest_gap,
            ran: self.started.elapsed(),
        })
    }
}

impl Drop for SteadyStream {
    fn drop(&mut self) {
        // The threads end at the next write (sender) and the end of stream (receiver); a
        // receiver still blocked in accept stays until the process ends.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn join(h: Option<JoinHandle<anyhow::Result<u64>>>, what: &str) -> anyhow::Result<u64> {
    h.context("already joined")?
        .join()
        .map_err(|_| anyhow::anyhow!("stream {what} panicked"))?
        .with_context(|| format!("stream {what}"))
}

fn send(addr: SocketAddr, shared: &Shared) -> anyhow::Result<u64> {
    let began = Instant::now();
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(c) => break c,
            Err(_) if began.elapsed() < CONNECT_FOR => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("connect {addr}")),
        }
    };
    conn.set_nodelay(true)?;
    let mut sent: u64 = 0;
    let mut buf = [0u8; CHUNK];
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        for (k, b) in buf.iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        conn.write_all(&buf)
            .with_context(|| format!("write at byte {sent}"))?;
        sent += CHUNK as u64;
        next += EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            // Behind (a blocked write): do not burst to catch up.
            next = Instant::now();
        }
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(sent)
}

fn receive(mut conn: TcpStream, shared: &Shared) -> anyhow::Result<u64> {
    let mut got: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn
            .read(&mut buf)
            .with_context(|| format!("read at byte {got}"))?;
        if n == 0 {
            return Ok(got);
        }
        let now = Instant::now();
        {
            let mut g = shared.gaps.lock().unwrap_or_else(|p| p.into_inner());
            *g = Some(match *g {
                Some((last, longest)) => (now, longest.max(now - last)),
                None => (now, Duration::ZERO),
            });
        }
        if let Some(k) = buf[..n]
            .iter()
            .enumerate()
            .position(|(k, b)| *b != pattern(got + k as u64))
        {
            anyhow::bail!("byte {} changed in transit", got + k as u64);
        }
        got += n as u64;
        shared.received.store(got, Ordering::Relaxed);
    }
}
