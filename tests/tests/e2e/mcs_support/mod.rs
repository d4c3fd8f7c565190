//! A fleet for the MCS tests: a hub and two member apiservers (real kube-apiserver + etcd),
//! the CRDs installed from the Rust types, a Peer per member in the hub, and each member's
//! parallel EndpointSlice controller and MCS-Syncer running in-process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fleetboard_control::crd::exported_service::ExportedService;
use fleetboard_control::crd::mcs::{ServiceExport, ServiceExportSpec, ServiceImport};
use fleetboard_control::crd::peer::{Peer, PeerSpec, Transport};
use fleetboard_control::crd::{hub_crds, member_crds};
use fleetboard_control::mcs::{self, EndpointSliceConfig, SyncerConfig};
use fleetboard_control::membership::member_namespace;
use fleetboard_tests::kube::{Cluster, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// Generous: several apiservers on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// Poll interval.
pub const POLL: Duration = Duration::from_millis(250);
/// The hub's shared namespace.
pub const HUB_NS: &str = "fleetboard-system";

/// One member cluster.
pub struct Member {
    /// Cluster id.
    pub id: String,
    /// Its apiserver.
    pub cluster: Cluster,
}

impl Member {
    /// Admin client.
    pub fn client(&self) -> Client {
        self.cluster.client()
    }
}

/// Hub + members with the MCS controllers running.
pub struct Fleet {
    /// The hub apiserver.
    pub hub: Cluster,
    /// Members `a` and `b`.
    pub members: Vec<Member>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn install(client: &Client, crds: Vec<CustomResourceDefinition>) {
    fleetboard_tests::fleet::install_crds(client, crds)
        .await
        .unwrap();
}

impl Fleet {
    /// Starts the three apiservers, installs CRDs and Peers, runs both members' controllers.
    pub async fn start() -> Self {
        let mut clusters = Cluster::start_many(3).await.unwrap();
        let hub = clusters.remove(0);
        install(&hub.client(), hub_crds()).await;
        create_namespace(&hub.client(), HUB_NS).await;
        let members: Vec<Member> = clusters
            .into_iter()
            .zip(["a", "b"])
            .map(|(cluster, id)| Member {
                id: id.to_string(),
                cluster,
            })
            .collect();
        let mut fleet = Fleet {
            hub,
            members,
            tasks: vec![],
        };
        for i in 0..fleet.members.len() {
            install(&fleet.members[i].client(), member_crds()).await;
            let id = fleet.members[i].id.clone();
            fleet.add_peer(&id).await;
            fleet.run_controllers(i);
        }
        fleet
    }

    /// Starts member `i`'s controllers in-process.
    pub fn run_controllers(&mut self, i: usize) {
        let m = &self.members[i];
        let (client, hub, id) = (m.client(), self.hub.client(), m.id.clone());
        let c2 = client.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) =
                mcs::run_endpointslice_controller(c2, EndpointSliceConfig::default()).await
            {
                panic!("endpointslice controller: {e}");
            }
        }));
        let cfg = SyncerConfig::new(id);
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = mcs::run_syncer(client, hub, cfg).await {
                panic!("syncer: {e}");
            }
        }));
    }

    /// Creates the hub Peer of cluster `id` (its liveness for the syncers) and the hub
    /// namespace its exports go to (`kubectl peers join` makes it; the syncers here run with
    /// admin credentials, so nothing else of a join matters).
    pub async fn add_peer(&self, id: &str) {
        let ns = fleetboard_control::membership::member_namespace(id);
        let nss: Api<Namespace> = Api::all(self.hub.client());
        if nss.get_opt(&ns).await.unwrap().is_none() {
            create_namespace(&self.hub.client(), &ns).await;
        }
        let peers: Api<Peer> = Api::namespaced(self.hub.client(), HUB_NS);
        let spec: PeerSpec = serde_json::from_value(json!({ "clusterId": id })).unwrap();
        let mut p = Peer::new(id, spec);
        p.spec.transport = Transport::Wg;
        peers.create(&PostParams::default(), &p).await.unwrap();
    }

    /// Deletes the hub Peer of cluster `id` (the cluster is lost).
    pub async fn remove_peer(&self, id: &str) {
        let peers: Api<Peer> = Api::namespaced(self.hub.client(), HUB_NS);
        peers.delete(id, &DeleteParams::default()).await.unwrap();
    }

    /// Admin client of member `i`.
    pub fn client(&self, i: usize) -> Client {
        self.members[i].client()
    }
}

/// Creates a namespace and its `default` ServiceAccount (no controller-manager here).
pub async fn create_namespace(client: &Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    // The ServiceAccount may be refused for a moment while the namespace settles.
    eventually("default ServiceAccount", DEADLINE, POLL, || async {
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(())),
            Err(_) => Ok(None),
        }
    })
    .await
    .unwrap();
}

