//! Pure planning of the MCS-Syncer: export validity, the hub carrier object, conflict
//! resolution between exports of the same Service, and the ServiceImport with its MCS
//! EndpointSlices. No API calls here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{LABEL_SLICE_MANAGED_BY, MCS_MANAGED_BY};
use crate::crd::exported_service::{ExportedEndpoints, ExportedPort, ExportedServiceSpec};
use crate::crd::mcs::{
    CONDITION_CONFLICT, CONDITION_READY, CONDITION_VALID, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER,
    REASON_EXPORTED, REASON_INVALID_SERVICE_TYPE, REASON_NO_CONFLICTS, REASON_NO_SERVICE,
    REASON_PENDING, REASON_PORT_CONFLICT, REASON_SESSION_AFFINITY_CONFLICT, REASON_TYPE_CONFLICT,
    REASON_VALID, ServiceImportType, ServicePort,
};

/// Why a ServiceExport is not valid: `(reason, message)`.
pub type Invalid = (&'static str, String);

/// The import type of an exportable Service, or why it cannot be exported.
pub fn validate(svc: Option<&Service>) -> Result<ServiceImportType, Invalid> {
    let Some(svc) = svc else {
        return Err((
            REASON_NO_SERVICE,
            "no Service of that name in the namespace".into(),
        ));
    };
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err((
            REASON_INVALID_SERVICE_TYPE,
            "ExternalName Services cannot be exported".into(),
        ));
    }
    Ok(if spec.cluster_ip.as_deref() == Some("None") {
        ServiceImportType::Headless
    } else {
        ServiceImportType::ClusterSetIP
    })
}

/// The ExportedService spec of a valid export: the Service's ports (target ports from the
/// parallel slices) and the parallel endpoints.
pub fn exported_spec(
    cluster_id: &str,
    type_: ServiceImportType,
    svc: &Service,
    parallel: &[&EndpointSlice],
) -> ExportedServiceSpec {
    let spec = svc.spec.clone().unwrap_or_default();
    let slice_ports: Vec<&EndpointPort> = parallel
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .collect();
    let mut ports: Vec<ExportedPort> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let target = slice_ports
                .iter()
                .find(|sp| sp.name.clone().unwrap_or_default() == name)
                .and_then(|sp| sp.port)
                .unwrap_or(p.port);
            ExportedPort {
                name,
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol,
                port: p.port,
                target_port: target,
            }
        })
        .collect();
    ports.sort();
    let mut eps: Vec<(String, bool, String)> = parallel
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let host = e.hostname.clone().unwrap_or_default();
            e.addresses
                .iter()
                .map(move |a| (a.clone(), ready, host.clone()))
        })
        .collect();
    eps.sort();
    eps.dedup_by(|a, b| a.0 == b.0);
    ExportedServiceSpec {
        cluster_id: cluster_id.into(),
        namespace: svc.namespace().unwrap_or_default(),
        service: svc.name_any(),
        type_,
        ports,
        session_affinity: spec.session_affinity.filter(|s| s != "None"),
        export_creation_time: None,
        endpoints: ExportedEndpoints {
            addresses: eps.iter().map(|e| e.0.clone()).collect(),
            ready: eps.iter().map(|e| e.1).collect(),
            hostnames: eps.iter().map(|e| e.2.clone()).collect(),
        },
    }
}

/// The merged view of every cluster's export of one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The oldest export's cluster: it wins every conflict.
    pub winner: String,
    /// The import type (the winner's).
    pub type_: ServiceImportType,
    /// Union of the ports by name; a name defined differently takes the winner's (older)
    /// definition.
    pub ports: Vec<ServicePort>,
    /// The winner's session affinity.
    pub session_affinity: Option<String>,
    /// Exporting clusters, sorted.
    pub clusters: Vec<String>,
    /// The conflict reasons (comma-joined) and message, if any; reported on every export.
    pub conflict: Option<(String, String)>,
}

