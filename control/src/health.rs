//! The process's own `/live`, `/ready` and `/metrics` server, bound at process start by
//! `fleetboard hub`, `fleetboard agent` and `fleetboard dns` on their metrics address.
//!
//! Liveness must not depend on leadership or on having joined the hub: a standby hub replica
//! or an agent still waiting for its hub is healthy, and a liveness probe that fails there
//! would restart it forever. So `/live` answers 200 from the moment the port is bound, and
//! `/ready` answers what the process says through its [`Health`] handle (200 or 503, with the
//! reason as the body). `/metrics` renders the status of the process's embedded dataplane,
//! read over its admin socket, when one runs (an empty exposition otherwise): the embedded
//! dataplane itself binds no metrics port, so it can start and stop without the probe port
//! ever going away.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use fleetboard_dataplane::AdminClient;
use tokio::sync::watch;

/// Whether the process is ready, and why (the body of `/ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `/ready` answers 200 when true, 503 otherwise.
    pub ready: bool,
    /// One line saying why, e.g. `standby: not leading`.
    pub reason: String,
}

/// The handle a process reports its readiness through (cheap to clone).
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<Readiness>>,
}

impl Health {
    /// Not ready, for `reason`.
    pub fn new(reason: &str) -> Self {
        let (tx, _) = watch::channel(Readiness {
            ready: false,
            reason: reason.into(),
        });
        Self {
            state: Arc::new(tx),
        }
    }

    /// Sets readiness (logged when it changes).
    pub fn set(&self, ready: bool, reason: &str) {
        let next = Readiness {
            ready,
            reason: reason.into(),
        };
        self.state.send_if_modified(|cur| {
            if *cur == next {
                return false;
            }
            tracing::info!(ready, reason, "readiness changed");
            *cur = next;
            true
        });
    }

    /// The current readiness.
    pub fn get(&self) -> Readiness {
        self.state.borrow().clone()
    }
}

/// Parses a listen address flag: `IP:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` unbracketed (the
/// last colon separates the port), so a chart can pass `$(POD_IP):9464` whatever the pod
/// IP's family. Used as clap's `value_parser`: a bad address is refused naming the flag.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("{s:?}: expected IP:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)");
    let (ip, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

/// Why the health server could not start.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {addr}: {source}")]
pub struct HealthError {
    /// The flag that set the address.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The error.
    pub source: std::io::Error,
}

/// Renders a process's own counters (Prometheus text) for `/metrics`.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    health: Health,
    admin_socket: Option<PathBuf>,
    own: Option<RenderMetrics>,
}

/// Binds `addr` and serves `/live`, `/ready` and `/metrics` in a background task until the
/// process ends. `flag`: the flag `addr` came from (named in errors); `admin_socket`: the
/// embedded dataplane whose status `/metrics` renders.
pub async fn start(
    flag: &'static str,
    addr: SocketAddr,
    health: Health,
    admin_socket: Option<PathBuf>,
) -> Result<SocketAddr, HealthError> {
    serve(flag, addr, health, admin_socket, None).await
}

/// [`start`], with the process's own counters (`render`) appended to `/metrics`.
pub async fn start_with_metrics(
    flag: &'static str,
    addr: SocketAddr,
    health: Health,
    admin_socket: Option<PathBuf>,
    render: RenderMetrics,
) -> Result<SocketAddr, HealthError> {
    serve(flag, addr, health, admin_socket, Some(render)).await
}

async fn serve(
    flag: &'static str,
    addr: SocketAddr,
    health: Health,
    admin_socket: Option<PathBuf>,
    own: Option<RenderMetrics>,
) -> Result<SocketAddr, HealthError> {
    let err = |source| HealthError { flag, addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            health,
            admin_socket,
            own,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    tracing::info!(address = %local, "serving /live, /ready, /metrics");
    Ok(local)
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.health.get();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", r.reason))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = match &s.admin_socket {
        // No dataplane (not leading, not configured yet): nothing to expose.
        Some(sock) if sock.exists() => match AdminClient::new(sock.clone()).status().await {
            Ok(status) => fleetboard_dataplane::metrics::render(&status),
            Err(_) => String::new(),
        },
        _ => String::new(),
    };
    if let Some(render) = &s.own {
        body.push_str(&render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[cfg(test)]
mod address_tests {
    use super::parse_listen_address as p;

    #[test]
    fn listen_addresses_of_both_families_with_and_without_brackets() {
        assert_eq!(p("10.0.0.5:9464").unwrap().to_string(), "10.0.0.5:9464");
        assert_eq!(p("[fd00::5]:9464").unwrap().to_string(), "[fd00::5]:9464");
        assert_eq!(p("fd00::5:9464").unwrap().to_string(), "[fd00::5]:9464");
        assert_eq!(p("::1:80").unwrap().to_string(), "[::1]:80");
        for bad in [
            "",
            "10.0.0.5",
            "10.0.0.5:",
            ":9464",
            "pod:9464",
            "10.0.0.5:99999",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
