//! What `fleetboard hub` and `fleetboard agent` share: the local dataplane and cluster-access
//! flags, logging, the runtime and the shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Flags of the local dataplane and of the local cluster's apiserver, declared once for `hub`
/// and `agent` (`hub` words some help texts its own way with `mut_arg`).
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// TUN device name.
    #[arg(long, env = "FLEETBOARD_TUN_NAME", default_value = "fb0")]
    pub tun_name: String,
    /// Folder for the admin socket and the QUIC identity files (the agent also keeps the
    /// node's keys, the hub token and its last dataplane config there).
    #[arg(long, env = "FLEETBOARD_STATE_DIR", default_value = "/run/fleetboard")]
    pub state_dir: PathBuf,
    /// Address for /metrics, /live, /ready (IP:PORT; an IPv6 address may be unbracketed).
    /// None if unset. The charts bind the pod IP, not 0.0.0.0: the agent's network namespace
    /// also holds the tunnel device, and 0.0.0.0 would serve it to the whole cluster set.
    #[arg(long, env = "FLEETBOARD_METRICS_ADDRESS", value_parser = fleetboard_control::health::parse_listen_address)]
    pub metrics_address: Option<SocketAddr>,
    /// Member cluster kubeconfig (default: in-cluster, or $KUBECONFIG).
    #[arg(long, env = "FLEETBOARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default`). kube-client logs every failed
/// request at error level, though the caller gets the error and logs the outage once
/// (`fleetboard_control::outage`): off unless `RUST_LOG` names `kube_client`.
pub fn init_tracing(default: &str) {
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube_client"))
        && let Ok(quiet) = "kube_client::client::builder=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// The two-worker tokio runtime `hub` and `agent` run on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
