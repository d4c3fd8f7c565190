//! The Kubernetes Multi-Cluster Services API (KEP-1645, `sigs.k8s.io/mcs-api`), group
//! `multicluster.x-k8s.io`: `ServiceExport` and `ServiceImport`.
//!
//! `v1alpha1` is the storage version; `v1beta1` is served with the same schema (no
//! conversion webhook: the apiserver only rewrites `apiVersion`). mcs-api's own v1beta1
//! ServiceImport moves the spec fields to the top level; clients of that layout need a
//! conversion webhook, which we do not ship (see `control/src/mcs/README.md`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::SessionAffinityConfig;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the MCS API.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// Label on MCS EndpointSlices: the ServiceImport they belong to.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// Label on MCS EndpointSlices: the cluster the endpoints come from.
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";

/// ServiceExport condition: the Service can be exported.
pub const CONDITION_VALID: &str = "Valid";
/// ServiceExport condition: the export reached the cluster set.
pub const CONDITION_READY: &str = "Ready";
/// ServiceExport condition: exports of the same Service disagree.
pub const CONDITION_CONFLICT: &str = "Conflict";
/// Reason for `Valid=True`.
pub const REASON_VALID: &str = "Valid";
/// Reason for `Valid=False`: no Service of that name.
pub const REASON_NO_SERVICE: &str = "NoService";
/// Reason for `Valid=False`: the Service cannot be exported (ExternalName).
pub const REASON_INVALID_SERVICE_TYPE: &str = "InvalidServiceType";
/// Reason for `Ready=True` (pushed to the hub).
pub const REASON_EXPORTED: &str = "Exported";
/// Reason for `Ready=False` while not exported yet (or invalid).
pub const REASON_PENDING: &str = "Pending";
/// Reason for `Conflict=True`: ports differ.
pub const REASON_PORT_CONFLICT: &str = "PortConflict";
/// Reason for `Conflict=True`: headless vs ClusterSetIP.
pub const REASON_TYPE_CONFLICT: &str = "TypeConflict";
/// Reason for `Conflict=True`: session affinity differs.
pub const REASON_SESSION_AFFINITY_CONFLICT: &str = "SessionAffinityConflict";
/// Reason for `Conflict=False`.
pub const REASON_NO_CONFLICTS: &str = "NoConflicts";

/// Type of a ServiceImport.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ServiceImportType {
    /// Reached through a virtual IP (the ClusterSetIP).
    #[default]
    ClusterSetIP,
    /// Endpoints addressed directly (DNS returns them).
    Headless,
}

impl ServiceImportType {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceImportType::ClusterSetIP => "ClusterSetIP",
            ServiceImportType::Headless => "Headless",
        }
    }
}

/// A port of an imported service.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name of the port (matches the EndpointSlice port name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// TCP, UDP or SCTP (default TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Application protocol hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The port the service is exposed on.
    pub port: i32,
}

impl ServicePort {
    /// The protocol, TCP when unset.
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

/// One exporting cluster of a ServiceImport.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterStatus {
    /// Cluster id of the exporting cluster.
    pub cluster: String,
}

/// Observed state of a ServiceImport.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceImportStatus {
    /// The clusters that export this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
    /// Conditions (Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Observed state of a ServiceExport.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceExportStatus {
    /// `Valid`, `Ready`, `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

