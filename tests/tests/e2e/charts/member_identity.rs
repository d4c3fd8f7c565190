//! What a hostile member tries in the hub with its own real credential: a token of its own
//! ServiceAccount as `kubectl peers join` makes it (membership::join), against a real API
//! server with the hub chart installed (RBAC, the member ResourceQuota and the chart's
//! ValidatingAdmissionPolicies). Every attack of issue 17 on the hub is refused with a message
//! that says why; what the member needs passes.

use std::time::Duration;

use fleetboard_control::crd::peer::Peer;
use fleetboard_control::membership::{self, JoinOptions};
use fleetboard_tests::charts::{HUB_CHART, chart_crds, wait_established};
use fleetboard_tests::kube::{Cluster, eventually};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::NS;
use super::least_privilege::{allowed, kubectl, refused};

fn peer(name: &str, cluster_id: &str, is_hub: bool) -> serde_json::Value {
    json!({
        "apiVersion": "fleetboard.io/v1alpha1",
        "kind": "Peer",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "clusterId": cluster_id,
            "publicKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "endpoint": "198.18.0.60",
            "isHub": is_hub,
        },
    })
}

/// An export of `apps/<service>` by `cluster_id` in namespace `namespace`, with `endpoints`
/// and, when given, a stated creation time.
fn export(
    namespace: &str,
    cluster_id: &str,
    service: &str,
    endpoints: &[&str],
    created: Option<&str>,
) -> serde_json::Value {
    let mut e = json!({
        "apiVersion": "fleetboard.io/v1alpha1",
        "kind": "ExportedService",
        "metadata": { "name": format!("{cluster_id}.apps.{service}"), "namespace": namespace },
        "spec": {
            "clusterId": cluster_id,
            "namespace": "apps",
            "service": service,
            "type": "ClusterSetIP",
            "ports": [{ "name": "http", "protocol": "TCP", "port": 80, "targetPort": 80 }],
            "endpoints": {
                "addresses": endpoints,
                "ready": endpoints.iter().map(|_| true).collect::<Vec<_>>(),
                "hostnames": endpoints.iter().map(|_| "").collect::<Vec<_>>(),
            },
        },
    });
    if let Some(t) = created {
        e["spec"]["exportCreationTime"] = json!(t);
    }
    e
}