/// Resolves the exports of one Service (the oldest export wins; ties by cluster id; an export
/// without a creation time, not yet seen by the hub, counts as the youngest).
pub fn resolve(exports: &[&ExportedServiceSpec]) -> Option<Resolution> {
    let mut sorted: Vec<&ExportedServiceSpec> = exports.to_vec();
    sorted.sort_by(|a, b| {
        let key = |e: &ExportedServiceSpec| {
            let t = e.export_creation_time.as_ref().map(|t| t.0);
            (t.is_none(), t)
        };
        (key(a), &a.cluster_id).cmp(&(key(b), &b.cluster_id))
    });
    let winner = *sorted.first()?;
    let mut ports: BTreeMap<String, ServicePort> = BTreeMap::new();
    let mut reasons: Vec<&'static str> = Vec::new();
    let mut add = |r: &'static str| {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    };
    for e in &sorted {
        if e.type_ != winner.type_ {
            add(REASON_TYPE_CONFLICT);
        }
        if e.session_affinity != winner.session_affinity {
            add(REASON_SESSION_AFFINITY_CONFLICT);
        }
        for p in &e.ports {
            let sp = ServicePort {
                name: p.name.clone(),
                protocol: Some(p.protocol.clone()),
                app_protocol: p.app_protocol.clone(),
                port: p.port,
            };
            match ports.get(&p.name) {
                None => {
                    ports.insert(p.name.clone(), sp);
                }
                Some(have) if have.port != sp.port || have.protocol() != sp.protocol() => {
                    add(REASON_PORT_CONFLICT);
                }
                Some(_) => {}
            }
        }
    }
    let mut clusters: Vec<String> = sorted.iter().map(|e| e.cluster_id.clone()).collect();
    clusters.sort();
    clusters.dedup();
    let conflict = (!reasons.is_empty()).then(|| {
        (
            reasons.join(","),
            format!(
                "exports of {}/{} disagree ({}); the oldest export, from cluster {:?}, wins",
                winner.namespace,
                winner.service,
                reasons.join(", "),
                winner.cluster_id
            ),
        )
    });
    Some(Resolution {
        winner: winner.cluster_id.clone(),
        type_: winner.type_,
        ports: ports.into_values().collect(),
        session_affinity: winner.session_affinity.clone(),
        clusters,
        conflict,
    })
}

/// The MCS EndpointSlice name of `cluster`'s endpoints of `service` for `family`.
pub fn import_slice_name(service: &str, cluster: &str, family: &str) -> String {
    let name = format!("{service}-{cluster}-{family}");
    if name.len() <= 253 {
        name
    } else {
        // Keep names valid for very long service/cluster names: cut and keep the family.
        format!("{}-{family}", &name[..240])
    }
}

/// The MCS EndpointSlices of one ServiceImport in namespace `ns`: per exporting cluster and
/// IP family, labelled with the service name and source cluster (owner set by the caller).
pub fn import_slices(
    ns: &str,
    res: &Resolution,
    exports: &[&ExportedServiceSpec],
) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    for e in exports {
        let ports: Vec<EndpointPort> = res
            .ports
            .iter()
            .map(|p| {
                let target = e
                    .ports
                    .iter()
                    .find(|ep| ep.name == p.name)
                    .map(|ep| ep.target_port)
                    .filter(|t| *t != 0)
                    .unwrap_or(p.port);
                EndpointPort {
                    name: Some(p.name.clone()),
                    protocol: Some(p.protocol().to_string()),
                    port: Some(target),
                    app_protocol: p.app_protocol.clone(),
                }
            })
            .collect();
        for (family, v6) in [("ipv4", false), ("ipv6", true)] {
            let endpoints: Vec<Endpoint> = e
                .endpoints
                .addresses
                .iter()
                .enumerate()
                .filter(|(_, a)| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() == v6))
                .map(|(i, a)| {
                    let ready = e.endpoints.ready.get(i).copied().unwrap_or(true);
                    let host = e
                        .endpoints
                        .hostnames
                        .get(i)
                        .filter(|h| !h.is_empty())
                        .cloned();
                    Endpoint {
                        addresses: vec![a.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        hostname: host,
                        ..Default::default()
                    }
                })
                .collect();
            if endpoints.is_empty() && (v6 || !e.endpoints.addresses.is_empty()) {
                continue;
            }
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(import_slice_name(&e.service, &e.cluster_id, family)),
                    namespace: Some(ns.into()),
                    labels: Some(BTreeMap::from([
                        (LABEL_SERVICE_NAME.to_string(), e.service.clone()),
                        (LABEL_SOURCE_CLUSTER.to_string(), e.cluster_id.clone()),
                        (
                            LABEL_SLICE_MANAGED_BY.to_string(),
                            MCS_MANAGED_BY.to_string(),
                        ),
                    ])),
                    ..Default::default()
                },
                address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
                endpoints,
                ports: Some(ports.clone()),
            });
        }
    }
    out
}

/// Where one export stands, for its conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportState {
    /// `Err` when not valid.
    pub valid: Result<(), Invalid>,
    /// Pushed to the hub.
    pub exported: bool,
    /// Conflict reasons and message, if any.
    pub conflict: Option<(String, String)>,
}

