//! The MCS-Syncer: member exports -> hub `ExportedService`s -> ServiceImports and MCS
//! EndpointSlices in every member namespace that exists, plus ServiceExport conditions.
//!
//! One pass (after any watched change, or every [`super::RESYNC`]):
//! 1. each local ServiceExport is validated against its Service; valid ones become this
//!    cluster's ExportedServices in the hub (stale ones of this cluster are deleted);
//! 2. every cluster's exports (only clusters with a hub Peer when `require_peer`: a deleted
//!    Peer is a lost cluster) are grouped per Service and resolved (oldest export wins);
//! 3. in every existing namespace of such a Service: the ServiceImport (ClusterSetIP from the
//!    service block, `status.clusters`) and its MCS EndpointSlices (owned by it); ours that are
//!    no longer wanted are deleted, slices too (no garbage collector is assumed);
//! 4. ServiceExport conditions Valid / Ready / Conflict.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use super::plan::{self, ExportState, Resolution};
use super::{
    LABEL_MANAGED_BY, LABEL_PARALLEL_SERVICE, LABEL_SLICE_MANAGED_BY, MANAGED_BY_VALUE,
    MCS_MANAGED_BY, McsError, PARALLEL_MANAGED_BY, SyncerConfig, trigger, vip,
};
use crate::crd::exported_service::{ExportedService, ExportedServiceSpec};
use crate::crd::mcs::{
    ClusterStatus, ServiceExport, ServiceImport, ServiceImportSpec, ServiceImportStatus,
    ServiceImportType,
};
use crate::crd::peer::Peer;
use crate::membership::member_namespace;
use crate::watch::cache;

/// Field manager of everything the syncer writes.
pub const FIELD_MANAGER: &str = "fleetboard.io/mcs-syncer";
/// Label on ExportedServices: the exporting cluster.
pub const LABEL_CLUSTER: &str = "fleetboard.io/cluster";

struct Caches {
    exports: Store<ServiceExport>,
    services: Store<Service>,
    parallel: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    imports: Store<ServiceImport>,
    slices: Store<EndpointSlice>,
    hub_exports: Store<ExportedService>,
    peers: Option<Store<Peer>>,
}

