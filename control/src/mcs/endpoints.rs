//! The parallel EndpointSlice controller: for each exported Service, one EndpointSlice per IP
//! family whose endpoints are the selected pods' parallel addresses (pod annotation
//! [`PARALLEL_IP_ANNOTATION`]), ready as the pods are. Unexported Services get none.
//!
//! The slices are labelled [`LABEL_PARALLEL_SERVICE`] (not `kubernetes.io/service-name`, so
//! kube-proxy never uses them) and managed-by [`PARALLEL_MANAGED_BY`]; the MCS-Syncer reads
//! them to build the cluster's ExportedServices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;

use super::trigger;
use super::{
    EndpointSliceConfig, LABEL_PARALLEL_SERVICE, LABEL_SLICE_MANAGED_BY, McsError,
    PARALLEL_IP_ANNOTATION, PARALLEL_MANAGED_BY,
};
use crate::crd::mcs::ServiceExport;
use crate::watch::cache;

/// Field manager of the parallel EndpointSlices.
pub const FIELD_MANAGER: &str = "fleetboard.io/parallel-endpointslice";

/// The parallel addresses of a pod (empty when the annotation is missing or malformed).
pub fn parallel_ips(pod: &Pod) -> Vec<IpAddr> {
    pod.annotations()
        .get(PARALLEL_IP_ANNOTATION)
        .map(|v| {
            v.split(',')
                .filter_map(|s| {
                    let s = s.trim();
                    let s = s.split('/').next().unwrap_or(s);
                    s.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    let labels = pod.labels();
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The port the pod serves a Service port on: the numeric target port, a named container
/// port, or the Service port itself.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: Option<&Pod>) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        Some(IntOrString::Int(p)) => *p,
        Some(IntOrString::String(name)) => pod
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(name))
            })
            .map(|cp| cp.container_port)
            .unwrap_or(port.port),
        None => port.port,
    }
}

/// The name of the parallel slice of `service` for `family` (`ipv4` / `ipv6`).
pub fn slice_name(service: &str, family: &str) -> String {
    format!("{service}-parallel-{family}")
}

/// The parallel EndpointSlices `svc` should have given the pods of its namespace (pure).
pub fn desired_slices(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    let selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| live(p) && selects(svc, p))
        .collect();
    let ports: Vec<EndpointPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ps| {
            ps.iter()
                .map(|p| EndpointPort {
                    name: p.name.clone().or(Some(String::new())),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    port: Some(target_port(p, selected.first().copied())),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let owner = svc.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let mut out = Vec::new();
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for pod in &selected {
            for ip in parallel_ips(pod)
                .into_iter()
                .filter(|ip| ip.is_ipv6() == v6)
            {
                let ready = pod_ready(pod);
                endpoints.push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    hostname: pod.spec.as_ref().and_then(|s| s.hostname.clone()),
                    node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.name_any()),
                        namespace: pod.namespace(),
                        uid: pod.uid(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
        if endpoints.is_empty() && v6 {
            continue;
        }
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        out.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&name, family)),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([
                    (LABEL_PARALLEL_SERVICE.to_string(), name.clone()),
                    (
                        LABEL_SLICE_MANAGED_BY.to_string(),
                        PARALLEL_MANAGED_BY.to_string(),
                    ),
                ])),
                owner_references: owner.clone().map(|o: OwnerReference| vec![o]),
                ..Default::default()
            },
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints,
            ports: Some(ports.clone()),
        });
    }
    out
}

/// True when `have` already carries what `want` says (labels, endpoints, ports).
pub(crate) fn slice_matches(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.address_type == want.address_type
        && have.endpoints == want.endpoints
        && have.ports == want.ports
        && want
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| have.labels().get(k) == Some(v))
}