/// Member A, joined with a quota of 3 exports, against member B: a Peer marked as the hub,
/// Peers under other names (another cluster's, a second one of its own), B's Peer rewritten
/// or deleted, its own Peer's status, exports in B's namespace or the hub's, in B's name,
/// with a stated (older) creation time, with endpoints outside its blocks, and one export
/// past its quota. Each is refused by the API server; its own Peer and exports pass, and B's
/// Peer is untouched at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_writes_only_what_is_its_own_in_the_hub() {
    let cluster = Cluster::start().await.unwrap();
    super::install_hub(&cluster, &[]);
    // The quota controller computes each member's export count (without it the API server
    // admits past every ResourceQuota); the namespace controller finishes removals.
    let _controllers = cluster
        .run_controllers(&["resourcequota", "namespace", "serviceaccount-token"])
        .unwrap();
    let admin = cluster.client();
    for crd in chart_crds(HUB_CHART).unwrap() {
        wait_established(
            &admin,
            crd.metadata.name.as_deref().unwrap(),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    }
    let mut opts = JoinOptions::new(NS, "member-a");
    opts.max_exports = 3;
    let a = membership::join(&admin, &opts).await.unwrap();
    let b = membership::join(&admin, &JoinOptions::new(NS, "member-b"))
        .await
        .unwrap();
    // The quota is in force once the controller has counted A's exports (none yet).
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &a.namespace);
    eventually(
        "member-a's export quota counted",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let q = quotas.get(membership::MEMBER_ROLE).await?;
            let used = q.status.and_then(|s| s.used).unwrap_or_default();
            Ok(used
                .contains_key("count/exportedservices.fleetboard.io")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let ka = cluster
        .token_kubeconfig("member-a", &a.token.token)
        .unwrap();
    let kb = cluster
        .token_kubeconfig("member-b", &b.token.token)
        .unwrap();
    let (own_ns, b_ns) = (a.namespace.as_str(), b.namespace.as_str());
    let dir = cluster.dir().to_path_buf();
    let file = |what: &str, obj: &serde_json::Value| {
        let f = dir.join(format!("{what}.json"));
        std::fs::write(&f, obj.to_string()).unwrap();
        f.to_str().unwrap().to_string()
    };
    let create_as = |kc: &std::path::Path, what: &str, obj: serde_json::Value| {
        kubectl(&cluster, kc, &["create", "-f", &file(what, &obj)])
    };
    // In force once a server-side dry run of a hub Peer is refused.
    eventually(
        "the hub's member admission policies in force",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let r = kubectl(
                &cluster,
                &ka,
                &[
                    "create",
                    "-f",
                    &file("probe", &peer("member-a", "member-a", true)),
                    "--dry-run=server",
                ],
            );
            Ok(
                r.is_err_and(|e| e.contains("may not mark a Peer as the hub"))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();

    // Peers.
    allowed(
        "B's own Peer",
        create_as(&kb, "b", peer("member-b", "member-b", false)),
    );
    refused(
        "a Peer marked as the hub",
        create_as(&ka, "hub", peer("member-a", "member-a", true)),
        "a member may not mark a Peer as the hub",
    );
    refused(
        "a Peer under another cluster's name",
        create_as(&ka, "c", peer("member-c", "member-c", false)),
        "member member-a may write only its own Peer \"member-a\", not \"member-c\"",
    );
    refused(
        "a second Peer of its own id",
        create_as(&ka, "a2", peer("member-a2", "member-a", false)),
        "may write only its own Peer",
    );
    refused(
        "its own Peer name with another cluster id",
        create_as(&ka, "a-as-b", peer("member-a", "member-b", false)),
        "may publish only its own cluster id in spec.clusterId",
    );
    allowed(
        "its own Peer",
        create_as(&ka, "a", peer("member-a", "member-a", false)),
    );
    refused(
        "B's Peer rewritten (endpoint)",
        kubectl(
            &cluster,
            &ka,
            &[
                "patch",
                "peers.fleetboard.io",
                "member-b",
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"spec":{"endpoint":"198.18.0.66"}}"#,
            ],
        ),
        "may write only its own Peer \"member-a\", not \"member-b\"",
    );
    refused(
        "B's Peer deleted",
        kubectl(
            &cluster,
            &ka,
            &["delete", "peers.fleetboard.io", "member-b", "-n", NS],
        ),
        "may write only its own Peer \"member-a\", not \"member-b\"",
    );
    refused(
        "its own Peer's status (the hub's)",
        kubectl(
            &cluster,
            &ka,
            &[
                "patch",
                "peers.fleetboard.io",
                "member-a",
                "-n",
                NS,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"allocatedCidrs":["100.64.0.0/10"]}}"#,
            ],
        ),
        "forbidden",
    );
    // The hub allocates A its block (the hub is not running here: the admin plays it).
    Api::<Peer>::namespaced(admin.clone(), NS)
        .patch_status(
            "member-a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "allocatedCidrs": ["100.64.1.0/24"] } })),
        )
        .await
        .unwrap();

    // Exports.
    refused(
        "an export in B's namespace",
        create_as(&ka, "in-b", export(b_ns, "member-b", "web", &[], None)),
        "forbidden",
    );
    refused(
        "an export in the hub's namespace",
        create_as(&ka, "in-hub", export(NS, "member-a", "web", &[], None)),
        "forbidden",
    );
    refused(
        "an export in B's name",
        create_as(&ka, "as-b", export(own_ns, "member-b", "web", &[], None)),
        "member member-a may export only in its own name",
    );
    refused(
        "an export with a stated (older) creation time",
        create_as(
            &ka,
            "older",
            export(own_ns, "member-a", "web", &[], Some("2000-01-01T00:00:00Z")),
        ),
        "spec.exportCreationTime is the hub's",
    );
    refused(
        "an export with endpoints outside its blocks",
        create_as(
            &ka,
            "outside",
            export(
                own_ns,
                "member-a",
                "web",
                &["100.64.1.5", "100.64.2.5"],
                None,
            ),
        ),
        "may export only endpoints inside its blocks 100.64.1.0/24",
    );
    for svc in ["web", "api", "db"] {
        allowed(
            "its own export",
            create_as(
                &ka,
                svc,
                export(own_ns, "member-a", svc, &["100.64.1.5"], None),
            ),
        );
    }
    refused(
        "an export past its quota",
        create_as(
            &ka,
            "fourth",
            export(own_ns, "member-a", "cache", &[], None),
        ),
        "exceeded quota",
    );
    allowed(
        "deleting its own export",
        kubectl(
            &cluster,
            &ka,
            &[
                "delete",
                "exportedservices.fleetboard.io",
                "member-a.apps.db",
                "-n",
                own_ns,
            ],
        ),
    );
    // B reads A's exports (to import them) and its Peer is as B wrote it.
    let listed = kubectl(
        &cluster,
        &kb,
        &["get", "exportedservices.fleetboard.io", "-A", "-o", "name"],
    )
    .unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let b_peer = Api::<Peer>::namespaced(admin, NS)
        .get("member-b")
        .await
        .unwrap();
    assert_eq!(b_peer.spec.endpoint.as_deref(), Some("198.18.0.60"));
}
