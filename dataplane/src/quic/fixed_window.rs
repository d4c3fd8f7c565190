//! `FLEETBOARD_QUIC_CC=none`: no congestion control of the tunnel's datagrams.
//!
//! The tunnel carries IP packets of flows that run their own congestion control (TCP, QUIC),
//! as WireGuard does. A second controller on the outer connection (Cubic, BBR) treats every
//! random loss and every reordered packet of the underlay as congestion, shrinks its window,
//! and then drops or queues the inner flows' packets in the datagram send buffer: the inner
//! TCP sees more loss than the underlay had and a queue of seconds (measured in
//! docs/RELIABILITY.md, "Impaired underlay"). This controller keeps a fixed window, large
//! enough never to be the limit, so losses are the underlay's only and inner flows react to
//! them themselves.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory};

/// Bytes in flight allowed at any time: 16 MiB (about 6.7 Gbit/s at 20 ms RTT). Below
/// `u32::MAX`, so quinn still paces bursts to it.
pub const FIXED_WINDOW: u64 = 16 << 20;

/// Builds a [`FixedWindow`] for each connection.
#[derive(Debug, Default)]
pub struct FixedWindowConfig;

impl ControllerFactory for FixedWindowConfig {
    fn build(self: Arc<Self>, _now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FixedWindow)
    }
}

/// A congestion "controller" whose window never changes.
#[derive(Clone, Debug)]
pub struct FixedWindow;

impl Controller for FixedWindow {
    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        FIXED_WINDOW
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        FIXED_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
