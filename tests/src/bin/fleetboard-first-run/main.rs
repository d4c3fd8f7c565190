//! `fleetboard-first-run`: the newcomer's first run, on this one machine (`scripts/demo.sh`).
//!
//! By default on real nodes ([`real`], the setup of the fleet test): a hub cluster with one
//! node and two member clusters with two nodes each, every node a kubelet with containerd
//! (NRI), runc, CNI and kube-proxy in namespaces of its own, on a test internet behind each
//! cluster's NAT. The charts are installed from a chart repository with `helm` as a user
//! installs them (the hub install, then the member install the hub's NOTES print); pods get
//! `eth-fleet` from the NRI plugin. It ends with a summary: the pods of every cluster,
//! `kubectl peers` on the hub, an HTTP request from a pod of member A to a Service exported
//! from member B by its `clusterset.local` name, and iperf3 between a pod of each member by
//! their parallel addresses.
//!
//! `--processes`: the older, lighter setup ([`processes`]): the hub and the agents as plain
//! processes in node namespaces, no kubelets.
//!
//! Ctrl-C (or SIGTERM) at any moment, during the setup too, tears everything down; without
//! `--exit` the cluster set keeps running after the summary until then. Any failure (also
//! anything left behind by the nodes) makes the exit code non-zero.
//!
//! Run it with `scripts/demo.sh` (installs what is missing and builds everything first).
//! Needs root.

mod processes;
mod real;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fleetboard_tests::node::NodeTraces;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The newcomer's first run: a hub and 2 member clusters, the charts, pods talking across
/// clusters.
#[derive(Parser, Debug)]
pub struct Args {
    /// Tunnel transport: wg or quic.
    #[arg(long, default_value = "wg", value_parser = ["wg", "quic"])]
    pub transport: String,
    /// Seconds of iperf3 traffic between the members.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Tear down right after the summary instead of waiting for Ctrl-C; exit non-zero on any
    /// failure.
    #[arg(long)]
    pub exit: bool,
    /// The process-only setup: hub and agents as processes in node namespaces, no kubelets.
    #[arg(long)]
    pub processes: bool,
}

impl Args {
    /// The transport as the fleets take it.
    pub fn transport(&self) -> &'static str {
        if self.transport == "quic" {
            "quic"
        } else {
            "wg"
        }
    }
}

/// When the run began; prints each step with the time since.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn step(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// What runs once the setup succeeded.
pub enum Running {
    Real(Box<fleetboard_tests::real_fleet::RealFleet>),
    Processes(Box<fleetboard_tests::fleet::Fleet>),
}

impl Running {
    /// Tears everything down; returns what the nodes left behind.
    fn shutdown(self) -> Vec<String> {
        match self {
            Running::Real(fleet) => fleet.shutdown(),
            Running::Processes(fleet) => {
                drop(fleet);
                Vec::new()
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The `fleetboard` and `kubectl-peers` binaries of the same build sit next to this one.
    if std::env::var_os("FLEETBOARD_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        let dir: PathBuf = exe.parent().context("binary folder")?.to_path_buf();
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("FLEETBOARD_BIN_DIR", dir) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(supervise(args))
}

/// SIGINT (Ctrl-C) and SIGTERM, registered before anything starts: from then on neither
/// kills this process, each starts the teardown.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Runs the demo against the signals: a signal drops the setup wherever it is (every part of
/// the fleet removes itself when dropped), then checks that the nodes left nothing behind.
async fn supervise(args: Args) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let mut signals = Signals::new()?;
    // The nodes' traces, once they exist, to check after a teardown in the middle.
    let traces: Mutex<Vec<NodeTraces>> = Mutex::new(Vec::new());
    let mut work = Box::pin(async {
        if args.processes {
            processes::run(&args, clock)
                .await
                .map(|f| Running::Processes(Box::new(f)))
        } else {
            real::run(&args, clock, &traces)
                .await
                .map(|f| Running::Real(Box::new(f)))
        }
    });
    let outcome = tokio::select! {
        r = &mut work => Ok(r),
        s = signals.next() => Err(s),
    };
    let running = match outcome {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            // The fleet was dropped (torn down) as the error left the setup.
            drop(work);
            clock.step("failed; everything torn down");
            report_leftovers(&traces)?;
            return Err(e);
        }
        Err(signal) => {
            clock.step(&format!("{signal}: tearing everything down"));
            let _quiet = still_tearing_down(signals);
            drop(work);
            report_leftovers(&traces)?;
            clock.step("torn down, nothing left behind");
            anyhow::bail!("interrupted ({signal}) before the summary");
        }
    };
    drop(work);
    if !args.exit {
        println!("The cluster set keeps running. Press Ctrl-C to tear everything down.");
        let signal = signals.next().await;
        clock.step(&format!("{signal}: tearing everything down"));
    } else {
        clock.step("tearing everything down (--exit)");
    }
    let _quiet = still_tearing_down(signals);
    let left = running.shutdown();
    anyhow::ensure!(left.is_empty(), "left behind: {left:#?}");
    report_leftovers(&traces)?;
    clock.step("torn down, nothing left behind");
    Ok(())
}

/// While the teardown runs, further signals only say so (a second Ctrl-C must not leave
/// half a cluster set behind).
fn still_tearing_down(mut signals: Signals) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = signals.next().await;
            eprintln!("{s}: still tearing down, a few seconds more");
        }
    })
}

/// Fails with the list of whatever the nodes left on the machine.
fn report_leftovers(traces: &Mutex<Vec<NodeTraces>>) -> anyhow::Result<()> {
    let traces = traces.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<String> = traces.iter().flat_map(NodeTraces::leftovers).collect();
    if !left.is_empty() {
        for l in &left {
            eprintln!("left behind: {l}");
        }
        anyhow::bail!("the nodes left {} things behind", left.len());
    }
    Ok(())
}
