//! The plugin publishes every pod's parallel address on its Pod object (annotation
//! `router.fleetboard.io/parallel_ip`) in a real kube-apiserver, without making the runtime
//! wait: a Pod the apiserver learns about only later is annotated once it appears.
//!
//! Needs root (network namespaces), the `fleetboard` binary and the Kubernetes test tools
//! (`tests/k8s/tools ensure`).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::support::*;
use fleetboard_nri::plugin::PARALLEL_IP_ANNOTATION;
use fleetboard_tests::kube::{Cluster, eventually};
use fleetboard_tests::netns::require_net_admin;
use k8s_openapi::api::core::v1::Pod as PodObject;
use kube::api::{Api, PostParams};

fn pod_object(name: &str) -> anyhow::Result<PodObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] }
    }))?)
}

async fn annotation_becomes(pods: &Api<PodObject>, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    eventually(
        &format!("pod {name} annotated with {ip}"),
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let pod = pods.get(name).await?;
            let got = pod
                .metadata
                .annotations
                .unwrap_or_default()
                .get(PARALLEL_IP_ANNOTATION)
                .cloned();
            Ok((got.as_deref() == Some(ip.to_string().as_str())).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_publishes_the_parallel_ip_annotation_on_pods() -> anyhow::Result<()> {
    require_net_admin();
    let cluster = Cluster::start().await?;
    // No controller-manager runs in the fixture: the `default` ServiceAccount that Pod
    // admission looks up is created here.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(cluster.client(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({ "metadata": { "name": "default" } }))?,
    )
    .await?;
    let pods: Api<PodObject> = Api::namespaced(cluster.client(), "default");
    pods.create(&PostParams::default(), &pod_object("early")?)
        .await?;

    let mut node = Node::new(21)?;
    node.start_plugin_with(&["--kubeconfig".as_ref(), cluster.kubeconfig().as_os_str()])?;
    let conn = node.connect(vec![]).await?;

    // A Pod the apiserver already has, and one it learns about after its sandbox runs.
    let early = Pod::new("early")?;
    let late = Pod::new("late")?;
    conn.run_pod(&early.sandbox).await?;
    conn.run_pod(&late.sandbox).await?;
    let ip_early = early.address().expect("pod early has eth-fleet");
    let ip_late = late.address().expect("pod late has eth-fleet");

    annotation_becomes(&pods, "early", ip_early)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nplugin log:\n{}", node.logs()))?;
    pods.create(&PostParams::default(), &pod_object("late")?)
        .await?;
    annotation_becomes(&pods, "late", ip_late)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nplugin log:\n{}", node.logs()))?;

    // A restarted plugin re-publishes the kept addresses of the pods Synchronize reports.
    let mut p = pods.get("early").await?;
    p.metadata.annotations = None;
    p.metadata.managed_fields = None;
    pods.replace("early", &PostParams::default(), &p).await?;
    drop(conn);
    node.kill_plugin();
    node.start_plugin_with(&["--kubeconfig".as_ref(), cluster.kubeconfig().as_os_str()])?;
    let _conn = node
        .connect(vec![early.sandbox.clone(), late.sandbox.clone()])
        .await?;
    annotation_becomes(&pods, "early", ip_early)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nplugin log:\n{}", node.logs()))?;
    assert_eq!(
        early.address(),
        Some(ip_early),
        "address kept across the restart"
    );
    Ok(())
}

/// Beside the agent (the member chart), the plugin has no `--pod-cidr`: it waits for the
/// agent to annotate its Node with the sub-block, and takes it from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_reads_the_node_sub_block_the_agent_annotates() -> anyhow::Result<()> {
    use fleetboard_nri::node_cidr::{self, NODE_CIDR_ANNOTATION};
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Patch, PatchParams};

    let cluster = Cluster::start().await?;
    let client = cluster.client();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": "n1" } }))?,
        )
        .await?;
    // The Node has no sub-block yet: the plugin reads it, finds none, reads it again (its
    // GETs counted by the API server), and has not returned.
    let node_gets = || fleetboard_tests::kube::api_requests(&client, "GET", "nodes");
    let gets_before = node_gets().await?;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { node_cidr::wait(&client, "n1", Duration::from_millis(200)).await }
    });
    eventually(
        "the plugin reading the Node twice, or returning",
        Duration::from_secs(90),
        Duration::from_millis(50),
        || async {
            Ok((waiting.is_finished() || node_gets().await? >= gets_before + 2).then_some(()))
        },
    )
    .await?;
    assert!(!waiting.is_finished(), "no sub-block yet, still waiting");
    let annotate =
        |v: &str| serde_json::json!({ "metadata": { "annotations": { NODE_CIDR_ANNOTATION: v } } });
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(annotate("100.65.3.0/24")),
        )
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(90), waiting).await???;
    assert_eq!(got, "100.65.3.0/24".parse()?);

    // A value the agent never writes is an error naming the node and the annotation.
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(annotate("not-a-cidr")),
        )
        .await?;
    let err = node_cidr::wait(&client, "n1", Duration::from_millis(200))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n1") && err.contains(NODE_CIDR_ANNOTATION),
        "{err}"
    );
    Ok(())
}

/// The tunnel CIDR is the hub's: the agent copies it from the hub's Peer onto its Node
/// (`fleetboard.io/tunnel-cidr`) and the plugin takes it from there. A member-side
/// `--tunnel-cidr` that disagrees with the hub's stops the plugin, naming the flag and both
/// CIDRs. The hub here uses a non-default CIDR inside 100.64.0.0/10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_takes_the_tunnel_cidr_from_the_hub_and_refuses_a_conflicting_flag()
-> anyhow::Result<()> {
    use clap::Parser;
    use fleetboard_nri::node_cidr::{self, NODE_CIDR_ANNOTATION, TUNNEL_CIDR_ANNOTATION};
    use k8s_openapi::api::core::v1::Node;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nri: fleetboard_nri::NriArgs,
    }

    let cluster = Cluster::start().await?;
    let nodes: Api<Node> = Api::all(cluster.client());
    let node = serde_json::json!({ "metadata": { "name": "n1", "annotations": {
        NODE_CIDR_ANNOTATION: "100.97.3.0/24",
        TUNNEL_CIDR_ANNOTATION: "100.96.0.0/12",
    }}});
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node)?)
        .await?;
    let got =
        node_cidr::wait_tunnel_cidr(&cluster.client(), "n1", Duration::from_millis(200)).await?;
    assert_eq!(got, "100.96.0.0/12".parse()?);

    let dir = std::env::temp_dir().join(format!(
        "fb-nri-cidr-{}",
        fleetboard_tests::netns::unique_token()
    ));
    let kubeconfig = cluster.kubeconfig().to_str().unwrap().to_string();
    let state = dir.join("ipam.json");
    let cli = Cli::try_parse_from([
        "nri",
        "--node-name",
        "n1",
        "--kubeconfig",
        &kubeconfig,
        "--socket",
        dir.join("none.sock").to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
        "--tunnel-cidr",
        "100.64.0.0/10",
    ])?;
    let err = tokio::time::timeout(Duration::from_secs(60), fleetboard_nri::run(cli.nri))
        .await?
        .expect_err("a --tunnel-cidr other than the hub's is refused")
        .to_string();
    for want in ["--tunnel-cidr", "100.64.0.0/10", "100.96.0.0/12"] {
        assert!(err.contains(want), "{err} lacks {want}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
