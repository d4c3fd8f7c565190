//! The Required cases of the mcs-api conformance suite (sigs.k8s.io/mcs-api/conformance),
//! played against FleetBoard's MCS controllers on real apiservers: a hub and members `a` and
//! `b`, the parallel EndpointSlice controller and the MCS-Syncer of each member in-process.
//! One fleet per test binary; the scenarios run concurrently, each in its own namespace, and
//! are named after the conformance cases. The "lost cluster" scenario runs last (it removes a
//! member from the cluster set).

use crate::mcs_support::*;
use fleetboard_control::crd::mcs::{
    CONDITION_CONFLICT, CONDITION_READY, CONDITION_VALID, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER,
    REASON_INVALID_SERVICE_TYPE, ServiceImportType,
};
use fleetboard_control::mcs::{LABEL_SLICE_MANAGED_BY, MCS_MANAGED_BY};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

fn ports_of(i: &fleetboard_control::crd::mcs::ServiceImport) -> Vec<(String, i32, String)> {
    let mut v: Vec<_> = i
        .spec
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.port, p.protocol().to_string()))
        .collect();
    v.sort();
    v
}

/// Exporting a ClusterIP service should create a ServiceImport of type ClusterSetIP in the
/// service's namespace in each cluster (with an IP, the service's ports and session affinity,
/// and MCS EndpointSlices). Unexporting should delete the ServiceImport (and the slices).
async fn exporting_a_clusterip_service_creates_a_clusterset_ip_import_in_each_cluster(f: &Fleet) {
    let ns = "mcs-clusterip";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 8042, "TCP")], false).await;
    create_pod(&a, ns, "hello-0", "hello", "100.64.1.10", true).await;
    create_pod(&a, ns, "hello-1", "hello", "100.64.1.11", false).await;
    // A same-named Service in b that is not exported: never part of the import.
    create_service(&b, ns, "hello", &[("tcp", 42, 8042, "TCP")], false).await;
    create_pod(&b, ns, "hello-0", "hello", "100.64.2.10", true).await;
    export(&a, ns, "hello").await;

    for (c, name) in [(&a, "a"), (&b, "b")] {
        let imp = await_import(
            c,
            ns,
            "hello",
            &format!("ClusterSetIP import in {name}"),
            |i| i.status.as_ref().is_some_and(|s| !s.clusters.is_empty()),
        )
        .await;
        assert_eq!(imp.spec.type_, ServiceImportType::ClusterSetIP, "in {name}");
        // An IP should be allocated for a ClusterSetIP ServiceImport.
        assert!(!imp.spec.ips.is_empty(), "no ClusterSetIP in {name}");
        imp.spec.ips[0].parse::<std::net::IpAddr>().unwrap();
        // The ports for a ClusterSetIP ServiceImport should match those of the exported service.
        assert_eq!(ports_of(&imp), [("tcp".into(), 42, "TCP".into())]);
        // The SessionAffinity should match the exported service's (None).
        assert_eq!(imp.spec.session_affinity.as_deref(), Some("None"));
        let clusters: Vec<_> = imp
            .status
            .unwrap()
            .clusters
            .into_iter()
            .map(|c| c.cluster)
            .collect();
        assert_eq!(clusters, ["a"]);
        // MCS EndpointSlices with the required labels, owned by the import, a's endpoints only.
        let slices = eventually_slices(c, ns, "hello", |s| {
            s.get("a")
                .is_some_and(|v| !v.is_empty() && v[0].endpoints.len() == 2)
        })
        .await;
        assert_eq!(
            slices.keys().collect::<Vec<_>>(),
            ["a"],
            "only a's endpoints in {name}"
        );
        let s = &slices["a"][0];
        assert_eq!(s.labels()[LABEL_SERVICE_NAME], "hello");
        assert_eq!(s.labels()[LABEL_SOURCE_CLUSTER], "a");
        assert_eq!(s.labels()[LABEL_SLICE_MANAGED_BY], MCS_MANAGED_BY);
        assert_eq!(ready_addresses(&slices["a"]), ["100.64.1.10"]);
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8042));
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ServiceImport", "hello")
        );
    }
    let reason = await_export_condition(&a, ns, "hello", CONDITION_VALID, "True").await;
    assert_eq!(reason, "Valid");
    await_export_condition(&a, ns, "hello", CONDITION_READY, "True").await;
    await_export_condition(&a, ns, "hello", CONDITION_CONFLICT, "False").await;

    // Readiness follows the pods.
    set_pod_ready(&a, ns, "hello-1", true).await;
    eventually_slices(&b, ns, "hello", |s| {
        s.get("a")
            .is_some_and(|v| ready_addresses(v) == ["100.64.1.10", "100.64.1.11"])
    })
    .await;

    unexport(&a, ns, "hello").await;
    for (c, name) in [(&a, "a"), (&b, "b")] {
        await_no_import(
            c,
            ns,
            "hello",
            &format!("import gone from {name} after unexport"),
        )
        .await;
        eventually_slices(c, ns, "hello", |s| s.is_empty()).await;
    }
    // Nothing parallel is left for the unexported Service either.
    let api: Api<EndpointSlice> = Api::namespaced(a.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{LABEL_SLICE_MANAGED_BY}={}",
        fleetboard_control::mcs::PARALLEL_MANAGED_BY
    ));
    fleetboard_tests::kube::eventually("parallel slices gone", DEADLINE, POLL, || async {
        Ok(api.list(&lp).await?.items.is_empty().then_some(()))
    })
    .await
    .unwrap();
}

