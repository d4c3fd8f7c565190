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
//! And that each node has a mount namespace of its own, as the charts' DaemonSet needs: a
//! DaemonSet pod per node with the chart's hostPath volumes at fixed paths (`/var/lib/fleetboard`
//! DirectoryOrCreate, `/var/run/nri`, `/var/run/netns` with HostToContainer, `/dev/net/tun`)
//! writes its node's name into `/var/lib/fleetboard`: each node (read through
//! `Node::host_path`) holds its own files only, and none of them is in the machine's
//! `/var/lib/fleetboard` (during the test or after; whether that exists is not checked, as a
//! process of another test may make it);
//! the pod sees containerd's NRI socket, which is the node's `/var/run/nri/nri.sock` and the
//! test's `Node::nri_socket()`; the pod's `/var/run/netns` lists exactly the node's pod netns
//! files, including those of pods started after it (propagation), none on the machine.
//!
//! Needs root, the node binaries (`tests/k8s/tools`) and the images (`eval "$(tests/k8s/images
//! env)"`: pause, busybox, coredns).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetboard_tests::kube::{CLUSTER_DNS_IP, Cluster, ClusterOptions, eventually};
use fleetboard_tests::netns::{require_net_admin, run};
use fleetboard_tests::node::{ImageSet, NODE_NRI_SOCKET, Node, NodeOptions, install_cluster_dns};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams};

/// Every wait polls its condition until this deadline (a busy 2-core machine).
const DEADLINE: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(500);
const NS: &str = "web";
/// The chart's per-node state directory (a hostPath of its DaemonSet).
const STATE_DIR: &str = "/var/lib/fleetboard";

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
    create_namespace(&cluster).await.unwrap();
    // The DaemonSet first: the web pods' netns files appear in its pods' view afterwards.
    create_node_state(&cluster, &busybox).await.unwrap();
    let state_pods = wait_pods_ready(&cluster, NS, "app=node-state", 2)
        .await
        .unwrap();
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
    // Each node's fixed paths are its own.
    let mut netns_seen = BTreeSet::new();
    for node in [&a, &b] {
        let pod = state_pods
            .iter()
            .find(|p| p.node == node.name())
            .unwrap_or_else(|| panic!("no node-state pod on {}: {state_pods:?}", node.name()));
        check_node_paths(&cluster, node, &pod.name, &mut netns_seen).await;
    }
    let state_files: Vec<String> = state_pods
        .iter()
        .map(|p| format!("pod-{}", p.name))
        .chain(["node".to_string()])
        .collect();
    assert_not_on_machine(&state_files);
    // Still no restarts after all that.
    wait_pods_ready(&cluster, NS, "app=web", 2).await.unwrap();
    wait_pods_ready(&cluster, NS, "app=node-state", 2)
        .await
        .unwrap();
    eprintln!("checks done {:.1?} since the test began", began.elapsed());

    drop((a, b));
    drop(cluster);
    for t in &traces {
        let left = t.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
    assert_not_on_machine(&state_files);
    eprintln!("test wall time {:.1?}", began.elapsed());
}

/// A web pod: name, node, IP.
#[derive(Debug, Clone)]
struct WebPod {
    name: String,
    node: String,
    ip: String,
}

