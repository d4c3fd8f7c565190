//! A smoltcp [`Device`] made of two queues: packets for the probe interface are pushed in by
//! the core, packets it sends are popped by the core and routed like TUN packets.

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Packets waiting to enter the interface beyond this are dropped (a flood must not grow
/// memory).
pub const MAX_QUEUED: usize = 256;
/// Packets the interface sent waiting for the core beyond this are dropped: a round of
/// probes to this many peers fits.
pub const MAX_QUEUED_TX: usize = 8192;

/// The queues.
pub struct QueueDevice {
    /// Into the interface.
    pub rx: VecDeque<Vec<u8>>,
    /// Out of the interface.
    pub tx: VecDeque<Vec<u8>>,
    /// Largest packet either way.
    pub mtu: usize,
    /// Packets the interface sent while `tx` was full.
    pub tx_dropped: u64,
}

impl QueueDevice {
    /// Empty queues for packets up to `mtu` bytes.
    pub fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            tx_dropped: 0,
        }
    }
}

/// A received packet handed to the interface.
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// Room for one packet the interface sends.
pub struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    dropped: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.tx.len() < MAX_QUEUED_TX {
            self.tx.push_back(buf);
        } else {
            *self.dropped += 1;
        }
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            RxToken(packet),
            TxToken {
                tx: &mut self.tx,
                dropped: &mut self.tx_dropped,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
