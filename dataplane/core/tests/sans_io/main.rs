//! The sans-IO core's integration tests as one test binary: a mesh of cores wired by an
//! in-memory underlay, and property tests over the packet entry points.

mod fuzz;
mod handshake_flood;
mod mesh;
mod probes;
