//! `ExportedService` (fleetboard.io/v1alpha1): the MCS carrier in the hub. One object per
//! exporting cluster and Service, named `<cluster>.<namespace>.<service>`, in that cluster's own
//! namespace on the hub (`fleetboard-member-<cluster>`, see [`crate::membership`]); written by
//! that cluster's MCS-Syncer, read by every member's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::mcs::ServiceImportType;

/// One cluster's export of one Service.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetboard.io",
    version = "v1alpha1",
    kind = "ExportedService",
    plural = "exportedservices",
    shortname = "fbexport",
    category = "fleetboard",
    namespaced,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterId"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.namespace"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"string","jsonPath":".spec.endpoints.addresses"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExportedServiceSpec {
    /// Id of the exporting cluster.
    pub cluster_id: String,
    /// Namespace of the Service in the exporting cluster.
    pub namespace: String,
    /// Name of the Service.
    pub service: String,
    /// ClusterSetIP (the Service has a cluster IP) or Headless.
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// The Service's ports, with the endpoints' port resolved.
    #[serde(default)]
    pub ports: Vec<ExportedPort>,
    /// The Service's session affinity (`None` or `ClientIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// When the export began, for conflict resolution (the oldest export wins). Set by the
    /// hub, never by a member: readers take the ExportedService's own
    /// `metadata.creationTimestamp` (the hub API server's clock), and the hub's admission
    /// policy refuses a member that sets this field, so nobody can claim an older export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_creation_time: Option<Time>,
    /// The endpoints (parallel addresses of the Service's pods).
    #[serde(default)]
    pub endpoints: ExportedEndpoints,
}

/// A port of an exported Service.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ExportedPort {
    /// Port name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// Application protocol hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The Service port.
    pub port: i32,
    /// The port the endpoints listen on (the Service's numeric target port, or the named
    /// container port resolved; 0 when unknown).
    #[serde(default)]
    pub target_port: i32,
}

/// Endpoints as parallel arrays (compact for services with many pods).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedEndpoints {
    /// Parallel IP addresses (IPv4 and IPv6).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness of each address.
    #[serde(default)]
    pub ready: Vec<bool>,
    /// Hostname of each address (pod hostname for headless services; empty when none).
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl ExportedService {
    /// The object name of `cluster`'s export of `namespace/service`.
    pub fn object_name(cluster: &str, namespace: &str, service: &str) -> String {
        format!("{cluster}.{namespace}.{service}")
    }
}
