//! Several clusters on one machine: independent state and credentials, and a cluster inside a
//! network namespace that agents in other namespaces reach over the underlay.

use std::net::IpAddr;
use std::time::Duration;

use fleetboard_tests::kube::{Cluster, ClusterOptions, Tool, eventually};
use fleetboard_tests::netns::{Netns, Underlay, require_net_admin, run};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "k": "v" } })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_started_together_are_independent() {
    let clusters = Cluster::start_many(2).await.unwrap();
    let (a, b) = (&clusters[0], &clusters[1]);
    assert_ne!(a.url(), b.url());

    let in_a: Api<ConfigMap> = Api::namespaced(a.client(), "default");
    let in_b: Api<ConfigMap> = Api::namespaced(b.client(), "default");
    in_a.create(&PostParams::default(), &config_map("only-in-a"))
        .await
        .unwrap();
    assert!(in_a.get_opt("only-in-a").await.unwrap().is_some());
    assert!(in_b.get_opt("only-in-a").await.unwrap().is_none());

    // Each cluster signs its own tokens: a's token means nothing to b.
    let token = a.service_account_token("default", "agent").await.unwrap();
    let stranger = b.client_with_token(&token).await.unwrap();
    let err = Api::<ConfigMap>::namespaced(stranger, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(401), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_in_a_namespace_serves_an_agent_in_another() {
    require_net_admin();
    let underlay = Underlay::new().unwrap();
    let control = Netns::new("cp").unwrap();
    let agent = Netns::new("agent").unwrap();
    underlay
        .attach(&control, "eth0", &["198.18.40.1/24"])
        .unwrap();
    underlay
        .attach(&agent, "eth0", &["198.18.40.2/24"])
        .unwrap();

    let addr: IpAddr = "198.18.40.1".parse().unwrap();
    let cluster = Cluster::start_with(ClusterOptions::in_netns(&control, addr))
        .await
        .unwrap();
    assert_eq!(
        cluster.internal_url().split(':').nth(1),
        Some("//198.18.40.1")
    );

    // The test reaches it (through the loopback forwarder) as admin...
    let admin = cluster.client();
    let token = cluster
        .service_account_token("fleetboard", "agent")
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "fleetboard")
        .create(&PostParams::default(), &config_map("for-agent"))
        .await
        .unwrap();
    cluster
        .grant(
            "fleetboard",
            "agent",
            json!([{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }]),
        )
        .await
        .unwrap();

    // ...and an agent in its own namespace reaches it on the underlay with its token.
    let kubeconfig = cluster.token_kubeconfig("agent", &token).unwrap();
    let kubectl = Tool::Kubectl.path().unwrap();
    let got = eventually(
        "agent reads its ConfigMap",
        DEADLINE,
        Duration::from_millis(300),
        || {
            let mut cmd = agent.command(kubectl.to_str().unwrap());
            cmd.arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "configmap", "for-agent", "-n", "fleetboard"])
                .args(["-o", "jsonpath={.data.k}"]);
            async move { run(&mut cmd).map(Some) }
        },
    )
    .await
    .unwrap();
    assert_eq!(got, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_listens_on_the_address_the_test_gives() {
    let addr: IpAddr = "127.0.0.2".parse().unwrap();
    let cluster = Cluster::start_with(ClusterOptions::on(addr)).await.unwrap();
    assert!(
        cluster.url().starts_with("https://127.0.0.2:"),
        "{}",
        cluster.url()
    );
    assert_eq!(cluster.url(), cluster.internal_url());
    let namespaces = run(cluster
        .kubectl()
        .unwrap()
        .args(["get", "namespaces", "-o", "name"]))
    .unwrap();
    assert!(namespaces.contains("namespace/default"), "{namespaces}");
}