/// Runs the parallel EndpointSlice controller on a member cluster until an unrecoverable
/// error (a failed pass is logged and retried on the next change or resync).
pub async fn run_endpointslice_controller(
    client: Client,
    cfg: EndpointSliceConfig,
) -> Result<(), McsError> {
    let (exports, services, pods, slices): (
        Api<ServiceExport>,
        Api<Service>,
        Api<Pod>,
        Api<EndpointSlice>,
    ) = match &cfg.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let wake = Arc::new(Notify::new());
    let selector = format!("{LABEL_SLICE_MANAGED_BY}={PARALLEL_MANAGED_BY}");
    let exports_c = cache(exports, None, "member API (service exports)", &wake);
    let services_c = cache(services, None, "member API (services)", &wake);
    let pods_c = cache(pods, None, "member API (pods)", &wake);
    let slices_c = cache(
        slices,
        Some(&selector),
        "member API (parallel endpoint slices)",
        &wake,
    );
    trigger::ready(&exports_c).await?;
    trigger::ready(&services_c).await?;
    trigger::ready(&pods_c).await?;
    trigger::ready(&slices_c).await?;
    tracing::info!("parallel EndpointSlice controller running");
    loop {
        let exported: BTreeSet<(String, String)> = exports_c
            .state()
            .iter()
            .map(|e| (e.namespace().unwrap_or_default(), e.name_any()))
            .collect();
        let pods = pods_c.state();
        let mut want: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
        for svc in services_c.state() {
            let key = (svc.namespace().unwrap_or_default(), svc.name_any());
            if !exported.contains(&key) {
                continue;
            }
            if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
                continue;
            }
            let ns_pods: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(key.0.as_str()))
                .map(|p| p.as_ref())
                .collect();
            for s in desired_slices(&svc, &ns_pods) {
                want.insert((key.0.clone(), s.name_any()), s);
            }
        }
        if let Err(e) = apply(&client, &want, &slices_c.state()).await {
            tracing::warn!(error = %e, "parallel EndpointSlice pass failed; retrying");
        }
        trigger::next_pass(&wake).await;
    }
}

async fn apply(
    client: &Client,
    want: &BTreeMap<(String, String), EndpointSlice>,
    have: &[Arc<EndpointSlice>],
) -> Result<(), McsError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for ((ns, name), slice) in want {
        let current = have
            .iter()
            .find(|h| h.namespace().as_deref() == Some(ns) && &h.name_any() == name);
        if current.is_some_and(|c| slice_matches(c, slice)) {
            continue;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        api.patch(name, &pp, &Patch::Apply(slice)).await?;
    }
    for h in have {
        let key = (h.namespace().unwrap_or_default(), h.name_any());
        if !want.contains_key(&key) {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: Option<&str>, ready: bool, app: &str) -> Pod {
        let mut ann = serde_json::Map::new();
        if let Some(ip) = ip {
            ann.insert(PARALLEL_IP_ANNOTATION.into(), json!(ip));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}, "annotations": ann},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn slices_follow_parallel_ips_and_readiness() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}
        }))
        .unwrap();
        let pods = [
            pod("a", Some("100.64.1.5"), true, "web"),
            pod("b", Some("100.64.1.6,fd00:64:1::6"), false, "web"),
            pod("c", None, true, "web"),
            pod("d", Some("100.64.1.7"), true, "other"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let s = desired_slices(&svc, &refs);
        assert_eq!(s.len(), 2);
        let v4 = &s[0];
        assert_eq!(v4.address_type, "IPv4");
        let addrs: Vec<(&str, bool)> = v4
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].as_str(),
                    e.conditions.as_ref().unwrap().ready.unwrap(),
                )
            })
            .collect();
        assert_eq!(addrs, [("100.64.1.5", true), ("100.64.1.6", false)]);
        assert_eq!(v4.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(s[1].endpoints[0].addresses[0], "fd00:64:1::6");
        assert_eq!(
            v4.labels().get(LABEL_PARALLEL_SERVICE).map(String::as_str),
            Some("web")
        );
    }
}
