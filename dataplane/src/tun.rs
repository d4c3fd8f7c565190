//! The TUN device, with TCP segmentation offload when the kernel allows it.
//!
//! With offload (`IFF_VNET_HDR` + TSO), one read returns a TCP super-packet of up to 64 KiB
//! that tun-rs splits into MTU-sized packets (checksums completed): one syscall for up to
//! [`TUN_SEGMENTS`] packets. Writes then carry a zeroed virtio-net header (no GSO, checksum
//! complete). Without offload it is one packet per read.
//!
//! Writes go through [`TunTx`]: the core decrypts straight into a queued buffer, and
//! [`TunIo::flush`] hands the whole queue to tun-rs' GRO pass, which coalesces consecutive
//! segments of a TCP (or UDP) flow into one super-packet with a virtio-net GSO header: one
//! `write` for up to 64 KiB instead of one per 1420-byte packet (wireguard-go's technique).

use std::io::{self, IoSlice};

use fleetboard_dataplane_core::{DataplaneConfig, MAX_PACKET};
use tun_rs::{AsyncDevice, DeviceBuilder, ExpandBuffer, GROTable};

/// Packets one offloaded read can split into (64 KiB / 1280-byte MTU = 52, rounded up).
pub const TUN_SEGMENTS: usize = 64;
/// The TUN's transmit queue (packets the kernel holds for us to read); TUN's default is 500.
pub const TX_QUEUE_LEN: u32 = 2000;
/// Length of the virtio-net header in front of every packet with offload.
const VNET_HDR_LEN: usize = 10;
/// A zeroed virtio-net header: no GSO, no checksum to complete.
const VNET_HDR_NONE: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Packets queued for the TUN before one GRO pass writes them (flushed when full and at the
/// end of every receive batch): 64 packets of 1420 bytes cover a 64 KiB super-packet with
/// room to spare, and each slot costs a 64 KiB buffer (4 MiB in all).
pub const TUN_TX_BATCH: usize = 64;
/// Room in front of every queued packet for the virtio-net header the GRO pass writes.
const TX_HEADROOM: usize = VNET_HDR_LEN;
/// Capacity of one queued buffer: a coalesced super-packet is at most 64 KiB (the GRO pass
/// asks for twice the headroom on top).
const TX_BUFFER_LEN: usize = 2 * TX_HEADROOM + 65_535;

/// One queued TUN packet: a fixed buffer (allocated once, never grown) and the length in use.
/// The GRO pass extends the first packet of a flow in place with the payload of the next.
struct TunBuf {
    data: Box<[u8]>,
    len: usize,
}

impl AsRef<[u8]> for TunBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for TunBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl ExpandBuffer for TunBuf {
    fn buf_capacity(&self) -> usize {
        self.data.len()
    }

    // tun-rs checks `buf_capacity` before growing a buffer, so both stay within `data`; the
    // `min` keeps a wrong caller from panicking the loop (it would get a short packet).
    fn buf_resize(&mut self, new_len: usize, value: u8) {
        let new_len = new_len.min(self.data.len());
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let end = (self.len + src.len()).min(self.data.len());
        self.data[self.len..end].copy_from_slice(&src[..end - self.len]);
        self.len = end;
    }
}

/// Packets waiting to be written to the TUN, allocated once.
pub struct TunTx {
    bufs: Vec<TunBuf>,
    queued: usize,
    gro: GROTable,
}

impl Default for TunTx {
    fn default() -> Self {
        Self {
            bufs: (0..TUN_TX_BATCH)
                .map(|_| TunBuf {
                    data: vec![0u8; TX_BUFFER_LEN].into_boxed_slice(),
                    len: 0,
                })
                .collect(),
            queued: 0,
            gro: GROTable::new(),
        }
    }
}

impl TunTx {
    /// Where the next packet goes (at least [`MAX_PACKET`] bytes); [`TunTx::commit`] queues it.
    #[inline]
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.bufs[self.queued].data[TX_HEADROOM..TX_HEADROOM + MAX_PACKET]
    }

    /// Queues the `len` bytes written at [`TunTx::slot`].
    #[inline]
    pub fn commit(&mut self, len: usize) {
        self.bufs[self.queued].len = TX_HEADROOM + len.min(MAX_PACKET);
        self.queued += 1;
    }

    /// True when no slot is left: flush before the next packet.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.queued == self.bufs.len()
    }

    /// Packets queued.
    #[inline]
    pub fn queued(&self) -> usize {
        self.queued
    }
}

/// The TUN device.
pub struct TunIo {
    dev: AsyncDevice,
    vnet: bool,
}