/// A Service `name` selecting `app=<name>` with `ports` (name, port, targetPort, protocol).
pub async fn create_service(
    client: &Client,
    ns: &str,
    name: &str,
    ports: &[(&str, i32, i32, &str)],
    headless: bool,
) {
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p, t, proto)| json!({"name": n, "port": p, "targetPort": t, "protocol": proto}))
        .collect();
    let mut spec = json!({ "selector": {"app": name}, "ports": ports });
    if headless {
        spec["clusterIP"] = json!("None");
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// An ExternalName Service.
pub async fn create_external_name_service(client: &Client, ns: &str, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ExternalName", "externalName": "example.com"}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// A pod `name` with label `app=<app>`, parallel address `ip` and readiness `ready`.
pub async fn create_pod(client: &Client, ns: &str, name: &str, app: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                     "annotations": {mcs::PARALLEL_IP_ANNOTATION: ip}},
        "spec": {"hostname": name, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "none"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    set_pod_ready(client, ns, name, ready).await;
}

/// Sets the pod's Ready condition.
pub async fn set_pod_ready(client: &Client, ns: &str, name: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Creates the ServiceExport of `ns/name`.
pub async fn export(client: &Client, ns: &str, name: &str) {
    let mut se = ServiceExport::new(name, ServiceExportSpec::default());
    se.metadata.namespace = Some(ns.into());
    Api::<ServiceExport>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &se)
        .await
        .unwrap();
}

/// Deletes the ServiceExport of `ns/name`.
pub async fn unexport(client: &Client, ns: &str, name: &str) {
    Api::<ServiceExport>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// Waits until the ServiceImport `ns/name` exists and `check` accepts it; returns it.
pub async fn await_import<F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: F,
) -> ServiceImport
where
    F: Fn(&ServiceImport) -> bool,
{
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), ns);
    eventually(what, DEADLINE, POLL, || async {
        Ok(api.get_opt(name).await?.filter(|i| check(i)))
    })
    .await
    .unwrap()
}

/// Waits until the ServiceImport `ns/name` is gone.
pub async fn await_no_import(client: &Client, ns: &str, name: &str, what: &str) {
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), ns);
    eventually(what, DEADLINE, POLL, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .unwrap()
}

/// Asserts that `ns/name` has no ServiceImport once the syncer has gone past its export: a
/// Service exported after it (`<name>-later`) has its import in `client`'s cluster, so an
/// import of `name` would be there by now (each syncer pass takes every export).
pub async fn assert_no_import_after_a_later_export(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
) {
    let later = format!("{name}-later");
    create_service(client, ns, &later, &[("tcp", 42, 42, "TCP")], false).await;
    export(client, ns, &later).await;
    await_import(client, ns, &later, &format!("{later} imported"), |_| true).await;
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), ns);
    assert!(api.get_opt(name).await.unwrap().is_none(), "{what}");
}

/// Waits until the hub API server's clock is in a later second than `t`. Creation timestamps
/// have a one-second resolution: an object the hub creates after this is strictly younger than
/// one created at `t`. The clock is read from the creation timestamp the server gives a
/// dry-run object (nothing is stored).
pub async fn await_hub_clock_past(hub: &Client, t: &Time) {
    let probes: Api<ConfigMap> = Api::namespaced(hub.clone(), HUB_NS);
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut probe = ConfigMap::default();
    probe.metadata.name = Some("clock-probe".into());
    eventually(
        &format!("the hub's clock past {}", t.0),
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let now = probes
                .create(&pp, &probe)
                .await?
                .metadata
                .creation_timestamp;
            Ok(now
                .is_some_and(|now| now.0.as_second() > t.0.as_second())
                .then_some(()))
        },
    )
    .await
    .unwrap()
}

/// The creation time the hub gave cluster `cluster`'s export of `ns/name` (the time conflict
/// resolution orders exports by).
pub async fn hub_export_time(hub: &Client, cluster: &str, ns: &str, name: &str) -> Time {
    let api: Api<ExportedService> = Api::namespaced(hub.clone(), &member_namespace(cluster));
    api.get(&ExportedService::object_name(cluster, ns, name))
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .expect("the hub sets creationTimestamp")
}

/// Waits until the ServiceExport `ns/name` has condition `type_` with `status`; returns
/// its reason.
pub async fn await_export_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> String {
    let api: Api<ServiceExport> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("ServiceExport {ns}/{name} {type_}={status}"),
        DEADLINE,
        POLL,
        || async {
            let se = api.get(name).await?;
            Ok(se
                .status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.reason))
        },
    )
    .await
    .unwrap()
}

/// The MCS EndpointSlices of `ns/service` (by the MCS service-name label), by source cluster.
pub async fn mcs_slices(
    client: &Client,
    ns: &str,
    service: &str,
) -> BTreeMap<String, Vec<EndpointSlice>> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{}={service}",
        fleetboard_control::crd::mcs::LABEL_SERVICE_NAME
    ));
    let mut out: BTreeMap<String, Vec<EndpointSlice>> = BTreeMap::new();
    for s in api.list(&lp).await.unwrap().items {
        let c = s
            .labels()
            .get(fleetboard_control::crd::mcs::LABEL_SOURCE_CLUSTER)
            .cloned()
            .unwrap_or_default();
        out.entry(c).or_default().push(s);
    }
    out
}

/// Ready addresses of a set of slices, sorted.
pub fn ready_addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut v: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    v.sort();
    v
}

/// A named scenario.
pub type Scenario<'a> = (
    &'static str,
    std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
);

/// Runs named scenarios concurrently; a failure names its scenario.
pub async fn run_scenarios(scenarios: Vec<Scenario<'_>>) {
    let handles = scenarios.into_iter().map(|(name, fut)| async move {
        eprintln!("scenario: {name} ...");
        fut.await;
        eprintln!("scenario: {name} ok");
    });
    futures::future::join_all(handles).await;
}