macro_rules! mcs_version {
    ($version:ident, $vstr:literal) => {
        /// The MCS types of this API version (same schema in every version).
        pub mod $version {
            use super::*;

            /// Marks the Service of the same namespace and name for export to the cluster set.
            #[derive(kube::CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
            #[kube(
                group = "multicluster.x-k8s.io",
                version = $vstr,
                kind = "ServiceExport",
                plural = "serviceexports",
                shortname = "svcex",
                shortname = "svcexport",
                category = "multicluster",
                namespaced,
                status = "ServiceExportStatus",
                printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
                printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
                printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflict\")].status"}"#,
                printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
            )]
            #[serde(rename_all = "camelCase")]
            pub struct ServiceExportSpec {
                /// Labels to put on the ServiceImport (optional for implementations).
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub exported_labels: Option<BTreeMap<String, String>>,
                /// Annotations to put on the ServiceImport (optional for implementations).
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub exported_annotations: Option<BTreeMap<String, String>>,
            }

            /// A service imported from the clusters of the cluster set.
            #[derive(kube::CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
            #[kube(
                group = "multicluster.x-k8s.io",
                version = $vstr,
                kind = "ServiceImport",
                plural = "serviceimports",
                shortname = "svcim",
                shortname = "svcimport",
                category = "multicluster",
                namespaced,
                status = "ServiceImportStatus",
                printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
                printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
                printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
            )]
            #[serde(rename_all = "camelCase")]
            pub struct ServiceImportSpec {
                /// The service's ports.
                #[serde(default)]
                pub ports: Vec<ServicePort>,
                /// The ClusterSetIP(s), one per IP family (none for Headless).
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(length(max = 2))]
                pub ips: Vec<String>,
                /// ClusterSetIP or Headless.
                #[serde(rename = "type")]
                pub type_: ServiceImportType,
                /// `ClientIP` or `None`.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub session_affinity: Option<String>,
                /// Session affinity settings.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub session_affinity_config: Option<SessionAffinityConfig>,
                /// IP families of the ClusterSetIPs (`IPv4`, `IPv6`).
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub ip_families: Vec<String>,
            }
        }
    };
}

mcs_version!(v1alpha1, "v1alpha1");
mcs_version!(v1beta1, "v1beta1");

pub use v1alpha1::{ServiceExport, ServiceExportSpec, ServiceImport, ServiceImportSpec};

/// `spec` is optional in the MCS API: default it to `{}` so `kubectl apply` of a bare
/// ServiceExport is stored with an (empty) spec our types can read.
fn default_spec(crd: &mut CustomResourceDefinition) {
    for v in &mut crd.spec.versions {
        let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            spec.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({}),
                ),
            );
        }
        if let Some(req) = schema.required.as_mut() {
            req.retain(|r| r != "spec");
        }
        let _: &JSONSchemaProps = schema;
    }
}

/// The ServiceExport CRD: v1alpha1 stored, v1beta1 served.
pub fn service_export_crd() -> CustomResourceDefinition {
    let mut crd = kube::core::crd::merge_crds(
        vec![
            v1alpha1::ServiceExport::crd(),
            v1beta1::ServiceExport::crd(),
        ],
        "v1alpha1",
    )
    .expect("same group, kind and scope");
    default_spec(&mut crd);
    crd
}

/// The ServiceImport CRD: v1alpha1 stored, v1beta1 served.
pub fn service_import_crd() -> CustomResourceDefinition {
    let mut crd = kube::core::crd::merge_crds(
        vec![
            v1alpha1::ServiceImport::crd(),
            v1beta1::ServiceImport::crd(),
        ],
        "v1alpha1",
    )
    .expect("same group, kind and scope");
    // ServiceImport spec is optional too, but `type` is required inside it.
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Some(req) = schema.required.as_mut()
        {
            req.retain(|r| r != "spec");
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_served_alpha_stored() {
        for crd in [service_export_crd(), service_import_crd()] {
            assert_eq!(crd.spec.group, GROUP);
            let v: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert!(v.contains(&("v1alpha1", true, true)), "{v:?}");
            assert!(v.contains(&("v1beta1", true, false)), "{v:?}");
        }
    }

    #[test]
    fn bare_service_export_reads_with_empty_spec() {
        let se: ServiceExport = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "a", "namespace": "b"}, "spec": {}
        }))
        .unwrap();
        assert!(se.spec.exported_labels.is_none());
        let si: ServiceImportSpec =
            serde_json::from_str(r#"{"type":"Headless","ports":[{"port":80}]}"#).unwrap();
        assert_eq!(si.type_, ServiceImportType::Headless);
        assert_eq!(si.ports[0].protocol(), "TCP");
    }
}