async fn eventually_slices<F>(
    c: &kube::Client,
    ns: &str,
    svc: &str,
    check: F,
) -> std::collections::BTreeMap<String, Vec<EndpointSlice>>
where
    F: Fn(&std::collections::BTreeMap<String, Vec<EndpointSlice>>) -> bool,
{
    fleetboard_tests::kube::eventually(
        &format!("MCS slices of {ns}/{svc}"),
        DEADLINE,
        POLL,
        || async {
            let s = mcs_slices(c, ns, svc).await;
            Ok(check(&s).then_some(s))
        },
    )
    .await
    .unwrap()
}

/// Exporting a headless service should create a ServiceImport of type Headless in each
/// cluster; no clusterset IP should be allocated for it. Unexporting deletes it.
async fn exporting_a_headless_service_creates_a_headless_import_without_ip(f: &Fleet) {
    let ns = "mcs-headless";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], true).await;
    create_pod(&a, ns, "web-0", "hello", "100.64.1.20", true).await;
    export(&a, ns, "hello").await;
    for c in [&a, &b] {
        let imp = await_import(c, ns, "hello", "headless import", |_| true).await;
        assert_eq!(imp.spec.type_, ServiceImportType::Headless);
        let s = eventually_slices(c, ns, "hello", |s| {
            s.get("a")
                .is_some_and(|v| v.iter().any(|x| !x.endpoints.is_empty()))
        })
        .await;
        let ep = s["a"]
            .iter()
            .flat_map(|x| x.endpoints.iter())
            .next()
            .unwrap();
        assert_eq!(ep.hostname.as_deref(), Some("web-0"));
    }
    // Still none after the syncers' later passes over it: a second pod's endpoint reaches b.
    create_pod(&a, ns, "web-1", "hello", "100.64.1.21", true).await;
    eventually_slices(&b, ns, "hello", |s| {
        s.get("a")
            .is_some_and(|v| v.iter().map(|x| x.endpoints.len()).sum::<usize>() == 2)
    })
    .await;
    let imp = await_import(&b, ns, "hello", "headless import", |_| true).await;
    assert_eq!(imp.spec.type_, ServiceImportType::Headless);
    assert!(
        imp.spec.ips.is_empty(),
        "a headless import got {:?}",
        imp.spec.ips
    );
    unexport(&a, ns, "hello").await;
    for c in [&a, &b] {
        await_no_import(c, ns, "hello", "headless import gone").await;
    }
}

/// Exporting an ExternalName service should set ServiceExport Valid condition to False (and
/// create no ServiceImport).
async fn exporting_an_external_name_service_sets_valid_false(f: &Fleet) {
    let ns = "mcs-extname";
    let a = f.client(0);
    create_namespace(&a, ns).await;
    create_external_name_service(&a, ns, "hello").await;
    export(&a, ns, "hello").await;
    let reason = await_export_condition(&a, ns, "hello", CONDITION_VALID, "False").await;
    assert_eq!(reason, REASON_INVALID_SERVICE_TYPE);
    assert_no_import_after_a_later_export(
        &a,
        ns,
        "hello",
        "an ExternalName export must not be imported",
    )
    .await;
    // No Service at all: Valid=False too (NoService).
    export(&a, ns, "missing").await;
    let reason = await_export_condition(&a, ns, "missing", CONDITION_VALID, "False").await;
    assert_eq!(reason, "NoService");
}

