//! The UDP socket with batching: `recvmmsg` + GRO on receive and GSO on send (quinn-udp),
//! falling back to one datagram per call when the kernel refuses GSO (EIO/EINVAL).
//!
//! Sending goes through [`TxBatch`]: the core encrypts straight into the batch buffer;
//! consecutive datagrams to the same destination with the same size (a TCP bulk flow) leave
//! in one `sendmsg` with `UDP_SEGMENT`.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

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
/// Socket buffers: room for a few batches in flight at 10 Gbit/s (capped by rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

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
        let _ = state.set_recv_buffer_size((&sock).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&sock).into(), SOCKET_BUFFER);
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
    /// The datagrams of buffer `i` (GRO may have put several of `stride` bytes in one).
    pub fn datagrams(&self, i: usize) -> (SocketAddr, std::slice::Chunks<'_, u8>) {
        let m = &self.meta[i];
        let from = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
        (from, self.bufs[i][..m.len].chunks(m.stride.max(1)))
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
        let seg = (self.segs > 1).then_some(self.seg);
        if let Err(e) = udp.send(dst, &self.buf[..self.len], seg).await {
            tracing::debug!(error = %e, %dst, "udp send");
            for _ in 0..self.segs {
                core.count_drop(self.peers[0], DropReason::SendFailed);
            }
        }
        self.len = 0;
        self.segs = 0;
        self.short = false;
        self.dst = None;
    }
}
