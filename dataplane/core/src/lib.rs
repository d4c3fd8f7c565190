//! Sans-IO core of the FleetBoard dataplane (no sockets, no TUN, no clock reads).

pub mod mtu;
