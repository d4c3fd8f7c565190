//! The sans-IO core's integration tests as one test binary: a mesh of cores wired by an
//! in-memory underlay, property tests over the packet entry points, and the core's own
//! WireGuard (`wg`) against boringtun.

mod fuzz;
mod handshake_flood;
mod mesh;
mod probes;
mod wg_interop;