/// The ServiceExport conditions for `state`, keeping `lastTransitionTime` of conditions whose
/// status did not change.
pub fn export_conditions(state: &ExportState, old: &[Condition], now: &Time) -> Vec<Condition> {
    let (vs, vr, vm) = match &state.valid {
        Ok(()) => (
            "True",
            REASON_VALID,
            "the Service can be exported".to_string(),
        ),
        Err((r, m)) => ("False", *r, m.clone()),
    };
    let (rs, rr, rm) = if state.exported {
        (
            "True",
            REASON_EXPORTED,
            "exported to the cluster set".to_string(),
        )
    } else if state.valid.is_err() {
        (
            "False",
            REASON_PENDING,
            "not exported: the export is not valid".to_string(),
        )
    } else {
        ("False", REASON_PENDING, "being exported".to_string())
    };
    let (cs, cr, cm) = match &state.conflict {
        Some((r, m)) => ("True", r.as_str(), m.clone()),
        None => ("False", REASON_NO_CONFLICTS, "no conflicts".to_string()),
    };
    [
        (CONDITION_VALID, vs, vr, vm),
        (CONDITION_READY, rs, rr, rm),
        (CONDITION_CONFLICT, cs, cr, cm),
    ]
    .into_iter()
    .map(|(t, s, r, m)| {
        let prev = old.iter().find(|c| c.type_ == t && c.status == s);
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: m,
            last_transition_time: prev
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone()),
            observed_generation: None,
        }
    })
    .collect()
}

/// True when two condition lists say the same (ignoring times).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn spec(
        cluster: &str,
        secs: i64,
        type_: ServiceImportType,
        ports: &[(&str, i32)],
    ) -> ExportedServiceSpec {
        ExportedServiceSpec {
            cluster_id: cluster.into(),
            namespace: "ns".into(),
            service: "hello".into(),
            type_,
            ports: ports
                .iter()
                .map(|(n, p)| ExportedPort {
                    name: n.to_string(),
                    protocol: "TCP".into(),
                    app_protocol: None,
                    port: *p,
                    target_port: 8080,
                })
                .collect(),
            session_affinity: None,
            export_creation_time: Some(Time(Timestamp::from_second(secs).unwrap())),
            endpoints: ExportedEndpoints {
                addresses: vec!["100.64.1.5".into(), "fd00::5".into()],
                ready: vec![true, false],
                hostnames: vec!["h0".into(), String::new()],
            },
        }
    }

    #[test]
    fn oldest_export_wins_port_and_type_conflicts() {
        let a = spec("a", 100, ServiceImportType::ClusterSetIP, &[("tcp", 42)]);
        let b = spec(
            "b",
            50,
            ServiceImportType::Headless,
            &[("tcp", 43), ("x", 7)],
        );
        let r = resolve(&[&a, &b]).unwrap();
        assert_eq!(r.winner, "b");
        assert_eq!(r.type_, ServiceImportType::Headless);
        let ports: Vec<(String, i32)> = r.ports.iter().map(|p| (p.name.clone(), p.port)).collect();
        assert_eq!(ports, [("tcp".to_string(), 43), ("x".to_string(), 7)]);
        let (reasons, msg) = r.conflict.unwrap();
        assert_eq!(reasons, "TypeConflict,PortConflict");
        assert!(msg.contains("\"b\""), "{msg}");
    }

    #[test]
    fn same_ports_union_without_conflict() {
        let a = spec("a", 1, ServiceImportType::ClusterSetIP, &[("tcp", 42)]);
        let b = spec(
            "b",
            2,
            ServiceImportType::ClusterSetIP,
            &[("tcp", 42), ("sctp", 142)],
        );
        let r = resolve(&[&a, &b]).unwrap();
        assert!(r.conflict.is_none());
        assert_eq!(r.ports.len(), 2);
        assert_eq!(r.clusters, ["a", "b"]);
    }

    #[test]
    fn slices_per_cluster_and_family_with_mcs_labels() {
        let a = spec("a", 1, ServiceImportType::ClusterSetIP, &[("tcp", 42)]);
        let r = resolve(&[&a]).unwrap();
        let s = import_slices("ns", &r, &[&a]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name_any(), "hello-a-ipv4");
        assert_eq!(s[0].labels()[LABEL_SOURCE_CLUSTER], "a");
        assert_eq!(s[0].labels()[LABEL_SERVICE_NAME], "hello");
        assert_eq!(s[0].endpoints[0].hostname.as_deref(), Some("h0"));
        assert_eq!(s[0].ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(
            s[1].endpoints[0].conditions.as_ref().unwrap().ready,
            Some(false)
        );
    }

    #[test]
    fn external_name_is_invalid_and_missing_service_reported() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.com"}
        }))
        .unwrap();
        assert_eq!(
            validate(Some(&svc)).unwrap_err().0,
            REASON_INVALID_SERVICE_TYPE
        );
        assert_eq!(validate(None).unwrap_err().0, REASON_NO_SERVICE);
        let now = Time(Timestamp::from_second(5).unwrap());
        let c = export_conditions(
            &ExportState {
                valid: validate(Some(&svc)).map(|_| ()),
                exported: false,
                conflict: None,
            },
            &[],
            &now,
        );
        assert_eq!(c[0].status, "False");
        assert_eq!(c[0].reason, REASON_INVALID_SERVICE_TYPE);
    }
}
