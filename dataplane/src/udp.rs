//! The UDP socket with batching: `recvmmsg` + GRO on receive and GSO on send (quinn-udp),
//! falling back to one datagram per call when the kernel refuses GSO (EIO/EINVAL).
//!
//! Sending goes through [`TxBatch`]: the core encrypts straight into the batch buffer;
//! consecutive datagrams to the same destination with the same size (a TCP bulk flow) leave
//! in one `sendmsg` with `UDP_SEGMENT`.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use fleetboard_dataplane_core::{Dataplane, DropReason, MAX_PACKET, PeerId};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffers per `recvmmsg` call (quinn-udp's own batch size on Linux is 32).
pub const RX_BUFFERS: usize = quinn_udp::BATCH_SIZE;
/// Size of one receive buffer: a GRO super-datagram is at most 64 KiB.
const RX_BUFFER_LEN: usize = 64 * 1024;
/// Largest GSO send: the kernel caps one UDP send at 64 KiB minus headers.
const GSO_MAX_BYTES: usize = 65_000;
/// Segments per GSO send (kernel limit UDP_MAX_SEGMENTS is 64).
const GSO_MAX_SEGMENTS: usize = 64;
/// Socket buffers: 8 MiB holds ~5,900 full-size datagrams, ~7 ms at 10 Gbit/s, so a
/// receive burst that arrives while the loop encrypts the other direction is not dropped
/// (UdpRcvbufErrors). Set with `SO_*BUFFORCE` (we run with CAP_NET_ADMIN), because the
/// default `net.core.rmem_max` (208 KiB, not per namespace) silently caps `SO_RCVBUF`.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// GSO sends the kernel refused (after which GSO stays off for that socket): the
/// `fleetboard_udp_gso_fallbacks_total` metric. Process-wide; touched only on that error.
pub static GSO_FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// The dataplane's UDP socket.
pub struct UdpIo {
    sock: UdpSocket,
    state: UdpSocketState,
    v6: bool,
}

impl UdpIo {
    /// Wraps a bound, non-blocking socket.
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        let v6 = sock.local_addr()?.is_ipv6();
        let state = UdpSocketState::new((&sock).into())?;
        if force_buffer(&sock, libc::SO_RCVBUFFORCE).is_err() {
            let _ = state.set_recv_buffer_size((&sock).into(), SOCKET_BUFFER);
        }
        if force_buffer(&sock, libc::SO_SNDBUFFORCE).is_err() {
            let _ = state.set_send_buffer_size((&sock).into(), SOCKET_BUFFER);
        }
        tracing::debug!(
            recv = ?state.recv_buffer_size((&sock).into()),
            send = ?state.send_buffer_size((&sock).into()),
            "udp socket buffers"
        );
        Ok(Self {
            sock: UdpSocket::from_std(sock)?,
            state,
            v6,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits until a receive may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// Receives a batch into `rx` without waiting; `Ok(n)` = `n` buffers filled.
    pub fn try_recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let mut iovs: [IoSliceMut<'_>; RX_BUFFERS] = {
            let mut it = rx.bufs.iter_mut();
            std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_BUFFERS buffers")))
        };
        self.sock.try_io(Interest::READABLE, || {
            self.state
                .recv((&self.sock).into(), &mut iovs, &mut rx.meta)
        })
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(GSO_MAX_SEGMENTS)
    }

    async fn send(
        &self,
        dst: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let destination = match (self.v6, dst.ip()) {
            (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), dst.port()),
            _ => dst,
        };
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            match self.sock.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), &t)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable().await?,
                r => return r,
            }
        }
    }
}

