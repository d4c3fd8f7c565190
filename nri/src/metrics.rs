//! Counters of the plugin and the HTTP server with `/metrics`, `/live` and `/ready`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::plugin::FleetPlugin;

/// The plugin's counters (events are rare: plain atomics are plenty).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Pods given an interface.
    pub pods_configured: AtomicU64,
    /// RunPodSandbox requests that failed (setup error or exhausted block).
    pub setup_failures: AtomicU64,
    /// Pods whose interface and address were released.
    pub pods_released: AtomicU64,
    /// Requests rejected as malformed.
    pub malformed_requests: AtomicU64,
    /// Addresses freed by Synchronize (pods the runtime no longer had).
    pub leaks_freed: AtomicU64,
    /// Successful registrations with the runtime.
    pub registrations: AtomicU64,
    /// Registered with the runtime right now.
    pub registered: AtomicBool,
}

impl Metrics {
    /// Adds one to `c`.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format; `allocations` is the current number of allocated addresses.
    pub fn render(&self, allocations: usize) -> String {
        let mut o = String::with_capacity(1024);
        let counters = [
            (
                "fleetboard_nri_pods_configured_total",
                "Pods given the parallel interface.",
                &self.pods_configured,
            ),
            (
                "fleetboard_nri_setup_failures_total",
                "RunPodSandbox requests that failed.",
                &self.setup_failures,
            ),
            (
                "fleetboard_nri_pods_released_total",
                "Pods whose interface and address were released.",
                &self.pods_released,
            ),
            (
                "fleetboard_nri_malformed_requests_total",
                "Requests rejected as malformed.",
                &self.malformed_requests,
            ),
            (
                "fleetboard_nri_leaks_freed_total",
                "Addresses freed by Synchronize.",
                &self.leaks_freed,
            ),
            (
                "fleetboard_nri_registrations_total",
                "Registrations with the runtime.",
                &self.registrations,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP fleetboard_nri_allocations Addresses allocated to pods.\n# TYPE fleetboard_nri_allocations gauge\nfleetboard_nri_allocations {allocations}"
        );
        let _ = writeln!(
            o,
            "# HELP fleetboard_nri_registered 1 while registered with the runtime.\n# TYPE fleetboard_nri_registered gauge\nfleetboard_nri_registered {}",
            u8::from(self.registered.load(Ordering::Relaxed))
        );
        o
    }
}

/// Binds `addr` (so a bad address fails at startup, naming the flag).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::ConfigError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::ConfigError {
            field: "--metrics-address",
            reason: format!("cannot listen on {addr}: {e}"),
        })
}

/// Serves `/metrics`, `/live` (always 200) and `/ready` (200 while registered with the
/// runtime, else 503) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, plugin: Arc<FleetPlugin>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(plugin);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn metrics(State(p): State<Arc<FleetPlugin>>) -> impl IntoResponse {
    let mut body = p.metrics.render(p.allocations().await);
    let a = &p.annotate_metrics;
    for (name, help, c) in [
        (
            "fleetboard_nri_pod_annotations_total",
            "Pods annotated with their parallel address.",
            &a.written,
        ),
        (
            "fleetboard_nri_pod_annotation_failures_total",
            "Failed attempts to annotate a pod (retried).",
            &a.failures,
        ),
    ] {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            c.load(Ordering::Relaxed)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn ready(State(p): State<Arc<FleetPlugin>>) -> impl IntoResponse {
    if p.metrics.registered.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered with the runtime\n",
        )
    }
}
