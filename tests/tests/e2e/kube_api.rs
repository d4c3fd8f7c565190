//! The real-apiserver fixture answers like Kubernetes: CRDs become Established, kube-rs lists,
//! watches and server-side-applies, Leases are taken and renewed with optimistic concurrency,
//! and RBAC refuses a service-account token what its Role does not allow.

use std::time::Duration;

use fleetboard_tests::kube::{Cluster, eventually};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

/// Generous: a busy 2-core machine runs several apiservers at once.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_becomes_established_and_serves_its_kind() {
    let cluster = Cluster::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.test.fleetboard.io" },
        "spec": {
            "group": "test.fleetboard.io",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer" } },
                    }},
                }},
            }],
        },
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();

    eventually("CRD Established", DEADLINE, POLL, || async {
        let crd = crds.get("widgets.test.fleetboard.io").await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(established.then_some(()))
    })
    .await
    .unwrap();

    // The new kind is served: create one and read it back, schema pruning included.
    let gvk = GroupVersionKind::gvk("test.fleetboard.io", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "default", &ar);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.fleetboard.io/v1",
        "kind": "Widget",
        "metadata": { "name": "w1" },
        "spec": { "size": 3, "unknown": "pruned" },
    }))
    .unwrap();
    eventually("Widget create", DEADLINE, POLL, || async {
        Ok(widgets.create(&PostParams::default(), &widget).await.ok())
    })
    .await
    .unwrap();
    let back = widgets.get("w1").await.unwrap();
    assert_eq!(back.data["spec"], json!({ "size": 3 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_and_server_side_applies() {
    let cluster = Cluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");

    let listed = cms.list(&ListParams::default()).await.unwrap();
    let rv = listed.metadata.resource_version.clone().unwrap();
    let mut events = cms
        .watch(&WatchParams::default().timeout(120), &rv)
        .await
        .unwrap()
        .boxed();

    let manager = PatchParams::apply("fleetboard.io/test");
    let desired = |value: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "applied" },
            "data": { "key": value },
        })
    };
    cms.patch("applied", &manager, &Patch::Apply(desired("one")))
        .await
        .unwrap();
    cms.patch("applied", &manager, &Patch::Apply(desired("two")))
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("watch stream open");
        match event {
            WatchEvent::Added(cm) | WatchEvent::Modified(cm)
                if cm.metadata.name.as_deref() == Some("applied") =>
            {
                let value = cm
                    .data
                    .unwrap_or_default()
                    .remove("key")
                    .unwrap_or_default();
                seen.push(value);
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["one", "two"]);

    let cm = cms.get("applied").await.unwrap();
    let managers: Vec<_> = cm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "fleetboard.io/test"),
        "{managers:?}"
    );

    // A second field manager may not silently take the field over.
    let other = PatchParams::apply("someone-else");
    let err = cms
        .patch("applied", &other, &Patch::Apply(desired("three")))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(409), "{err}");

    let all = cms.list(&ListParams::default()).await.unwrap();
    assert!(
        all.items
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some("applied"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_taken_renewed_and_guarded_by_resource_version() {
    let cluster = Cluster::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(cluster.client(), "default");
    let now = || Some(MicroTime(Timestamp::now()));
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("fleetboard-leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("agent-a".into()),
            lease_duration_seconds: Some(15),
            acquire_time: now(),
            renew_time: now(),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let taken = leases.create(&PostParams::default(), &lease).await.unwrap();
    let taken_rv = taken.metadata.resource_version.clone().unwrap();

    // A second holder cannot take it by creating it again.
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(409), "{err}");

    // The holder renews it.
    let mut renewed = taken.clone();
    let first_renew = taken.spec.as_ref().unwrap().renew_time.clone().unwrap();
    renewed.spec.as_mut().unwrap().renew_time = now();
    let renewed = leases
        .replace("fleetboard-leader", &PostParams::default(), &renewed)
        .await
        .unwrap();
    let spec = renewed.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("agent-a"));
    assert!(spec.renew_time.unwrap().0 >= first_renew.0);
    assert_ne!(
        renewed.metadata.resource_version.as_deref(),
        Some(&*taken_rv)
    );

    // A contender working from the stale version is refused (optimistic concurrency).
    let mut stale = taken;
    stale.spec.as_mut().unwrap().holder_identity = Some("agent-b".into());
    let err = leases
        .replace("fleetboard-leader", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(409), "{err}");
    let current = leases.get("fleetboard-leader").await.unwrap();
    assert_eq!(
        current.spec.unwrap().holder_identity.as_deref(),
        Some("agent-a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_role_token_is_refused_what_the_role_does_not_allow() {
    let cluster = Cluster::start().await.unwrap();
    let admin = cluster.client();
    let token = cluster
        .service_account_token("team", "reader")
        .await
        .unwrap();

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "configmap-reader", "namespace": "team" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "reader", "namespace": "team" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "team" }],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let reader = cluster.client_with_token(&token).await.unwrap();
    let team_cms: Api<ConfigMap> = Api::namespaced(reader.clone(), "team");
    // Allowed (RBAC caches refresh quickly, but poll rather than race the informer).
    eventually("reader may list configmaps", DEADLINE, POLL, || async {
        Ok(team_cms.list(&ListParams::default()).await.ok())
    })
    .await
    .unwrap();

    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "nope" } })).unwrap();
    let err = team_cms
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403), "create configmap: {err}");

    let err = Api::<Secret>::namespaced(reader.clone(), "team")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403), "list secrets: {err}");

    let err = Api::<ConfigMap>::namespaced(reader.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(
        status_code(&err),
        Some(403),
        "list configmaps elsewhere: {err}"
    );

    // A token that is not from this cluster is not even authenticated.
    let forged = cluster.client_with_token("not-a-token").await.unwrap();
    let err = Api::<ConfigMap>::namespaced(forged, "team")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(401), "bogus token: {err}");
}
