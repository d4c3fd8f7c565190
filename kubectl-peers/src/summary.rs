//! One row per cluster, computed from a Peer and the current time (pure: no API calls, no clock).

use fleetboard_control::crd::peer::{Peer, Transport};
use serde::Serialize;

/// What `kubectl peers` shows about one cluster (also the `-o json|yaml` document's items).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    /// Cluster id (the Peer's `spec.clusterId`).
    pub cluster: String,
    /// True for the hub's own Peer.
    pub hub: bool,
    /// Blocks the hub allocated (status), then CIDRs the cluster announces (spec).
    pub cidrs: Vec<String>,
    /// Public endpoint `host:port`, None when the cluster is private.
    pub endpoint: Option<String>,
    /// `wg` or `quic`.
    pub transport: String,
    /// Status of the `Connected` condition (`True`, `False`, `Unknown`), None before the hub
    /// reported one.
    pub connected: Option<String>,
    /// Reason of the `Connected` condition.
    pub connected_reason: Option<String>,
    /// Status of the `Ready` condition (allocation done).
    pub ready: Option<String>,
    /// Last completed handshake (RFC 3339).
    pub last_handshake: Option<String>,
    /// Seconds since the last handshake.
    pub handshake_age_seconds: Option<i64>,
    /// Round-trip time to the hub in microseconds.
    pub rtt_micros: Option<u64>,
    /// Median RTT of the hub's data-path probes to this cluster's gateway, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_rtt_micros: Option<u64>,
    /// Percentage of the hub's recent data-path probes that went unanswered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_loss_percent: Option<u64>,
    /// Bytes the hub received from this cluster.
    pub rx_bytes: Option<u64>,
    /// Bytes the hub sent to this cluster.
    pub tx_bytes: Option<u64>,
    /// True when members may tunnel to this cluster directly.
    pub public: bool,
    /// WireGuard public key.
    pub public_key: Option<String>,
    /// QUIC certificate fingerprint.
    pub cert_fingerprint: Option<String>,
    /// Seconds since the Peer was created.
    pub age_seconds: Option<i64>,
}

/// Rows for `peers`, hub first then by cluster id; `now` is Unix seconds.
pub fn summarize(peers: &[Peer], now: i64) -> Vec<PeerSummary> {
    let mut rows: Vec<PeerSummary> = peers.iter().map(|p| summarize_one(p, now)).collect();
    rows.sort_by(|a, b| b.hub.cmp(&a.hub).then_with(|| a.cluster.cmp(&b.cluster)));
    rows
}

fn summarize_one(peer: &Peer, now: i64) -> PeerSummary {
    let spec = &peer.spec;
    let status = peer.status.clone().unwrap_or_default();
    let condition = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind);
    let connected = condition("Connected");
    let mut cidrs = status.allocated_cidrs.clone();
    cidrs.extend(
        spec.cidrs
            .iter()
            .filter(|c| !status.allocated_cidrs.contains(c))
            .cloned(),
    );
    let handshake = status.last_handshake.as_ref().map(|t| t.0);
    PeerSummary {
        cluster: spec.cluster_id.clone(),
        hub: spec.is_hub,
        cidrs,
        endpoint: spec
            .endpoint
            .as_ref()
            .map(|host| join_host_port(host, spec.port)),
        transport: match spec.transport {
            Transport::Wg => "wg".into(),
            Transport::Quic => "quic".into(),
        },
        connected: connected.map(|c| c.status.clone()),
        connected_reason: connected
            .map(|c| c.reason.clone())
            .filter(|r| !r.is_empty()),
        ready: condition("Ready").map(|c| c.status.clone()),
        last_handshake: handshake.map(|t| t.to_string()),
        handshake_age_seconds: handshake.map(|t| (now - t.as_second()).max(0)),
        rtt_micros: status.rtt_micros,
        probe_rtt_micros: status.probe_rtt_micros,
        probe_loss_percent: status.probe_loss_percent,
        rx_bytes: status.rx_bytes,
        tx_bytes: status.tx_bytes,
        public: spec.is_public,
        public_key: spec.public_key.clone(),
        cert_fingerprint: spec.cert_fingerprint.clone(),
        age_seconds: peer
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| (now - t.0.as_second()).max(0)),
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(v: serde_json::Value) -> Peer {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hub_first_then_by_cluster_and_status_fields_carried() {
        let peers = [
            peer(
                json!({"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"clusterId": "b", "cidrs": ["10.0.0.0/16"], "transport": "quic"},
                "status": {"allocatedCidrs": ["100.64.2.0/24"], "rttMicros": 1500, "rxBytes": 10,
                    "lastHandshake": "2026-01-01T00:00:50Z",
                    "conditions": [{"type": "Connected", "status": "True", "reason": "Handshake",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
            ),
            peer(json!({"metadata": {"name": "a"}, "spec": {"clusterId": "a"}})),
            peer(json!({"metadata": {"name": "hub"},
                "spec": {"clusterId": "hub", "isHub": true, "endpoint": "fd00::1"}})),
        ];
        let rows = summarize(&peers, 1_767_225_660); // 2026-01-01T00:01:00Z
        let order: Vec<_> = rows.iter().map(|r| r.cluster.as_str()).collect();
        assert_eq!(order, ["hub", "a", "b"]);
        assert_eq!(rows[0].endpoint.as_deref(), Some("[fd00::1]:31820"));
        let b = &rows[2];
        assert_eq!(b.cidrs, ["100.64.2.0/24", "10.0.0.0/16"]);
        assert_eq!(b.transport, "quic");
        assert_eq!(b.connected.as_deref(), Some("True"));
        assert_eq!(b.connected_reason.as_deref(), Some("Handshake"));
        assert_eq!(b.handshake_age_seconds, Some(10));
        assert_eq!(b.age_seconds, Some(60));
        assert_eq!(b.rtt_micros, Some(1500));
        assert_eq!(rows[1].connected, None);
    }
}
