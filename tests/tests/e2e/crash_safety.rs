//! Crash safety (issue 18 item 5): SIGKILLs of the processes that allocate addresses, at
//! random moments while they allocate, and what survives them.
//!
//! - [`control`]: `fleetboard hub` and the member agents (real apiservers, a fleet of network
//!   namespaces) while clusters join and leave, nodes come and go and Services are exported
//!   and unexported. Afterwards every cluster block (Peer status in the hub), node sub-block
//!   (Node annotation) and ClusterSetIP (ServiceImport `spec.ips`) is held exactly once, none
//!   of a live owner moved or got lost, none is left to a removed owner, and members still
//!   reach each other through the tunnel.
//! - [`nri`]: the real `fleetboard nri` plugin through the real NRI protocol, pod add/delete
//!   cycles with random plugin kills: its IPAM file, the pods' interfaces and their
//!   `parallel_ip` annotations (real apiserver) never give an address twice, never lose one,
//!   and every freed address can be handed out again.
//!
//! Randomness is seeded; the seed is printed (`FLEETBOARD_CRASH_SEED=<n>` replays a run).
//! CI runs the short variants; `FLEETBOARD_LONG=1` runs 100 kills and 1,000 pod cycles
//! (figures in docs/RELIABILITY.md, "Crash safety").

mod control;
mod nri;
/// The NRI plugin tests' node and pod harness (one runtime socket, the plugin process, pods
/// as network namespaces), shared with `nri/tests/plugin`.
#[path = "../../../nri/tests/plugin/support/mod.rs"]
mod nri_support;

/// True when the long variant runs (`FLEETBOARD_LONG=1`).
fn long_run() -> bool {
    std::env::var("FLEETBOARD_LONG").is_ok_and(|v| v == "1")
}

/// A seeded generator: `FLEETBOARD_CRASH_SEED` when set, else the clock. The seed is printed
/// so that a failing run can be replayed.
fn seeded_rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("FLEETBOARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (replay with FLEETBOARD_CRASH_SEED={seed})");
    fastrand::Rng::with_seed(seed)
}

/// SIGKILLs process `pid` now (the caller still reaps it through its `ChildGuard`).
fn sigkill(pid: u32) {
    if pid != 0 {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}
