//! Real nodes ([`fleetboard_tests::node`]): one cluster with kube-controller-manager and
//! kube-scheduler, two nodes (containerd + runc + CNI bridge + kubelet + kube-proxy, each in a
//! network namespace of its own), CoreDNS; a Deployment of two busybox `httpd` pods spread
//! over both nodes behind a ClusterIP Service.
//!
//! Asserts: both nodes Ready; the pods Ready on different nodes with no restarts; a pod on
//! node A fetches the Service by its DNS name (CoreDNS + kube-proxy), the pod on node B by its
//! IP (podCIDR routes between the nodes) and pings node B; node A's namespace reaches the pod
//! on node B; after drop, no process, mount, cgroup, namespace or file of either node is left.
//!
//! Needs root, the node binaries (`tests/k8s/tools`) and the images (`eval "$(tests/k8s/images
//! env)"`: pause, busybox, coredns).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetboard_tests::kube::{CLUSTER_DNS_IP, Cluster, ClusterOptions, eventually};
use fleetboard_tests::netns::{require_net_admin, run};
use fleetboard_tests::node::{ImageSet, Node, NodeOptions, install_cluster_dns};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams};

/// Every wait polls its condition until this deadline (a busy 2-core machine).
const DEADLINE: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(500);
const NS: &str = "web";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_pods_a_service_and_cluster_dns() {
    require_net_admin();
    let began = Instant::now();
    let images = ImageSet::from_env()
        .and_then(|s| s.only(&["pause", "busybox", "coredns"]))
        .unwrap();
    let busybox = images.get("busybox").unwrap().reference.clone();
    let coredns = images.get("coredns").unwrap().reference.clone();
    let cluster = Cluster::start_with(ClusterOptions::with_nodes())
        .await
        .unwrap();
    let (a, b) = tokio::try_join!(
        Node::start(&cluster, NodeOptions::new("node-a", &images).unwrap()),
        Node::start(&cluster, NodeOptions::new("node-b", &images).unwrap()),
    )
    .unwrap();
    eprintln!(
        "cluster {:.1?}, nodes Ready {:.1?} / {:.1?} after their start, {:.1?} since the test began",
        cluster.started_in(),
        a.ready_in(),
        b.ready_in(),
        began.elapsed()
    );
    let traces = [a.traces(), b.traces()];

    install_cluster_dns(&cluster, &coredns).await.unwrap();
    create_web(&cluster, &busybox).await.unwrap();
    let pods = wait_pods_ready(&cluster, NS, "app=web", 2).await.unwrap();
    wait_pods_ready(&cluster, "kube-system", "k8s-app=kube-dns", 1)
        .await
        .unwrap();
    let on = |node: &Node| {
        pods.iter()
            .find(|p| p.node == node.name())
            .unwrap_or_else(|| panic!("no web pod on {}: {pods:?}", node.name()))
            .clone()
    };
    let (pod_a, pod_b) = (on(&a), on(&b));

    // Service by DNS name from node A (either backend answers).
    let url = format!("http://web.{NS}.svc.cluster.local/");
    let body = exec_eventually(
        &cluster,
        &pod_a.name,
        &format!("timeout 5 wget -q -O- {url}"),
    )
    .await
    .unwrap();
    assert!(
        body.starts_with("hello from web-"),
        "{url} answered {body:?}"
    );
    // Pods ask CoreDNS only, and CoreDNS answers nothing outside the cluster (no forward).
    let resolv = exec_eventually(&cluster, &pod_a.name, "cat /etc/resolv.conf")
        .await
        .unwrap();
    assert!(
        resolv.contains(&format!("nameserver {CLUSTER_DNS_IP}"))
            && resolv.matches("nameserver").count() == 1,
        "{resolv}"
    );
    let outside = exec_eventually(
        &cluster,
        &pod_a.name,
        "timeout 5 nslookup example.com 2>&1; true",
    )
    .await
    .unwrap();
    assert!(
        outside.contains(CLUSTER_DNS_IP) && !outside.contains("Name:"),
        "example.com resolved: {outside}"
    );
    // Pod to pod across nodes, pod to node, node to pod.
    let body = exec_eventually(
        &cluster,
        &pod_a.name,
        &format!("timeout 5 wget -q -O- http://{}:8080/", pod_b.ip),
    )
    .await
    .unwrap();
    assert_eq!(body.trim(), format!("hello from {}", pod_b.name));
    exec_eventually(
        &cluster,
        &pod_a.name,
        &format!("ping -c 1 -W 2 {}", b.address()),
    )
    .await
    .unwrap();
    let from_node = run(a.netns().command("timeout").args([
        "5",
        "busybox",
        "wget",
        "-q",
        "-O-",
        &format!("http://{}:8080/", pod_b.ip),
    ]))
    .unwrap();
    assert_eq!(from_node.trim(), format!("hello from {}", pod_b.name));
    // Still no restarts after all that.
    wait_pods_ready(&cluster, NS, "app=web", 2).await.unwrap();
    eprintln!("checks done {:.1?} since the test began", began.elapsed());

    drop((a, b));
    drop(cluster);
    for t in &traces {
        let left = t.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
    eprintln!("test wall time {:.1?}", began.elapsed());
}

/// A web pod: name, node, IP.
#[derive(Debug, Clone)]
struct WebPod {
    name: String,
    node: String,
    ip: String,
}

/// Namespace `web`, a Deployment of two busybox httpd pods on different nodes, Service `web`.
async fn create_web(cluster: &Cluster, image: &str) -> anyhow::Result<()> {
    let client = cluster.client();
    let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NS } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let labels = serde_json::json!({ "app": "web" });
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "namespace": NS },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "affinity": { "podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [{
                            "labelSelector": { "matchLabels": labels },
                            "topologyKey": "kubernetes.io/hostname",
                        }],
                    } },
                    "containers": [{
                        "name": "httpd",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c",
                            "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{ "containerPort": 8080 }],
                        "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 1 },
                    }],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "namespace": NS },
        "spec": { "selector": labels, "ports": [{ "port": 80, "targetPort": 8080 }] },
    }))?;
    Api::<Service>::namespaced(client, NS)
        .create(&PostParams::default(), &service)
        .await?;
    Ok(())
}