/// Sets a socket buffer to [`SOCKET_BUFFER`] past the `net.core.*mem_max` cap
/// (`SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, needs CAP_NET_ADMIN).
pub(crate) fn force_buffer(sock: &impl std::os::fd::AsRawFd, opt: libc::c_int) -> io::Result<()> {
    let v = SOCKET_BUFFER as libc::c_int;
    // SAFETY: `sock` is an open socket for the duration of the call; the option value is a
    // c_int on our stack and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers and their metadata, allocated once.
pub struct RxBatch {
    bufs: Vec<Box<[u8]>>,
    meta: Vec<RecvMeta>,
}

impl Default for RxBatch {
    fn default() -> Self {
        Self {
            bufs: (0..RX_BUFFERS)
                .map(|_| vec![0u8; RX_BUFFER_LEN].into_boxed_slice())
                .collect(),
            meta: vec![RecvMeta::default(); RX_BUFFERS],
        }
    }
}

impl RxBatch {
    /// Buffer `i`: its sender, its bytes and the size of each datagram in it (GRO may have
    /// put several of `stride` bytes in one, the last one possibly shorter).
    pub fn buffer(&self, i: usize) -> (SocketAddr, &[u8], usize) {
        let m = &self.meta[i];
        let from = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
        (from, &self.bufs[i][..m.len], m.stride.max(1))
    }
}

/// Datagrams waiting to leave in one GSO send.
pub struct TxBatch {
    buf: Box<[u8]>,
    len: usize,
    seg: usize,
    segs: usize,
    short: bool,
    dst: Option<SocketAddr>,
    peers: [Option<PeerId>; 1],
}

impl Default for TxBatch {
    fn default() -> Self {
        Self {
            buf: vec![0u8; GSO_MAX_BYTES + MAX_PACKET].into_boxed_slice(),
            len: 0,
            seg: 0,
            segs: 0,
            short: false,
            dst: None,
            peers: [None],
        }
    }
}

impl TxBatch {
    /// Where the core writes the next datagram (at least [`MAX_PACKET`] bytes).
    #[inline]
    pub fn out(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..self.len + MAX_PACKET]
    }

    /// The last `out()` now holds a datagram of `n` bytes for `dst`: keep it in the batch,
    /// sending what was there first if it cannot join.
    pub async fn push(
        &mut self,
        udp: &UdpIo,
        core: &mut Dataplane,
        dst: SocketAddr,
        peer: Option<PeerId>,
        n: usize,
    ) {
        let joins = self.segs > 0
            && self.dst == Some(dst)
            && n <= self.seg
            && !self.short
            && self.segs < udp.max_segments()
            && self.len + n <= GSO_MAX_BYTES;
        if self.segs > 0 && !joins {
            let start = self.len;
            self.flush(udp, core).await;
            self.buf.copy_within(start..start + n, 0);
        }
        if self.segs == 0 {
            self.dst = Some(dst);
            self.peers = [peer];
            self.seg = n;
            self.short = false;
        } else if n < self.seg {
            self.short = true;
        }
        self.len += n;
        self.segs += 1;
        if self.segs >= udp.max_segments() || self.len + MAX_PACKET > GSO_MAX_BYTES {
            self.flush(udp, core).await;
        }
    }

    /// Sends what is batched.
    pub async fn flush(&mut self, udp: &UdpIo, core: &mut Dataplane) {
        if self.segs == 0 {
            return;
        }
        let dst = self.dst.expect("batch has a destination");
        send_segments(
            udp,
            core,
            dst,
            self.peers[0],
            &self.buf[..self.len],
            self.seg,
        )
        .await;
        self.len = 0;
        self.segs = 0;
        self.short = false;
        self.dst = None;
    }
}

/// Sends `contents`, datagrams of `seg` bytes (the last may be shorter) to `dst` in one GSO
/// send where it can. The relay forwards a received GRO batch with it straight from the
/// receive buffer, without copying it.
pub async fn send_segments(
    udp: &UdpIo,
    core: &mut Dataplane,
    dst: SocketAddr,
    peer: Option<PeerId>,
    contents: &[u8],
    seg: usize,
) {
    let seg = seg.max(1);
    let mut rest = contents;
    while !rest.is_empty() {
        // At most one GSO send's worth at a time (a GRO batch may hold more segments than
        // this socket's GSO limit, which also drops to 1 after a fallback).
        let (part, tail) = rest.split_at(rest.len().min(seg * udp.max_segments()));
        rest = tail;
        let segs = part.len().div_ceil(seg);
        let gso = (segs > 1).then_some(seg);
        match udp.send(dst, part, gso).await {
            Ok(()) => {}
            // The kernel refused GSO (EIO/EINVAL: a device without it) and quinn-udp turned
            // it off for the socket: count it and send these one datagram at a time.
            Err(e) if gso.is_some() && udp.max_segments() == 1 => {
                GSO_FALLBACKS.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, %dst, "udp GSO refused; sending without it");
                for d in part.chunks(seg) {
                    if udp.send(dst, d, None).await.is_err() {
                        core.count_drop(peer, DropReason::SendFailed);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %dst, "udp send");
                for _ in 0..segs {
                    core.count_drop(peer, DropReason::SendFailed);
                }
            }
        }
    }
}
