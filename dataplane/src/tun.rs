//! The TUN device, with TCP segmentation offload when the kernel allows it.
//!
//! With offload (`IFF_VNET_HDR` + TSO), one read returns a TCP super-packet of up to 64 KiB
//! that tun-rs splits into MTU-sized packets (checksums completed): one syscall for up to
//! [`TUN_SEGMENTS`] packets. Writes then carry a zeroed virtio-net header (no GSO, checksum
//! complete). Without offload it is one packet per read.

use std::io::{self, IoSlice};

use fleetboard_dataplane_core::{DataplaneConfig, MAX_PACKET};
use tun_rs::{AsyncDevice, DeviceBuilder};

/// Packets one offloaded read can split into (64 KiB / 1280-byte MTU = 52, rounded up).
pub const TUN_SEGMENTS: usize = 64;
/// Length of the virtio-net header in front of every packet with offload.
const VNET_HDR_LEN: usize = 10;
/// A zeroed virtio-net header: no GSO, no checksum to complete.
const VNET_HDR_NONE: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

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
        let vnet = dev.tcp_gso();
        tracing::info!(offload = vnet, "TUN device ready");
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
        .offload(offload);
    for a in &c.interface.addresses {
        b = match a {
            ipnet::IpNet::V4(n) => b.ipv4(n.addr(), n.prefix_len(), None),
            ipnet::IpNet::V6(n) => b.ipv6(n.addr(), n.prefix_len()),
        };
    }
    b.build_async()
}
