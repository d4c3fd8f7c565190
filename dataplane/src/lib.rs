//! I/O driver of the FleetBoard dataplane.