/// Checks, for `node` and its node-state pod `pod`, that the pod's hostPaths are the node's
/// own (see the module docs); adds the node's pod netns files to `netns_seen` (no file may
/// be in two nodes).
async fn check_node_paths(
    cluster: &Cluster,
    node: &Node,
    pod: &str,
    netns_seen: &mut BTreeSet<String>,
) {
    let name = node.name();
    let state = node.host_path(Path::new(STATE_DIR));
    let files = dir_listing(&state).unwrap_or_else(|| panic!("{} missing", state.display()));
    assert_eq!(
        files,
        BTreeSet::from(["node".to_string(), format!("pod-{pod}")]),
        "{name}'s {STATE_DIR} ({})",
        state.display()
    );
    let written = std::fs::read_to_string(state.join("node")).unwrap();
    assert_eq!(written.trim(), name, "{name}'s {STATE_DIR}/node");

    let socket = node.host_path(Path::new(NODE_NRI_SOCKET));
    let (inside, outside) = (
        std::fs::metadata(&socket).unwrap(),
        std::fs::metadata(node.nri_socket()).unwrap(),
    );
    assert!(inside.file_type().is_socket(), "{}", socket.display());
    assert_eq!(
        (inside.dev(), inside.ino()),
        (outside.dev(), outside.ino()),
        "{} and {} are not the same socket",
        socket.display(),
        node.nri_socket().display()
    );
    exec_eventually(
        cluster,
        pod,
        "test -S /var/run/nri/nri.sock && test -c /dev/net/tun",
    )
    .await
    .unwrap();

    let netns_dir = node.host_path(Path::new("/var/run/netns"));
    let on_node = dir_listing(&netns_dir).unwrap_or_default();
    let in_pod: BTreeSet<String> = exec_eventually(cluster, pod, "ls /var/run/netns")
        .await
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // Its own and at least the web pod's, started later: only propagation brings that one.
    assert!(
        on_node.len() >= 2 && on_node.iter().all(|f| f.starts_with("cni-")),
        "{name}'s /var/run/netns: {on_node:?}"
    );
    assert_eq!(in_pod, on_node, "{pod}'s /var/run/netns vs {name}'s");
    for f in &on_node {
        assert!(
            !Path::new("/run/netns").join(f).exists(),
            "{f} of {name} is in the machine's /run/netns"
        );
        assert!(netns_seen.insert(f.clone()), "{f} is in two nodes");
    }
}

/// None of `files` (written by the node-state pods) is in the machine's [`STATE_DIR`].
fn assert_not_on_machine(files: &[String]) {
    for f in files {
        let p = Path::new(STATE_DIR).join(f);
        assert!(!p.exists(), "{} is on the machine", p.display());
    }
}

/// The names in directory `dir`, `None` if it does not exist.
fn dir_listing(dir: &Path) -> Option<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

/// Namespace `web`.
async fn create_namespace(cluster: &Cluster) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NS } }))?;
    Api::<Namespace>::all(cluster.client())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// DaemonSet `node-state`: the chart's hostPath volumes; each pod writes its node's name to
/// `/var/lib/fleetboard/node` and touches `/var/lib/fleetboard/pod-<pod>`.
async fn create_node_state(cluster: &Cluster, image: &str) -> anyhow::Result<()> {
    let labels = serde_json::json!({ "app": "node-state" });
    let host_path = |name: &str, path: &str, type_: &str| serde_json::json!({ "name": name, "hostPath": { "path": path, "type": type_ } });
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "node-state", "namespace": NS },
        "spec": {
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "state",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", format!(
                            "touch {STATE_DIR}/pod-$POD && echo $NODE > {STATE_DIR}/node && exec sleep 100000"
                        )],
                        "env": [
                            { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                            { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        ],
                        "readinessProbe": {
                            "exec": { "command": ["test", "-f", format!("{STATE_DIR}/node")] },
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [
                            { "name": "state", "mountPath": STATE_DIR },
                            { "name": "nri", "mountPath": "/var/run/nri" },
                            { "name": "netns", "mountPath": "/var/run/netns",
                              "mountPropagation": "HostToContainer" },
                            { "name": "tun", "mountPath": "/dev/net/tun" },
                        ],
                    }],
                    "volumes": [
                        host_path("state", STATE_DIR, "DirectoryOrCreate"),
                        host_path("nri", "/var/run/nri", "Directory"),
                        host_path("netns", "/var/run/netns", "Directory"),
                        host_path("tun", "/dev/net/tun", "CharDevice"),
                    ],
                },
            },
        },
    }))?;
    Api::<DaemonSet>::namespaced(cluster.client(), NS)
        .create(&PostParams::default(), &ds)
        .await?;
    Ok(())
}

/// A Deployment of two busybox httpd pods on different nodes, Service `web`.
async fn create_web(cluster: &Cluster, image: &str) -> anyhow::Result<()> {
    let client = cluster.client();
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
