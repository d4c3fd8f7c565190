//! Prometheus text exposition of a [`DataplaneStatus`], and the HTTP server with
//! `/metrics`, `/live` and `/ready`.
//!
//! The counters live in the core (plain integers, no atomics on the hot path); a scrape asks
//! the driver for a snapshot over its command channel and renders it here.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use fleetboard_dataplane_core::{DataplaneStatus, DropReason, PeerStatus};
use tokio::sync::{mpsc, oneshot};

use crate::admin::{AdminCall, Request, Response};

/// Name, help and value of one per-peer counter.
type PeerMetric = (
    &'static str,
    &'static str,
    fn(&fleetboard_dataplane_core::PeerStatus) -> u64,
);

/// Renders the status in the Prometheus text format.
pub fn render(s: &DataplaneStatus) -> String {
    let mut o = String::with_capacity(4096);
    let peer_metrics: [PeerMetric; 4] = [
        (
            "fleetboard_peer_rx_bytes_total",
            "Underlay bytes received from the peer.",
            |p| p.counters.rx_bytes,
        ),
        (
            "fleetboard_peer_tx_bytes_total",
            "Underlay bytes sent to the peer.",
            |p| p.counters.tx_bytes,
        ),
        (
            "fleetboard_peer_rx_packets_total",
            "Datagrams received from the peer.",
            |p| p.counters.rx_packets,
        ),
        (
            "fleetboard_peer_tx_packets_total",
            "Datagrams sent to the peer.",
            |p| p.counters.tx_packets,
        ),
    ];
    for (name, help, f) in peer_metrics {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in &s.peers {
            let _ = writeln!(o, "{name}{{{}}} {}", labels(p), f(p));
        }
    }
    let name = "fleetboard_peer_last_handshake_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Seconds since the last completed handshake.\n# TYPE {name} gauge"
    );
    for p in &s.peers {
        if let Some(v) = p.last_handshake_secs_ago {
            let _ = writeln!(o, "{name}{{{}}} {v}", labels(p));
        }
    }
    let name = "fleetboard_peer_drops_total";
    let _ = writeln!(
        o,
        "# HELP {name} Packets from or to the peer dropped, by reason.\n# TYPE {name} counter"
    );
    for p in &s.peers {
        for (r, v) in p.counters.drops.iter() {
            let _ = writeln!(o, "{name}{{{},reason=\"{}\"}} {v}", labels(p), r.as_str());
        }
    }
    render_probes(&mut o, s);
    let name = "fleetboard_drops_total";
    let _ = writeln!(
        o,
        "# HELP {name} Packets dropped, by reason (all peers and unknown senders).\n# TYPE {name} counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(o, "{name}{{reason=\"{}\"}} {}", r.as_str(), s.drops.get(r));
    }
    let _ = writeln!(
        o,
        "# HELP fleetboard_peers Configured peers.\n# TYPE fleetboard_peers gauge\nfleetboard_peers {}",
        s.peers.len()
    );
    let _ = writeln!(
        o,
        "# HELP fleetboard_routes Routes in the table.\n# TYPE fleetboard_routes gauge\nfleetboard_routes {}",
        s.routes
    );
    let _ = writeln!(
        o,
        "# HELP fleetboard_relayed_packets_total Relay messages forwarded between peers without decrypting them.\n# TYPE fleetboard_relayed_packets_total counter\nfleetboard_relayed_packets_total {}",
        s.relayed_packets
    );
    let _ = writeln!(
        o,
        "# HELP fleetboard_relayed_bytes_total Bytes of relay messages forwarded between peers.\n# TYPE fleetboard_relayed_bytes_total counter\nfleetboard_relayed_bytes_total {}",
        s.relayed_bytes
    );
    let _ = writeln!(
        o,
        "# HELP fleetboard_udp_gso_fallbacks_total UDP GSO sends the kernel refused (GSO then off).\n# TYPE fleetboard_udp_gso_fallbacks_total counter\nfleetboard_udp_gso_fallbacks_total {}",
        crate::udp::GSO_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP fleetboard_admin_refused_requests_total Admin socket requests refused unread (unparsable, too long, too many clients).\n# TYPE fleetboard_admin_refused_requests_total counter\nfleetboard_admin_refused_requests_total {}",
        crate::admin::REFUSED_REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
    );
    o
}

/// Data-path probe figures per peer and the probe interface's counters.
fn render_probes(o: &mut String, s: &DataplaneStatus) {
    type Gauge = (&'static str, &'static str, fn(&PeerStatus) -> Option<f64>);
    let gauges: [Gauge; 4] = [
        (
            "fleetboard_peer_probe_up",
            "1 while the peer answers data-path probes, 0 once its last reply is older than probe.dead_after_ms.",
            |p| p.probe_alive.map(|a| f64::from(u8::from(a))),
        ),
        (
            "fleetboard_peer_probe_rtt_p50_seconds",
            "Median round trip of the data-path probes in the window.",
            |p| p.probe_rtt_p50_micros.map(|v| v as f64 / 1e6),
        ),
        (
            "fleetboard_peer_probe_loss_ratio",
            "Fraction of the data-path probes in the window that went unanswered.",
            |p| p.probe_loss,
        ),
        (
            "fleetboard_peer_probe_last_reply_seconds",
            "Seconds since the last data-path probe reply.",
            |p| p.probe_last_reply_millis_ago.map(|v| v as f64 / 1e3),
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in &s.peers {
            if let Some(v) = f(p) {
                let _ = writeln!(o, "{name}{{{}}} {v}", labels(p));
            }
        }
    }
    let name = "fleetboard_probe_packets_total";
    let _ = writeln!(
        o,
        "# HELP {name} Packets of the probe interface, by event.\n# TYPE {name} counter"
    );
    let c = &s.probes;
    for (event, v) in [
        ("request_sent", c.requests_sent),
        ("reply", c.replies),
        ("request_answered", c.requests_answered),
        ("echo_request", c.echo_requests),
        ("malformed", c.malformed),
        ("unexpected", c.unexpected),
    ] {
        let _ = writeln!(o, "{name}{{event=\"{event}\"}} {v}");
    }
}

fn labels(p: &fleetboard_dataplane_core::PeerStatus) -> String {
    let name = p
        .name
        .clone()
        .unwrap_or_default()
        .replace(['"', '\\', '\n'], "_");
    format!(
        "peer=\"{name}\",public_key=\"{}\",transport=\"{}\"",
        p.public_key, p.transport
    )
}

async fn metrics(State(calls): State<mpsc::Sender<AdminCall>>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    if calls.send((Request::Status, tx)).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        )
            .into_response();
    }
    match rx.await {
        Ok(Response::Status(s)) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(&s),
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "no status\n".to_string()).into_response(),
    }
}

/// Serves `/metrics`, `/live` and `/ready` on `listener`. Started once the TUN device and the
/// socket are up, so `/ready` answering means the dataplane forwards.
pub async fn serve(
    listener: tokio::net::TcpListener,
    calls: mpsc::Sender<AdminCall>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .with_state(calls);
    axum::serve(listener, app).await
}

/// Binds the metrics address (before anything else runs, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
