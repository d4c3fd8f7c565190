//! I/O driver of the FleetBoard dataplane.

pub mod quic;