/// Read buffers, allocated once.
pub struct TunRx {
    original: Vec<u8>,
    segs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl Default for TunRx {
    fn default() -> Self {
        Self {
            original: vec![0u8; VNET_HDR_LEN + 65_535],
            segs: (0..TUN_SEGMENTS).map(|_| vec![0u8; MAX_PACKET]).collect(),
            sizes: vec![0; TUN_SEGMENTS],
        }
    }
}

impl TunRx {
    /// Packet `i` of the last read.
    #[inline]
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.segs[i][..self.sizes[i]]
    }

    /// Packet `i` of the last read, mutably (e.g. to clamp a TCP MSS in place).
    #[inline]
    pub fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.segs[i][..self.sizes[i]]
    }
}

impl TunIo {
    /// Creates the device with the configured name, MTU and addresses (brought up), with
    /// offload if the kernel supports it (set `FLEETBOARD_TUN_OFFLOAD=0` to turn it off).
    pub fn open(c: &DataplaneConfig) -> io::Result<Self> {
        let want = std::env::var("FLEETBOARD_TUN_OFFLOAD").map_or(true, |v| v != "0");
        let dev = match want.then(|| build(c, true)) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::info!(error = %e, "TUN offload unavailable, one packet per read");
                build(c, false)?
            }
            None => build(c, false)?,
        };
        // The kernel queues packets for us here while we encrypt a batch; TUN's default
        // of 500 tail-drops a TCP burst. Best effort: a short queue only costs retransmits.
        if let Err(e) = dev.set_tx_queue_len(TX_QUEUE_LEN) {
            tracing::debug!(error = %e, "TUN txqueuelen unchanged");
        }
        // Packets written to the TUN for pods on this node are forwarded to their veths.
        let index = dev.if_index()?;
        // Built down: no link-local address, then up (see crate::netlink). A kernel without
        // IPv6 refuses the setting; then there is nothing to turn off.
        if let Err(e) = crate::netlink::disable_ipv6_link_local(index) {
            tracing::debug!(error = %e, "TUN IPv6 address generation unchanged");
        }
        dev.enabled(true)
            .map_err(|e| io::Error::new(e.kind(), format!("bringing the TUN device up: {e}")))?;
        crate::netlink::enable_ipv4_forwarding(index).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("turning on IPv4 forwarding on the TUN device: {e}"),
            )
        })?;
        for r in &c.interface.routes {
            crate::netlink::route_through(index, *r).map_err(|e| {
                io::Error::new(e.kind(), format!("routing {r} through the TUN device: {e}"))
            })?;
        }
        let vnet = dev.tcp_gso();
        tracing::info!(
            offload = vnet,
            txqueuelen = TX_QUEUE_LEN,
            "TUN device ready"
        );
        Ok(Self { dev, vnet })
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        self.dev.readable().await
    }

    /// One read without waiting; `Ok(n)` = packets `0..n` in `rx`.
    pub fn try_recv(&self, rx: &mut TunRx) -> io::Result<usize> {
        self.dev
            .try_recv_multiple(&mut rx.original, &mut rx.segs, &mut rx.sizes, 0)
    }

    /// Writes the queued packets (coalesced by flow when offload is on) and empties the queue;
    /// `Ok(n)` = `n` packets were queued. An error means at least one write failed.
    pub async fn flush(&self, tx: &mut TunTx) -> io::Result<usize> {
        let n = tx.queued;
        if n == 0 {
            return Ok(0);
        }
        tx.queued = 0;
        self.dev
            .send_multiple(&mut tx.gro, &mut tx.bufs[..n], TX_HEADROOM)
            .await
            .map(|_| n)
    }

    /// Writes one IP packet without waiting (`WouldBlock` when the queue is full).
    pub fn try_send(&self, pkt: &[u8]) -> io::Result<()> {
        if self.vnet {
            let iov = [IoSlice::new(&VNET_HDR_NONE), IoSlice::new(pkt)];
            self.dev.try_send_vectored(&iov).map(|_| ())
        } else {
            self.dev.try_send(pkt).map(|_| ())
        }
    }

    /// Writes one IP packet.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<()> {
        if self.vnet {
            let iov = [IoSlice::new(&VNET_HDR_NONE), IoSlice::new(pkt)];
            match self.dev.try_send_vectored(&iov) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.dev.send_vectored(&iov).await.map(|_| ())
                }
                r => r.map(|_| ()),
            }
        } else {
            match self.dev.try_send(pkt) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.dev.send(pkt).await.map(|_| ())
                }
                r => r.map(|_| ()),
            }
        }
    }
}

fn build(c: &DataplaneConfig, offload: bool) -> io::Result<AsyncDevice> {
    let mut b = DeviceBuilder::new()
        .name(c.interface.name.clone())
        .mtu(c.interface.mtu)
        .offload(offload)
        .enable(false);
    for a in &c.interface.addresses {
        b = match a {
            ipnet::IpNet::V4(n) => b.ipv4(n.addr(), n.prefix_len(), None),
            ipnet::IpNet::V6(n) => b.ipv6(n.addr(), n.prefix_len()),
        };
    }
    b.build_async()
}