/// Runs the MCS-Syncer of cluster `cfg.cluster_id` between its `member` API and the `hub` API
/// until an unrecoverable error (failed passes are logged and retried).
pub async fn run_syncer(member: Client, hub: Client, cfg: SyncerConfig) -> Result<(), McsError> {
    if cfg.cluster_id.is_empty() {
        return Err(McsError::Config {
            field: "cluster_id",
            problem: "must not be empty".into(),
        });
    }
    let mut families = BTreeSet::new();
    for c in &cfg.service_cidrs {
        if !families.insert(c.addr().is_ipv6()) {
            return Err(McsError::Config {
                field: "service_cidr",
                problem: format!("{c}: at most one block per IP family"),
            });
        }
    }
    let wake = Arc::new(Notify::new());
    let c = Caches {
        exports: cache(
            Api::all(member.clone()),
            None,
            "member API (service exports)",
            &wake,
        ),
        services: cache(
            Api::all(member.clone()),
            None,
            "member API (services)",
            &wake,
        ),
        parallel: cache(
            Api::all(member.clone()),
            Some(&format!("{LABEL_SLICE_MANAGED_BY}={PARALLEL_MANAGED_BY}")),
            "member API (parallel endpoint slices)",
            &wake,
        ),
        namespaces: cache(
            Api::all(member.clone()),
            None,
            "member API (namespaces)",
            &wake,
        ),
        imports: cache(
            Api::all(member.clone()),
            Some(&format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")),
            "member API (service imports)",
            &wake,
        ),
        slices: cache(
            Api::all(member.clone()),
            Some(&format!("{LABEL_SLICE_MANAGED_BY}={MCS_MANAGED_BY}")),
            "member API (MCS endpoint slices)",
            &wake,
        ),
        // Every member's exports, each in its own namespace on the hub.
        hub_exports: cache(Api::all(hub.clone()), None, "hub API (exports)", &wake),
        peers: cfg.require_peer.then(|| {
            cache(
                Api::namespaced(hub.clone(), &cfg.hub_namespace),
                None,
                "hub API (peers)",
                &wake,
            )
        }),
    };
    trigger::ready(&c.exports).await?;
    trigger::ready(&c.services).await?;
    trigger::ready(&c.parallel).await?;
    trigger::ready(&c.namespaces).await?;
    trigger::ready(&c.imports).await?;
    trigger::ready(&c.slices).await?;
    trigger::ready(&c.hub_exports).await?;
    if let Some(p) = &c.peers {
        trigger::ready(p).await?;
    }
    tracing::info!(cluster = %cfg.cluster_id, "MCS-Syncer running");
    let s = Syncer {
        member,
        hub,
        cfg,
        pp: PatchParams::apply(FIELD_MANAGER).force(),
    };
    loop {
        let failures = s.pass(&c).await;
        if failures > 0 {
            tracing::warn!(failures, "MCS-Syncer pass incomplete; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        } else {
            trigger::next_pass(&wake).await;
        }
    }
}

/// An export's spec with the creation time the hub's API server gave its object (conflict
/// resolution trusts no time a member states).
fn with_hub_time(h: &ExportedService) -> ExportedServiceSpec {
    let mut spec = h.spec.clone();
    spec.export_creation_time = h.metadata.creation_timestamp.clone();
    spec
}

struct Syncer {
    member: Client,
    hub: Client,
    cfg: SyncerConfig,
    pp: PatchParams,
}

type Key = (String, String);

fn key_of<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn log_err(what: &str, e: &kube::Error, failures: &mut usize) {
    if matches!(e, kube::Error::Api(s) if s.code == 404) {
        return;
    }
    tracing::warn!(error = %e, "{what}");
    *failures += 1;
}

impl Syncer {
    /// One full pass; returns how many API calls failed.
    async fn pass(&self, c: &Caches) -> usize {
        let mut failures = 0;
        let me = self.cfg.cluster_id.as_str();
        let now = Time(k8s_openapi::jiff::Timestamp::now());

        // 1. Local exports -> this cluster's ExportedServices.
        let services: BTreeMap<Key, Arc<Service>> = c
            .services
            .state()
            .into_iter()
            .map(|s| (key_of(s.as_ref()), s))
            .collect();
        let parallel = c.parallel.state();
        let mut validity: BTreeMap<Key, Result<(), plan::Invalid>> = BTreeMap::new();
        let mut mine: BTreeMap<String, ExportedServiceSpec> = BTreeMap::new();
        let exports = c.exports.state();
        for se in &exports {
            let key = key_of(se.as_ref());
            let svc = services.get(&key);
            match plan::validate(svc.map(|s| s.as_ref())) {
                Ok(type_) => {
                    let svc = svc.expect("valid means found");
                    let slices: Vec<&EndpointSlice> = parallel
                        .iter()
                        .filter(|s| {
                            s.namespace().as_deref() == Some(key.0.as_str())
                                && s.labels().get(LABEL_PARALLEL_SERVICE) == Some(&key.1)
                        })
                        .map(|s| s.as_ref())
                        .collect();
                    let spec = plan::exported_spec(me, type_, svc, &slices);
                    mine.insert(ExportedService::object_name(me, &key.0, &key.1), spec);
                    validity.insert(key, Ok(()));
                }
                Err(invalid) => {
                    validity.insert(key, Err(invalid));
                }
            }
        }
        let own_namespace = member_namespace(me);
        let hub_api: Api<ExportedService> = Api::namespaced(self.hub.clone(), &own_namespace);
        // Only what each member wrote in its own namespace under its own id counts (the hub's
        // admission policy refuses anything else from members; this also ignores stray objects).
        let hub_have: Vec<Arc<ExportedService>> = c
            .hub_exports
            .state()
            .into_iter()
            .filter(|h| {
                h.namespace().as_deref() == Some(member_namespace(&h.spec.cluster_id).as_str())
            })
            .collect();
        let mut pushed: BTreeSet<Key> = BTreeSet::new();
        for (name, spec) in &mine {
            let same = hub_have
                .iter()
                .any(|h| &h.name_any() == name && &h.spec == spec);
            let ok = same || {
                let mut obj = ExportedService::new(name, spec.clone());
                obj.metadata.namespace = Some(own_namespace.clone());
                obj.metadata.labels = Some(BTreeMap::from([(LABEL_CLUSTER.into(), me.into())]));
                match hub_api.patch(name, &self.pp, &Patch::Apply(&obj)).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        tracing::warn!(
                            namespace = %own_namespace,
                            "the hub has no namespace for this member's exports: was it joined \
                             (kubectl peers join {me})?"
                        );
                        failures += 1;
                        false
                    }
                    Err(e) => {
                        log_err("pushing an ExportedService to the hub", &e, &mut failures);
                        false
                    }
                }
            };
            if ok {
                pushed.insert((spec.namespace.clone(), spec.service.clone()));
            }
        }
        for h in &hub_have {
            if h.spec.cluster_id == me
                && !mine.contains_key(&h.name_any())
                && let Err(e) = hub_api
                    .delete(&h.name_any(), &DeleteParams::default())
                    .await
            {
                log_err(
                    "deleting an ExportedService from the hub",
                    &e,
                    &mut failures,
                );
            }
        }

        // 2. Everyone's exports, grouped per Service and resolved.
        let live: Option<BTreeSet<String>> = c
            .peers
            .as_ref()
            .map(|p| p.state().iter().map(|p| p.name_any()).collect());
        let mut groups: BTreeMap<Key, Vec<ExportedServiceSpec>> = BTreeMap::new();
        for h in &hub_have {
            let id = &h.spec.cluster_id;
            if id == me || live.as_ref().is_some_and(|l| !l.contains(id)) {
                continue;
            }
            groups
                .entry((h.spec.namespace.clone(), h.spec.service.clone()))
                .or_default()
                .push(with_hub_time(h));
        }
        for (name, spec) in &mine {
            // The time the hub first saw this export (every member resolves by the same times).
            let mut spec = spec.clone();
            spec.export_creation_time = hub_have
                .iter()
                .find(|h| h.spec.cluster_id == me && &h.name_any() == name)
                .and_then(|h| h.metadata.creation_timestamp.clone());
            groups
                .entry((spec.namespace.clone(), spec.service.clone()))
                .or_default()
                .push(spec);
        }
        let resolved: BTreeMap<Key, (Resolution, Vec<ExportedServiceSpec>)> = groups
            .into_iter()
            .filter_map(|(k, v)| {
                let refs: Vec<&ExportedServiceSpec> = v.iter().collect();
                plan::resolve(&refs).map(|r| (k, (r, v)))
            })
            .collect();

        // 3. ServiceImports and slices in the namespaces that exist.
        let namespaces: BTreeSet<String> = c
            .namespaces
            .state()
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| n.name_any())
            .collect();
        let imports_have: BTreeMap<Key, Arc<ServiceImport>> = c
            .imports
            .state()
            .into_iter()
            .map(|i| (key_of(i.as_ref()), i))
            .collect();
        let wanted: BTreeMap<&Key, &(Resolution, Vec<ExportedServiceSpec>)> = resolved
            .iter()
            .filter(|(k, _)| namespaces.contains(&k.0))
            .collect();
        let vip_keys: BTreeMap<String, Vec<IpAddr>> = wanted
            .iter()
            .filter(|(_, (r, _))| r.type_ == ServiceImportType::ClusterSetIP)
            .map(|(k, _)| {
                let have = imports_have
                    .get(*k)
                    .map(|i| i.spec.ips.iter().filter_map(|s| s.parse().ok()).collect())
                    .unwrap_or_default();
                (format!("{}/{}", k.0, k.1), have)
            })
            .collect();
        let vips = vip::allocate(&self.cfg.service_cidrs, &vip_keys);
        let mut slices_want: BTreeMap<Key, EndpointSlice> = BTreeMap::new();
        for (key, (res, specs)) in &wanted {
            let ips = vips
                .get(&format!("{}/{}", key.0, key.1))
                .cloned()
                .unwrap_or_default();
            let spec = ServiceImportSpec {
                ports: res.ports.clone(),
                ips: ips.iter().map(|i| i.to_string()).collect(),
                type_: res.type_,
                session_affinity: Some(
                    res.session_affinity
                        .clone()
                        .unwrap_or_else(|| "None".into()),
                ),
                session_affinity_config: None,
                ip_families: ips
                    .iter()
                    .map(|i| if i.is_ipv6() { "IPv6" } else { "IPv4" }.to_string())
                    .collect(),
            };
            let status = ServiceImportStatus {
                clusters: res
                    .clusters
                    .iter()
                    .map(|c| ClusterStatus { cluster: c.clone() })
                    .collect(),
                conditions: vec![],
            };
            let Some(import) = self
                .apply_import(key, spec, status, imports_have.get(*key), &mut failures)
                .await
            else {
                continue;
            };
            let owner = import
                .controller_owner_ref(&())
                .map(|mut o: OwnerReference| {
                    o.block_owner_deletion = Some(false);
                    o
                });
            let refs: Vec<&ExportedServiceSpec> = specs.iter().collect();
            for mut s in plan::import_slices(&key.0, res, &refs) {
                s.metadata.owner_references = owner.clone().map(|o| vec![o]);
                slices_want.insert(key_of(&s), s);
            }
        }
        let slices_have = c.slices.state();
        for (key, s) in &slices_want {
            let same = slices_have.iter().any(|h| {
                key_of(h.as_ref()) == *key
                    && super::endpoints::slice_matches(h, s)
                    && h.metadata.owner_references == s.metadata.owner_references
            });
            if !same {
                let api: Api<EndpointSlice> = Api::namespaced(self.member.clone(), &key.0);
                if let Err(e) = api.patch(&key.1, &self.pp, &Patch::Apply(s)).await {
                    log_err("applying an MCS EndpointSlice", &e, &mut failures);
                }
            }
        }
        for h in &slices_have {
            let key = key_of(h.as_ref());
            if !slices_want.contains_key(&key) {
                let api: Api<EndpointSlice> = Api::namespaced(self.member.clone(), &key.0);
                if let Err(e) = api.delete(&key.1, &DeleteParams::default()).await {
                    log_err("deleting an MCS EndpointSlice", &e, &mut failures);
                }
            }
        }
        for key in imports_have.keys() {
            if !wanted.contains_key(key) {
                let api: Api<ServiceImport> = Api::namespaced(self.member.clone(), &key.0);
                if let Err(e) = api.delete(&key.1, &DeleteParams::default()).await {
                    log_err("deleting a ServiceImport", &e, &mut failures);
                }
            }
        }

        // 4. ServiceExport conditions.
        for se in &exports {
            let key = key_of(se.as_ref());
            let valid = validity.get(&key).cloned().unwrap_or(Ok(()));
            let conflict = if valid.is_ok() {
                resolved.get(&key).and_then(|(r, _)| r.conflict.clone())
            } else {
                None
            };
            let state = ExportState {
                valid,
                exported: pushed.contains(&key),
                conflict,
            };
            let old = se
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let conditions = plan::export_conditions(&state, &old, &now);
            if plan::same_conditions(&old, &conditions) {
                continue;
            }
            let api: Api<ServiceExport> = Api::namespaced(self.member.clone(), &key.0);
            let patch = json!({ "status": { "conditions": conditions } });
            if let Err(e) = api
                .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                log_err("writing ServiceExport status", &e, &mut failures);
            }
        }
        failures
    }

    /// Applies one ServiceImport (spec, then status when it changed); returns it as stored.
    async fn apply_import(
        &self,
        key: &Key,
        spec: ServiceImportSpec,
        status: ServiceImportStatus,
        have: Option<&Arc<ServiceImport>>,
        failures: &mut usize,
    ) -> Option<ServiceImport> {
        let api: Api<ServiceImport> = Api::namespaced(self.member.clone(), &key.0);
        let mut current = match have {
            Some(h) if h.spec == spec => h.as_ref().clone(),
            _ => {
                let obj = ServiceImport {
                    metadata: ObjectMeta {
                        name: Some(key.1.clone()),
                        namespace: Some(key.0.clone()),
                        labels: Some(BTreeMap::from([(
                            LABEL_MANAGED_BY.to_string(),
                            MANAGED_BY_VALUE.to_string(),
                        )])),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                };
                match api.patch(&key.1, &self.pp, &Patch::Apply(&obj)).await {
                    Ok(o) => o,
                    Err(e) => {
                        log_err("applying a ServiceImport", &e, failures);
                        return None;
                    }
                }
            }
        };
        let have_clusters = current
            .status
            .as_ref()
            .map(|s| s.clusters.clone())
            .unwrap_or_default();
        if have_clusters != status.clusters {
            let patch = json!({ "status": { "clusters": status.clusters } });
            match api
                .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(o) => current = o,
                Err(e) => log_err("writing ServiceImport status", &e, failures),
            }
        }
        Some(current)
    }
}
