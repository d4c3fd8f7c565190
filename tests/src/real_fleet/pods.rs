//! What the fleet test looks at in its clusters: pods Ready with no restart, workload pods
//! pinned to nodes, a pod's `eth-fleet`, the NRI plugin's metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kube::{Cluster, eventually};
use crate::netns::run;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// Every wait polls its condition until this deadline (a busy 2-core machine running two
/// fleets of three clusters and five nodes each).
pub const DEADLINE: Duration = Duration::from_secs(420);
pub const POLL: Duration = Duration::from_secs(1);
/// The workload namespace (pods that get `eth-fleet`).
pub const APPS: &str = "apps";

/// One pod as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ready: bool,
    pub restarts: i32,
    pub labels: BTreeMap<String, String>,
}

impl PodState {
    /// The state of `p`.
    pub fn of(p: &Pod) -> Self {
        let status = p.status.clone().unwrap_or_default();
        Self {
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ready: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            restarts: status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// The pods of `ns` now.
pub async fn pods(cluster: &Cluster, ns: &str) -> anyhow::Result<Vec<PodState>> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(PodState::of)
        .collect())
}

/// Waits until `ns` has exactly `want` pods, all Ready; fails at once on a restart.
pub async fn wait_all_ready(
    cluster: &Cluster,
    what: &str,
    ns: &str,
    want: usize,
) -> anyhow::Result<Vec<PodState>> {
    let result = eventually(
        &format!("{want} Ready pods in {what}/{ns}"),
        DEADLINE,
        POLL,
        || async move {
            let pods = pods(cluster, ns).await?;
            if let Some(p) = pods.iter().find(|p| p.restarts > 0) {
                // Not retried: a restart is what this test exists to catch.
                return Ok(Some(Err(anyhow::anyhow!(
                    "{what}: pod {} restarted {} times before all were Ready\n{}",
                    p.name,
                    p.restarts,
                    describe(cluster, ns, &p.name)
                ))));
            }
            if pods.len() == want && pods.iter().all(|p| p.ready) {
                return Ok(Some(Ok(pods)));
            }
            anyhow::bail!("{pods:#?}")
        },
    )
    .await;
    match result {
        Ok(r) => r,
        Err(e) => {
            let mut detail = String::new();
            for p in pods(cluster, ns).await.unwrap_or_default() {
                if !p.ready {
                    detail.push_str(&describe(cluster, ns, &p.name));
                }
            }
            Err(anyhow::anyhow!("{e:#}\n{detail}"))
        }
    }
}

/// `kubectl describe pod` and the logs of every container (previous runs too), for failures.
pub fn describe(cluster: &Cluster, ns: &str, pod: &str) -> String {
    let mut out = String::new();
    let mut kubectl = |args: &[&str]| {
        if let Ok(mut c) = cluster.kubectl() {
            c.args(args);
            out.push_str(&run(&mut c).unwrap_or_else(|e| format!("{e:#}")));
            out.push('\n');
        }
    };
    kubectl(&["describe", "pod", "-n", ns, pod]);
    kubectl(&["logs", "-n", ns, pod, "--all-containers", "--tail=40"]);
    kubectl(&[
        "logs",
        "-n",
        ns,
        pod,
        "--all-containers",
        "--previous",
        "--tail=40",
    ]);
    out
}

/// Creates namespace [`APPS`] if missing.
pub async fn create_apps_namespace(cluster: &Cluster) -> anyhow::Result<()> {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": APPS } }))?;
    match Api::<Namespace>::all(cluster.client())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates busybox pod `name` in [`APPS`] on node `node` (it sleeps; `kubectl exec` looks at
/// its interfaces).
pub async fn create_sleeper(
    cluster: &Cluster,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": APPS, "labels": { "app": "sleeper" } },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
            }],
        },
    }))?;
    Api::<Pod>::namespaced(cluster.client(), APPS)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

/// Deletes pod `name` of [`APPS`] and waits until it is gone.
pub async fn delete_pod(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), APPS);
    api.delete(name, &DeleteParams::default()).await?;
    eventually(&format!("pod {name} gone"), DEADLINE, POLL, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

/// The node's sub-block of its cluster's tunnel block (annotation `fleetboard.io/node-cidr`,
/// written by the gateway agent).
pub async fn node_cidr(cluster: &Cluster, node: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    let api: Api<KubeNode> = Api::all(cluster.client());
    let text = eventually(
        &format!("node {node} annotated fleetboard.io/node-cidr"),
        DEADLINE,
        POLL,
        || {
            let api = api.clone();
            async move {
                let n = api.get(node).await?;
                Ok(n.metadata
                    .annotations
                    .and_then(|a| a.get("fleetboard.io/node-cidr").cloned()))
            }
        },
    )
    .await?;
    Ok(text.parse()?)
}

/// The address pod `name` of [`APPS`] has on `eth-fleet`, once the NRI plugin gave it one: it
/// must equal the pod's `router.fleetboard.io/parallel_ip` annotation.
pub async fn eth_fleet_address(
    cluster: &Cluster,
    name: &str,
) -> anyhow::Result<std::net::Ipv4Addr> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), APPS);
    let annotated = eventually(
        &format!("pod {name} annotated router.fleetboard.io/parallel_ip"),
        DEADLINE,
        POLL,
        || {
            let api = api.clone();
            async move {
                let p = api.get(name).await?;
                Ok(p.metadata
                    .annotations
                    .and_then(|a| a.get("router.fleetboard.io/parallel_ip").cloned()))
            }
        },
    )
    .await?;
    let shown = exec(cluster, name, "ip -4 -o addr show dev eth-fleet").await?;
    // `2: eth-fleet    inet 100.97.1.5/32 scope global eth-fleet ...`
    let addr = shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| anyhow::anyhow!("pod {name}: no IPv4 address on eth-fleet: {shown}"))?;
    anyhow::ensure!(
        annotated.split('/').next() == Some(addr),
        "pod {name}: eth-fleet has {addr}, its annotation says {annotated}"
    );
    Ok(addr.parse()?)
}

/// `sh -c script` in pod `pod` of [`APPS`], retried until it succeeds.
pub async fn exec(cluster: &Cluster, pod: &str, script: &str) -> anyhow::Result<String> {
    eventually(&format!("`{script}` in {pod}"), DEADLINE, POLL, || {
        let cmd = cluster.kubectl().map(|mut c| {
            c.args(["exec", "-n", APPS, pod, "--", "sh", "-c", script]);
            c
        });
        async move {
            let mut cmd = cmd?;
            Ok(Some(
                tokio::task::spawn_blocking(move || run(&mut cmd)).await??,
            ))
        }
    })
    .await
}

/// One value of the NRI plugin's `/metrics` in agent pod `pod` (through the API server's pod
/// proxy, as `kubectl get --raw` reads it).
pub async fn nri_metric(cluster: &Cluster, pod: &str, metric: &str) -> anyhow::Result<u64> {
    let mut c = cluster.kubectl()?;
    c.args([
        "get",
        "--raw",
        &format!("/api/v1/namespaces/fleetboard-system/pods/{pod}:9092/proxy/metrics"),
    ]);
    let body = tokio::task::spawn_blocking(move || run(&mut c)).await??;
    body.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
        .ok_or_else(|| anyhow::anyhow!("{metric} not in the metrics of {pod}:\n{body}"))?
        .trim()
        .parse()
        .map_err(Into::into)
}
