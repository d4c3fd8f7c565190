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
//! The process started first only forwards signals: it runs the demo as a child in a process
//! group of its own, so that a Ctrl-C in the terminal reaches the demo alone and not every
//! etcd, kube-apiserver, kubelet, containerd and helm it started (they would die in no order
//! and leave a helm call waiting on a dead API server); the demo then stops them in order.
//!
//! Run it with `scripts/demo.sh` (installs what is missing and builds everything first).
//! Needs root.

mod processes;
mod real;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fleetboard_tests::node::NodeTraces;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Set in the child that runs the demo (the first process forwards signals to it).
const CHILD_ENV: &str = "FLEETBOARD_FIRST_RUN_CHILD";

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

/// Why the run ended early.
#[derive(Debug)]
struct Interrupted(&'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted ({}) before the summary", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Exit codes: 0 done (or Ctrl-C after the summary), 1 any failure, 130 interrupted before
/// the summary.
fn main() -> ExitCode {
    let args = Args::parse();
    let result = if std::env::var_os(CHILD_ENV).is_none() {
        forward_signals()
    } else {
        demo(args)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("first run: {e:#}");
            if e.is::<Interrupted>() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs this binary again as the demo, in a process group of its own, and passes SIGINT,
/// SIGTERM and SIGHUP on to it (SIGHUP as SIGTERM); returns its exit code.
fn forward_signals() -> anyhow::Result<ExitCode> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .process_group(0);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut int = signal(SignalKind::interrupt())?;
            let mut term = signal(SignalKind::terminate())?;
            let mut hup = signal(SignalKind::hangup())?;
            let mut child = tokio::process::Command::from(cmd)
                .spawn()
                .context("starting the demo")?;
            let pid = child.id().context("the demo's pid")? as libc::pid_t;
            loop {
                let sig = tokio::select! {
                    status = child.wait() => {
                        let status = status?;
                        let code = status.code().unwrap_or_else(|| {
                            128 + std::os::unix::process::ExitStatusExt::signal(&status)
                                .unwrap_or(0)
                        });
                        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                    }
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                    _ = hup.recv() => libc::SIGTERM,
                };
                // SAFETY: kill(2) on our own child, which we have not reaped yet.
                unsafe { libc::kill(pid, sig) };
            }
        })
}

fn demo(args: Args) -> anyhow::Result<ExitCode> {
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
        .block_on(supervise(args))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) and SIGTERM, registered before anything starts: from then on neither kills
/// the demo, each starts the teardown. A task hears them and says so at once (the setup may be
/// in the middle of a helm or kubectl command: the teardown starts when it returns).
struct Signals {
    rx: mpsc::UnboundedReceiver<&'static str>,
}

/// Set once the teardown has begun: later signals only say it is under way.
static TEARING_DOWN: AtomicBool = AtomicBool::new(false);

impl Signals {
    fn listen(clock: Clock) -> anyhow::Result<Self> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = int.recv() => "Ctrl-C",
                    _ = term.recv() => "SIGTERM",
                };
                if TEARING_DOWN.swap(true, Ordering::SeqCst) {
                    eprintln!("{s}: still tearing down, a few seconds more");
                } else {
                    clock.step(&format!("{s}: tearing everything down"));
                }
                let _ = tx.send(s);
            }
        });
        Ok(Self { rx })
    }

    async fn next(&mut self) -> &'static str {
        self.rx.recv().await.unwrap_or("the signal task ended")
    }
}

/// Runs the demo against the signals: a signal drops the setup wherever it is (every part of
/// the fleet removes itself when dropped), then checks that the nodes left nothing behind.
async fn supervise(args: Args) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let mut signals = Signals::listen(clock)?;
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
        biased;
        s = signals.next() => Err(s),
        r = &mut work => Ok(r),
    };
    let running = match outcome {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            // The fleet was dropped (torn down) as the error left the setup.
            TEARING_DOWN.store(true, Ordering::SeqCst);
            drop(work);
            clock.step("failed (the error follows)");
            report_leftovers(clock, &traces)?;
            return Err(e);
        }
        Err(signal) => {
            drop(work);
            report_leftovers(clock, &traces)?;
            return Err(Interrupted(signal).into());
        }
    };
    drop(work);
    if !args.exit {
        println!("The cluster set keeps running. Press Ctrl-C to tear everything down.");
        signals.next().await;
    } else if !TEARING_DOWN.swap(true, Ordering::SeqCst) {
        clock.step("tearing everything down (--exit)");
    }
    let left = running.shutdown();
    anyhow::ensure!(left.is_empty(), "left behind: {left:#?}");
    report_leftovers(clock, &traces)
}

/// Says the teardown is done; fails with the list of whatever the nodes (those that had
/// started) left on the machine.
fn report_leftovers(clock: Clock, traces: &Mutex<Vec<NodeTraces>>) -> anyhow::Result<()> {
    let traces = traces.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<String> = traces.iter().flat_map(NodeTraces::leftovers).collect();
    if !left.is_empty() {
        for l in &left {
            eprintln!("left behind: {l}");
        }
        anyhow::bail!("the nodes left {} things behind", left.len());
    }
    if traces.is_empty() {
        clock.step("torn down");
    } else {
        clock.step(&format!(
            "torn down; the {} nodes left nothing behind (processes, mounts, cgroups, \
             namespaces, files)",
            traces.len()
        ));
    }
    Ok(())
}
