//! The `Peer` CRD derived from the Rust types, installed in a real kube-apiserver: it becomes
//! Established, accepts a well-formed Peer, rejects malformed CIDRs, keys and cluster ids with a
//! message naming the field, and `kubectl get fbpeer` shows the printer columns.

use std::time::Duration;

use fleetboard_control::crd::all_crds;
use fleetboard_control::crd::peer::{Peer, PeerSpec, PeerStatus};
use fleetboard_tests::charts::wait_established;
use fleetboard_tests::kube::{Cluster, eventually};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const NS: &str = "fleetboard-system";
const KEY: &str = "YJ5gJdH5cYc3ZBj9XnY8Ha2qJgg1vPo1HnP3y6pLMVI=";

fn peer(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
            "metadata": { "name": name, "namespace": NS }, "spec": spec })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_crd_validates_fields_and_prints_columns() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in all_crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    wait_established(&client, "peers.fleetboard.io", DEADLINE)
        .await
        .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nss.create(&PostParams::default(), &ns).await.unwrap();

    let peers: Api<Peer> = Api::namespaced(client.clone(), NS);
    let good: Peer = serde_json::from_value(peer(
        "cluster-a",
        json!({
            "clusterId": "cluster-a", "cidrs": ["100.64.0.0/16", "fd00:64::/48"],
            "endpoint": "198.18.0.10", "publicKey": KEY, "transport": "quic",
        }),
    ))
    .unwrap();
    // The apiserver may need a moment before it serves the new kind: poll the first create.
    eventually("a valid Peer is accepted", DEADLINE, POLL, || async {
        match peers.create(&PostParams::default(), &good).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
    .unwrap();
    let stored = peers.get("cluster-a").await.unwrap();
    let spec: &PeerSpec = &stored.spec;
    assert_eq!(spec.port, 31820, "the default port is filled in");

    for (name, spec, field) in [
        (
            "bad-cidr",
            json!({ "clusterId": "bad-cidr", "cidrs": ["100.64.0.0/33"] }),
            "cidrs",
        ),
        (
            "bad-key",
            json!({ "clusterId": "bad-key", "publicKey": "not-a-key" }),
            "publicKey",
        ),
        ("bad-id", json!({ "clusterId": "Bad_Id" }), "clusterId"),
        (
            "bad-port",
            json!({ "clusterId": "bad-port", "port": 70000 }),
            "port",
        ),
    ] {
        let p: Peer = match serde_json::from_value(peer(name, spec.clone())) {
            Ok(p) => p,
            // A port beyond u16 cannot even be built in Rust; send it raw through kubectl below.
            Err(_) => {
                let file = cluster.dir().join(format!("{name}.json"));
                std::fs::write(&file, peer(name, spec).to_string()).unwrap();
                let out = cluster
                    .kubectl()
                    .unwrap()
                    .args(["create", "-f"])
                    .arg(&file)
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success() && err.contains(field),
                    "{name}: {err}"
                );
                continue;
            }
        };
        match peers.create(&PostParams::default(), &p).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {s:?}");
                assert!(
                    s.message.contains(field),
                    "{name}: message does not name {field}: {}",
                    s.message
                );
            }
            other => panic!("{name}: expected a 422 rejection, got {other:?}"),
        }
    }

    // Status goes through the status subresource; kubectl shows it in the columns.
    let status = PeerStatus {
        allocated_cidrs: vec!["100.64.1.0/24".into()],
        ..Default::default()
    };
    peers
        .patch_status(
            "cluster-a",
            &PatchParams::apply("fleetboard.io/test"),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    let out = cluster
        .kubectl()
        .unwrap()
        .args(["get", "fbpeer", "-n", NS])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get fbpeer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CLUSTER",
            "CIDR",
            "ENDPOINT",
            "TRANSPORT",
            "HUB",
            "CONNECTED",
            "HANDSHAKE",
            "AGE"
        ],
        "{table}"
    );
    let row = table.lines().nth(1).unwrap_or_default();
    for want in ["cluster-a", "100.64.1.0/24", "198.18.0.10", "quic"] {
        assert!(row.contains(want), "row lacks {want}: {table}");
    }
}
