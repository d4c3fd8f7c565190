//! The command-line tools the project's users run work against the fixture's clusters:
//! `kubectl get` and `helm install` (the binaries `tests/k8s/tools` built).

use std::time::Duration;

use fleetboard_tests::kube::{Cluster, eventually, tools::testdata};
use fleetboard_tests::netns::run;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_reads_the_cluster() {
    let cluster = Cluster::start().await.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "hello" },
        "data": { "greeting": "hi from kube-rs" },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(cluster.client(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    let got = run(cluster.kubectl().unwrap().args([
        "get",
        "configmap",
        "hello",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.greeting}",
    ]))
    .unwrap();
    assert_eq!(got, "hi from kube-rs");

    let namespaces = run(cluster.kubectl().unwrap().args(["get", "namespaces"])).unwrap();
    assert!(namespaces.contains("kube-system"), "{namespaces}");

    // The server is the pinned kube-apiserver, not something else answering.
    let version = run(cluster.kubectl().unwrap().args(["version", "-o", "json"])).unwrap();
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    assert!(server.starts_with("v1.34."), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_a_trivial_chart() {
    let cluster = Cluster::start().await.unwrap();
    let chart = testdata("hello");
    let out = run(cluster.helm().unwrap().args([
        "install",
        "smoke",
        chart.to_str().unwrap(),
        "--namespace",
        "default",
        "--set",
        "greeting=installed-by-helm",
    ]))
    .unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");

    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let cm = eventually(
        "chart ConfigMap",
        DEADLINE,
        Duration::from_millis(200),
        || async { Ok(cms.get_opt("smoke-greeting").await?) },
    )
    .await
    .unwrap();
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("installed-by-helm")
    );

    let list = run(cluster
        .helm()
        .unwrap()
        .args(["list", "-n", "default", "-o", "json"]))
    .unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "smoke", "{list}");
    assert_eq!(list[0]["status"], "deployed", "{list}");
}