/// A ServiceImport should only exist as long as there's at least one exporting cluster.
async fn a_service_import_exists_while_at_least_one_cluster_exports(f: &Fleet) {
    let ns = "mcs-lifetime";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
        create_service(c, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    }
    export(&a, ns, "hello").await;
    await_import(&a, ns, "hello", "import after a exports", |_| true).await;
    export(&b, ns, "hello").await;
    await_import(&a, ns, "hello", "import lists both clusters", |i| {
        i.status.as_ref().is_some_and(|s| s.clusters.len() == 2)
    })
    .await;
    unexport(&a, ns, "hello").await;
    await_import(&a, ns, "hello", "import stays while b exports", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.clusters.iter().map(|c| c.cluster.as_str()).eq(["b"]))
    })
    .await;
    unexport(&b, ns, "hello").await;
    await_no_import(&a, ns, "hello", "import gone after the last unexport").await;
}

/// A ClusterIP service exported on two clusters should expose the union of the constituent
/// service ports.
async fn a_service_exported_on_two_clusters_exposes_the_union_of_ports(f: &Fleet) {
    let ns = "mcs-union";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    create_service(
        &b,
        ns,
        "hello",
        &[("tcp", 42, 42, "TCP"), ("stcp", 142, 142, "SCTP")],
        false,
    )
    .await;
    export(&a, ns, "hello").await;
    export(&b, ns, "hello").await;
    for c in [&a, &b] {
        await_import(c, ns, "hello", "union of ports", |i| {
            ports_of(i)
                == [
                    ("stcp".to_string(), 142, "SCTP".to_string()),
                    ("tcp".to_string(), 42, "TCP".to_string()),
                ]
        })
        .await;
    }
    await_export_condition(&b, ns, "hello", CONDITION_CONFLICT, "False").await;
}

/// With conflicting ports, the conflict resolution policy (oldest export wins) applies and a
/// Conflict condition is reported on each ServiceExport.
async fn conflicting_ports_are_resolved_and_reported_on_each_export(f: &Fleet) {
    let ns = "mcs-portconflict";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    create_service(&b, ns, "hello", &[("tcp", 43, 43, "TCP")], false).await;
    export(&a, ns, "hello").await;
    await_import(&b, ns, "hello", "import from a", |_| true).await;
    // Creation timestamps have a one-second resolution: make b's export clearly younger.
    let hub = f.hub.client();
    let a_time = hub_export_time(&hub, "a", ns, "hello").await;
    await_hub_clock_past(&hub, &a_time).await;
    export(&b, ns, "hello").await;
    for c in [&a, &b] {
        let reason = await_export_condition(c, ns, "hello", CONDITION_CONFLICT, "True").await;
        assert_eq!(reason, "PortConflict");
        await_import(c, ns, "hello", "the oldest export's port wins", |i| {
            ports_of(i) == [("tcp".to_string(), 42, "TCP".to_string())]
                && i.status.as_ref().is_some_and(|s| s.clusters.len() == 2)
        })
        .await;
    }
    // By the hub's clock b's export is the younger: age decided, not the cluster id.
    assert!(hub_export_time(&hub, "b", ns, "hello").await.0 > a_time.0);
}

