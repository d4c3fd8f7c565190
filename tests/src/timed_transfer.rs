//! One TCP transfer between two network namespaces, timed on the receiving side: goodput and
//! the longest time the receiver waited for the next bytes (a stall).
//!
//! Sender and receiver are threads of the test process that entered the namespaces (`setns`
//! changes only the calling thread; a socket stays in the namespace it was made in). The
//! bytes are a seeded pseudo-random stream the receiver regenerates and compares, so no
//! files and no checksum tools are needed and every byte is checked.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Chunk the sender writes and the receiver reads.
const CHUNK: usize = 64 << 10;

/// What the receiver saw.
#[derive(Clone, Copy, Debug)]
pub struct TransferReport {
    /// Bytes received (all compared with what was sent).
    pub bytes: usize,
    /// From accepting the connection to the last byte.
    pub elapsed: Duration,
    /// Longest wait for the next bytes, from the accept on (includes the wait for the first).
    pub max_stall: Duration,
    /// When the longest wait began, from the accept.
    pub stall_at: Duration,
    /// Bytes received before the longest wait.
    pub stall_after_bytes: usize,
    /// The sender's TCP state once the receiver closed (`TCP_INFO`).
    pub sender: SenderTcp,
}

/// What the sender's kernel says about the connection at its end (`TCP_INFO`): enough to
/// tell retransmission timeouts from fast recovery and to see the RTT TCP measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderTcp {
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// RTT variation, microseconds.
    pub rttvar_us: u32,
    /// Reordering degree TCP learnt (segments).
    pub reordering: u32,
    /// Maximum segment size in use.
    pub snd_mss: u32,
}

impl std::fmt::Display for SenderTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "retrans {} srtt {:.1} ms rttvar {:.1} ms reordering {} mss {}",
            self.total_retrans,
            f64::from(self.rtt_us) / 1000.0,
            f64::from(self.rttvar_us) / 1000.0,
            self.reordering,
            self.snd_mss
        )
    }
}

/// `TCP_INFO` of `conn` (zeros when the kernel refuses).
fn sender_tcp(conn: &TcpStream) -> SenderTcp {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return SenderTcp::default();
    }
    SenderTcp {
        total_retrans: ti.tcpi_total_retrans,
        rtt_us: ti.tcpi_rtt,
        rttvar_us: ti.tcpi_rttvar,
        reordering: ti.tcpi_reordering,
        snd_mss: ti.tcpi_snd_mss,
    }
}

impl TransferReport {
    /// Goodput in Mbit/s (application bytes).
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Sends `len` bytes over TCP from namespace `from_ns` to `to_ip` in namespace `to_ns`
/// (`ip netns` names); fails when the bytes differ, the connection breaks or the receiver
/// waits more than `hang` for the next bytes.
pub fn timed_transfer(
    from_ns: &str,
    to_ns: &str,
    to_ip: IpAddr,
    len: usize,
    seed: u64,
    hang: Duration,
) -> anyhow::Result<TransferReport> {
    let listener = in_netns(to_ns, || TcpListener::bind(SocketAddr::new(to_ip, 0)))
        .with_context(|| format!("listening on {to_ip} in {to_ns}"))?;
    let addr = listener.local_addr()?;
    std::thread::scope(|s| {
        let sender = s.spawn(|| -> anyhow::Result<SenderTcp> {
            let mut conn = in_netns(from_ns, || TcpStream::connect_timeout(&addr, hang))
                .with_context(|| format!("connecting to {addr} from {from_ns}"))?;
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut buf = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK);
                rng.fill(&mut buf[..n]);
                conn.write_all(&buf[..n]).context("sending")?;
                left -= n;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            // Wait for the receiver to close, so the sender outlives the transfer.
            while let Err(e) = conn.read(&mut [0u8; 1]) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            Ok(sender_tcp(&conn))
        });
        let received = receive(&listener, len, seed, hang);
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))?;
        let mut report = received?;
        report.sender = sent?;
        Ok(report)
    })
}

fn receive(
    listener: &TcpListener,
    len: usize,
    seed: u64,
    hang: Duration,
) -> anyhow::Result<TransferReport> {
    listener.set_nonblocking(false)?;
    let (mut conn, _) = accept_within(listener, hang)?;
    conn.set_read_timeout(Some(hang))?;
    let start = Instant::now();
    let mut last = start;
    let mut max_stall = Duration::ZERO;
    let (mut stall_at, mut stall_after_bytes) = (Duration::ZERO, 0);
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut buf, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut got = 0usize;
    let (mut want_pos, mut want_len) = (0usize, 0usize);
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A read with a timeout (SO_RCVTIMEO) is never restarted after a signal handler
            // ran (signal(7)), and other tests in this process install some (SIGCHLD for
            // their children): read again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                bail!("no byte for {hang:?} after {got} of {len} bytes: the connection hangs")
            }
            Err(e) => return Err(e).context(format!("receiving after {got} bytes")),
        };
        let now = Instant::now();
        if now - last > max_stall {
            max_stall = now - last;
            stall_at = last - start;
            stall_after_bytes = got;
        }
        last = now;
        if got + n > len {
            bail!("received more than the {len} bytes sent");
        }
        // The expected stream, regenerated in the sender's chunks.
        let mut checked = 0;
        while checked < n {
            let pos = got + checked;
            if pos == want_pos + want_len {
                want_pos = pos;
                want_len = (len - pos).min(CHUNK);
                rng.fill(&mut want[..want_len]);
            }
            let at = pos - want_pos;
            let take = (n - checked).min(want_len - at);
            if buf[checked..checked + take] != want[at..at + take] {
                bail!("bytes {pos}..{} differ from what was sent", pos + take);
            }
            checked += take;
        }
        got += n;
    }
    if got != len {
        bail!("connection closed after {got} of {len} bytes");
    }
    Ok(TransferReport {
        bytes: got,
        elapsed: last - start,
        max_stall,
        stall_at,
        stall_after_bytes,
        sender: SenderTcp::default(),
    })
}

fn accept_within(
    listener: &TcpListener,
    hang: Duration,
) -> anyhow::Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let end = Instant::now() + hang;
    loop {
        match listener.accept() {
            Ok((c, a)) => {
                c.set_nonblocking(false)?;
                return Ok((c, a));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > end {
                    bail!("no connection within {hang:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accepting"),
        }
    }
}

/// Runs `f` on a thread inside network namespace `netns` (`/run/netns/<netns>`).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with a valid namespace fd affects only this scoped thread, which
            // only makes a socket and ends; the socket stays in the namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