/// Waits until `want` pods match `selector` in `ns`, all Ready, none restarted (an error at
/// once if one restarted), on distinct nodes.
async fn wait_pods_ready(
    cluster: &Cluster,
    ns: &str,
    selector: &str,
    want: usize,
) -> anyhow::Result<Vec<WebPod>> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), ns);
    let lp = ListParams::default().labels(selector);
    let restarted = Arc::new(Mutex::new(None::<String>));
    let got = eventually(
        &format!("{want} Ready pods {selector} in {ns}"),
        DEADLINE,
        POLL,
        || {
            let (api, lp) = (api.clone(), lp.clone());
            let restarted = restarted.clone();
            async move {
                let mut out = Vec::new();
                let mut nodes = BTreeMap::new();
                for p in api.list(&lp).await? {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let status = p.status.clone().unwrap_or_default();
                    let restarts: i32 = status
                        .container_statuses
                        .iter()
                        .flatten()
                        .map(|c| c.restart_count)
                        .sum();
                    if restarts > 0 {
                        *restarted.lock().unwrap() =
                            Some(format!("pod {name} restarted {restarts} times: {status:?}"));
                        return Ok(Some(Vec::new()));
                    }
                    let ready = status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    if !ready {
                        anyhow::bail!("pod {name} not Ready: {:?}", status.conditions);
                    }
                    let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
                    nodes.insert(node.clone(), name.clone());
                    out.push(WebPod {
                        name,
                        node,
                        ip: status.pod_ip.unwrap_or_default(),
                    });
                }
                if out.len() != want || nodes.len() != want {
                    anyhow::bail!("pods {out:?}");
                }
                Ok(Some(out))
            }
        },
    )
    .await?;
    if let Some(r) = restarted.lock().unwrap().take() {
        anyhow::bail!(r);
    }
    Ok(got)
}

/// `sh -c script` in pod `pod` of `web` until it succeeds (kube-proxy's rules and CoreDNS'
/// view of the Service arrive a little after the pods are Ready); returns its stdout.
async fn exec_eventually(cluster: &Cluster, pod: &str, script: &str) -> anyhow::Result<String> {
    eventually(&format!("`{script}` in {pod}"), DEADLINE, POLL, || {
        let cmd = cluster.kubectl().map(|mut c| {
            c.args(["exec", "-n", NS, pod, "--", "sh", "-c", script]);
            c
        });
        async move {
            let mut cmd = cmd?;
            let out = tokio::task::spawn_blocking(move || run(&mut cmd)).await??;
            Ok(Some(out))
        }
    })
    .await
}