/// A service exported on two clusters with conflicting headlessness applies the conflict
/// resolution policy (ClusterSetIP from the older export) and reports Conflict.
async fn conflicting_headlessness_is_resolved_and_reported(f: &Fleet) {
    let ns = "mcs-typeconflict";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    create_service(&b, ns, "hello", &[("tcp", 42, 42, "TCP")], true).await;
    export(&a, ns, "hello").await;
    await_import(&b, ns, "hello", "import from a", |_| true).await;
    // Creation timestamps have a one-second resolution: make b's export clearly younger.
    let hub = f.hub.client();
    let a_time = hub_export_time(&hub, "a", ns, "hello").await;
    await_hub_clock_past(&hub, &a_time).await;
    export(&b, ns, "hello").await;
    for c in [&a, &b] {
        let reason = await_export_condition(c, ns, "hello", CONDITION_CONFLICT, "True").await;
        assert_eq!(reason, "TypeConflict");
        let imp = await_import(c, ns, "hello", "import", |_| true).await;
        assert_eq!(imp.spec.type_, ServiceImportType::ClusterSetIP);
    }
    // By the hub's clock b's export is the younger: age decided, not the cluster id.
    assert!(hub_export_time(&hub, "b", ns, "hello").await.0 > a_time.0);
}

/// An import appears in a namespace created after the export (ServiceImports exist in every
/// cluster that has the namespace, and only there).
async fn an_import_appears_when_its_namespace_is_created(f: &Fleet) {
    let ns = "mcs-latens";
    let (a, b) = (f.client(0), f.client(1));
    create_namespace(&a, ns).await;
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    export(&a, ns, "hello").await;
    await_import(&a, ns, "hello", "import in a", |_| true).await;
    create_namespace(&b, ns).await;
    await_import(
        &b,
        ns,
        "hello",
        "import in b once the namespace exists",
        |_| true,
    )
    .await;
}

/// Losing a cluster (its hub Peer is deleted) removes its endpoints everywhere, and the
/// import goes with its last exporting cluster.
async fn a_lost_cluster_s_endpoints_are_removed_everywhere(f: &Fleet) {
    let ns = "mcs-lost";
    let (a, b) = (f.client(0), f.client(1));
    for c in [&a, &b] {
        create_namespace(c, ns).await;
    }
    create_service(&a, ns, "hello", &[("tcp", 42, 42, "TCP")], false).await;
    create_pod(&a, ns, "p", "hello", "100.64.1.30", true).await;
    export(&a, ns, "hello").await;
    eventually_slices(&b, ns, "hello", |s| s.contains_key("a")).await;
    f.remove_peer("a").await;
    eventually_slices(&b, ns, "hello", |s| s.is_empty()).await;
    await_no_import(&b, ns, "hello", "import gone from b with cluster a").await;
    f.add_peer("a").await;
    eventually_slices(&b, ns, "hello", |s| s.contains_key("a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcs_api_required_conformance_cases() {
    let f = Fleet::start().await;
    run_scenarios(vec![
        (
            "Exporting a ClusterIP service should create a ServiceImport of type ClusterSetIP in each cluster; unexporting deletes it",
            Box::pin(exporting_a_clusterip_service_creates_a_clusterset_ip_import_in_each_cluster(&f)),
        ),
        (
            "Exporting a headless service should create a Headless ServiceImport; no clusterset IP is allocated",
            Box::pin(exporting_a_headless_service_creates_a_headless_import_without_ip(&f)),
        ),
        (
            "Exporting an ExternalName service should set ServiceExport Valid condition to False",
            Box::pin(exporting_an_external_name_service_sets_valid_false(&f)),
        ),
        (
            "A ServiceImport should only exist as long as there's at least one exporting cluster",
            Box::pin(a_service_import_exists_while_at_least_one_cluster_exports(&f)),
        ),
        (
            "A ClusterIP service exported on two clusters should expose the union of the constituent service ports",
            Box::pin(a_service_exported_on_two_clusters_exposes_the_union_of_ports(&f)),
        ),
        (
            "with conflicting ports should apply the conflict resolution policy and report a Conflict condition on each ServiceExport",
            Box::pin(conflicting_ports_are_resolved_and_reported_on_each_export(&f)),
        ),
        (
            "A service exported on two clusters with conflicting headlessness should apply the conflict resolution policy and report a Conflict condition",
            Box::pin(conflicting_headlessness_is_resolved_and_reported(&f)),
        ),
        (
            "A ServiceImport appears in a namespace created after the export",
            Box::pin(an_import_appears_when_its_namespace_is_created(&f)),
        ),
    ])
    .await;
    run_scenarios(vec![(
        "A lost cluster's endpoints are removed everywhere",
        Box::pin(a_lost_cluster_s_endpoints_are_removed_everywhere(&f)),
    )])
    .await;
}
