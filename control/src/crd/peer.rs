//! The `Peer` custom resource: one per cluster, in the hub's shared namespace.
//!
//! `kubectl get fbpeer` (or `kubectl get peers.fleetboard.io`) shows cluster, CIDRs, endpoint,
//! transport, connection state and last handshake. The short name `fbpeer` does not clash with
//! Kilo's `peers.kilo.squat.ai`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Default UDP port of the tunnel endpoint.
pub const DEFAULT_TUNNEL_PORT: u16 = 31820;

/// Annotation of the hub's Peer: the identity of the hub replica that leads (publishes it).
/// Members name it in [`HUB_SILENT_ANNOTATION`] when its data path stops answering.
pub const HUB_LEADER_ANNOTATION: &str = "fleetboard.io/hub-leader";

/// Annotation of a member's own Peer, written by its gateway: the hub leader (as named in
/// [`HUB_LEADER_ANNOTATION`]) whose data-path probes answered and then went silent. Standby
/// hub replicas take the hub Lease at once when most connected members say so
/// (docs/RELIABILITY.md, hub leader failover). Absent while the hub answers.
pub const HUB_SILENT_ANNOTATION: &str = "fleetboard.io/hub-silent";

/// Most CIDRs a cluster announces (bounds the CEL validation cost in the apiserver).
pub const MAX_CIDRS: usize = 8;

/// Desired state of a cluster's membership in the cluster set.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetboard.io",
    version = "v1alpha1",
    kind = "Peer",
    plural = "peers",
    shortname = "fbpeer",
    category = "fleetboard",
    namespaced,
    status = "PeerStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterId"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".status.allocatedCidrs[*]"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.endpoint"}"#,
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".spec.transport"}"#,
    printcolumn = r#"{"name":"Hub","type":"boolean","jsonPath":".spec.isHub"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Handshake","type":"date","jsonPath":".status.lastHandshake"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// Cluster id: a DNS label, unique in the cluster set.
    #[schemars(schema_with = "dns_label_schema")]
    pub cluster_id: String,
    /// CIDRs the cluster announces in addition to the block the hub allocates (IPv4/IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "cidr_list_schema")]
    pub cidrs: Vec<String>,
    /// Host name or IP address where the cluster's gateway is reachable (empty when private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "endpoint_schema")]
    pub endpoint: Option<String>,
    /// UDP port of the tunnel endpoint.
    #[serde(default = "default_port")]
    #[schemars(schema_with = "port_schema")]
    pub port: u16,
    /// WireGuard public key (base64 Curve25519, as `wg pubkey` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "wg_key_schema")]
    pub public_key: Option<String>,
    /// SHA-256 fingerprint of the QUIC certificate's public key (64 lowercase hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "fingerprint_schema")]
    pub cert_fingerprint: Option<String>,
    /// Tunnel transport this cluster speaks.
    #[serde(default)]
    pub transport: Transport,
    /// True for the hub's own Peer.
    #[serde(default)]
    pub is_hub: bool,
    /// True when the endpoint is reachable from other members (direct tunnels allowed).
    #[serde(default)]
    pub is_public: bool,
}

/// Tunnel transport of a peer.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WireGuard (boringtun) over UDP.
    #[default]
    Wg,
    /// IP packets as QUIC datagrams (quinn), mutually authenticated TLS.
    Quic,
}

/// Observed state of a peer, written by the hub through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// `Ready` (allocation done) and `Connected` (tunnel up) with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Blocks of the tunnel CIDR allocated to this cluster by the hub (the source of truth:
    /// a restart re-reads them, never re-allocates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocated_cidrs: Vec<String>,
    /// Time of the last completed handshake with the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<Time>,
    /// Round-trip time to the hub in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<u64>,
    /// Median round trip of the hub's data-path probes to this peer's gateway (through the
    /// tunnel), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_rtt_micros: Option<u64>,
    /// Percentage of the hub's recent data-path probes to this peer that went unanswered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_loss_percent: Option<u64>,
    /// Bytes received from this peer by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    /// Bytes sent to this peer by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Peer {
    /// The value of annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

fn default_port() -> u16 {
    DEFAULT_TUNNEL_PORT
}

fn dns_label_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    })
}

fn cidr_list_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_CIDRS,
        "items": {
            "type": "string",
            "maxLength": 49,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self)",
                "message": "must be a CIDR such as 100.64.0.0/16 or fd00::/48"
            }]
        }
    })
}

fn endpoint_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "string",
        "maxLength": 253,
        "pattern": "^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$",
    })
}

fn port_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    json_schema!({ "type": "integer", "minimum": 1, "maximum": 65535, "default": DEFAULT_TUNNEL_PORT })
}

fn wg_key_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    // 32 bytes in base64: 43 significant characters, the last one with its low 2 bits zero.
    json_schema!({ "type": "string", "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$" })
}

fn fingerprint_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    json_schema!({ "type": "string", "pattern": "^[0-9a-f]{64}$" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_status_subresource_short_name_and_columns() {
        let crd = Peer::crd();
        assert_eq!(crd.spec.group, "fleetboard.io");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["fbpeer".to_string()][..])
        );
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Cluster",
                "CIDR",
                "Endpoint",
                "Transport",
                "Hub",
                "Connected",
                "Handshake",
                "Age"
            ]
        );
    }

    #[test]
    fn spec_defaults_apply_when_fields_are_missing() {
        let spec: PeerSpec = serde_json::from_str(r#"{"clusterId":"a"}"#).unwrap();
        assert_eq!(spec.port, DEFAULT_TUNNEL_PORT);
        assert_eq!(spec.transport, Transport::Wg);
        assert!(!spec.is_hub);
    }
}
