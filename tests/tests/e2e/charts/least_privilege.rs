//! What a compromised agent could do in its own cluster, tried with the agent's real
//! credential: a token of the chart's `fleetboard-agent` ServiceAccount bound to an agent pod
//! on node `n1` (as the kubelet projects it, so it carries the node name), against a real API
//! server with the member chart installed (RBAC and the chart's ValidatingAdmissionPolicy).
//! Each write outside what is the agent's own is refused with the policy's message; each write
//! the agent needs succeeds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetboard_tests::charts::{AGENT_CHART, chart_dir};
use fleetboard_tests::kube::{Cluster, eventually};
use fleetboard_tests::netns::unique_token;
use serde_json::json;

use super::{NS, ok, output, text};

const APPS: &str = "apps";

/// `kubectl` with `kubeconfig`, `args`; Ok(stdout) or Err(stderr).
pub(super) fn kubectl(
    cluster: &Cluster,
    kubeconfig: &Path,
    args: &[&str],
) -> Result<String, String> {
    let mut c = cluster.kubectl().unwrap();
    c.env("KUBECONFIG", kubeconfig)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args);
    let out = output(&mut c);
    if out.status.success() {
        Ok(text(&out))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub(super) fn refused(what: &str, r: Result<String, String>, message: &str) {
    match r {
        Ok(out) => panic!("{what}: allowed, expected refused ({message}): {out}"),
        Err(e) => assert!(
            e.contains(message),
            "{what}: refused, but not with {message:?}: {e}"
        ),
    }
}

pub(super) fn allowed(what: &str, r: Result<String, String>) {
    if let Err(e) = r {
        panic!("{what}: refused, expected allowed: {e}");
    }
}

/// Creates `obj` (with its apiVersion and kind) as the admin.
fn admin_create(cluster: &Cluster, obj: serde_json::Value) {
    let f = cluster.dir().join(format!("obj-{}.json", unique_token()));
    std::fs::write(&f, obj.to_string()).unwrap();
    let admin = cluster.kubeconfig().to_path_buf();
    if let Err(e) = kubectl(cluster, &admin, &["create", "-f", f.to_str().unwrap()]) {
        panic!("creating {obj}: {e}");
    }
}

fn slice(name: &str, managed_by: &str) -> String {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": APPS,
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": managed_by,
            },
        },
        "addressType": "IPv4",
        "endpoints": [],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_agent_changes_only_what_is_its_own() {
    let cluster = Cluster::start().await.unwrap();
    let ca_b64 = ok(Command::new("base64").arg("-w0").arg(cluster.ca_cert()));
    ok(cluster
        .helm()
        .unwrap()
        .args([
            "install",
            "fleetboard-agent",
            "--namespace",
            NS,
            "--create-namespace",
        ])
        .arg(chart_dir(AGENT_CHART))
        .args([
            "--set",
            "cluster.clusterID=member-a",
            "--set",
            &format!("hub.hubURL={}", cluster.url()),
            "--set",
            "hub.token=abcdef.0123456789abcdef",
            "--set",
            &format!("hub.caData={}", ca_b64.trim()),
        ]));

    // Two nodes, a workload pod on each, and an agent pod on n1 (no kubelet runs them: the
    // objects are what the API server checks against).
    for n in ["n1", "n2"] {
        admin_create(
            &cluster,
            json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": n } }),
        );
    }
    admin_create(
        &cluster,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": APPS } }),
    );
    // No kube-controller-manager here: the namespace's default ServiceAccount by hand.
    admin_create(
        &cluster,
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "default", "namespace": APPS } }),
    );
    let pod = |name: &str, ns: &str, node: &str, sa: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": ns },
            "spec": {
                "nodeName": node,
                "serviceAccountName": sa,
                "containers": [{ "name": "main", "image": "localhost/none:1" }],
            },
        })
    };
    admin_create(&cluster, pod("p1", APPS, "n1", "default"));
    admin_create(&cluster, pod("p2", APPS, "n2", "default"));
    admin_create(&cluster, pod("agent-n1", NS, "n1", "fleetboard-agent"));

    // The agent's token, bound to its pod (as kubelet projects it) and a legacy unbound one.
    let admin = cluster.kubeconfig().to_path_buf();
    let bound = kubectl(
        &cluster,
        &admin,
        &[
            "create",
            "token",
            "fleetboard-agent",
            "-n",
            NS,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "agent-n1",
        ],
    )
    .unwrap();
    let agent = cluster.token_kubeconfig("agent-n1", bound.trim()).unwrap();
    let unbound = kubectl(
        &cluster,
        &admin,
        &["create", "token", "fleetboard-agent", "-n", NS],
    )
    .unwrap();
    let unbound = cluster
        .token_kubeconfig("agent-unbound", unbound.trim())
        .unwrap();
    let k = |args: &[&str]| kubectl(&cluster, &agent, args);

    // The API server loads new admission policies in the background: wait (with a server-side
    // dry run, which goes through admission and stores nothing) until this one is in force.
    eventually(
        "the agent's admission policy in force",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let r = k(&[
                "label",
                "pod",
                "-n",
                APPS,
                "p1",
                "probe=1",
                "--dry-run=server",
            ]);
            Ok(
                r.is_err_and(|e| e.contains("may change only the annotation"))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();

    // Pods: the parallel-address annotation, on its own node's pods only.
    let ann = "router.fleetboard.io/parallel_ip";
    allowed(
        "annotate a pod on its own node",
        k(&[
            "annotate",
            "pod",
            "-n",
            APPS,
            "p1",
            &format!("{ann}=100.97.0.5"),
        ]),
    );
    refused(
        "annotate a pod on another node",
        k(&[
            "annotate",
            "pod",
            "-n",
            APPS,
            "p2",
            &format!("{ann}=100.97.0.6"),
        ]),
        "may annotate only pods on its own node",
    );
    refused(
        "annotate a pod without a node-bound token",
        kubectl(
            &cluster,
            &unbound,
            &[
                "annotate",
                "pod",
                "-n",
                APPS,
                "p1",
                &format!("{ann}=100.97.0.7"),
                "--overwrite",
            ],
        ),
        "may annotate only pods on its own node",
    );
    refused(
        "label a pod on its own node",
        k(&["label", "pod", "-n", APPS, "p1", "evil=1"]),
        "may change only the annotation router.fleetboard.io/parallel_ip",
    );
    refused(
        "another annotation on a pod on its own node",
        k(&["annotate", "pod", "-n", APPS, "p1", "evil.io/x=1"]),
        "may change only the annotation router.fleetboard.io/parallel_ip",
    );

    // Nodes: fleetboard.io/ annotations only (the gateway writes every node's sub-block).
    allowed(
        "annotate another node's sub-block",
        k(&[
            "annotate",
            "node",
            "n2",
            "fleetboard.io/node-cidr=100.97.1.0/24",
        ]),
    );
    refused(
        "label a node",
        k(&["label", "node", "n2", "evil=1"]),
        "may change only fleetboard.io/ annotations of a node",
    );
    refused(
        "annotate a node outside fleetboard.io/",
        k(&["annotate", "node", "n2", "evil.io/x=1"]),
        "may change only fleetboard.io/ annotations of a node",
    );
    refused(
        "taint a node",
        k(&["taint", "node", "n2", "evil=1:NoSchedule"]),
        "may change only fleetboard.io/ annotations of a node",
    );

    // EndpointSlices: only FleetBoard's own, before and after the write.
    let dir = cluster.dir().to_path_buf();
    let write = |name: &str, body: String| {
        let f = dir.join(format!("{name}.json"));
        std::fs::write(&f, body).unwrap();
        f
    };
    let theirs = write("theirs", slice("theirs", "endpointslice-controller.k8s.io"));
    let ours = write("ours", slice("ours", "parallel.fleetboard.io"));
    refused(
        "create a slice for another controller",
        k(&["create", "-f", theirs.to_str().unwrap()]),
        "may write only EndpointSlices FleetBoard manages",
    );
    allowed(
        "create its own slice",
        k(&["create", "-f", ours.to_str().unwrap()]),
    );
    refused(
        "hand its slice to another controller",
        k(&[
            "label",
            "endpointslice",
            "-n",
            APPS,
            "ours",
            "--overwrite",
            "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
        ]),
        "may write only EndpointSlices FleetBoard manages",
    );
    allowed(
        "the admin creates another controller's slice",
        kubectl(
            &cluster,
            &admin,
            &["create", "-f", theirs.to_str().unwrap()],
        ),
    );
    refused(
        "delete another controller's slice",
        k(&["delete", "endpointslice", "-n", APPS, "theirs"]),
        "may write only EndpointSlices FleetBoard manages",
    );
    allowed(
        "delete its own slice",
        k(&["delete", "endpointslice", "-n", APPS, "ours"]),
    );

    // Secrets: the cluster keys by name, nothing else.
    allowed(
        "read the cluster keys",
        k(&["get", "secret", "-n", NS, "fleetboard-cluster-keys"]),
    );
    // Its member's hub token: every agent reads it (the gateway renews it).
    allowed(
        "read the hub token Secret",
        k(&["get", "secret", "-n", NS, "fleetboard-hub-token"]),
    );
    refused(
        "delete the hub token Secret",
        k(&["delete", "secret", "-n", NS, "fleetboard-hub-token"]),
        "forbidden",
    );
    refused(
        "read the DNS server's or any other Secret",
        k(&["get", "secret", "-n", NS, "other"]),
        "forbidden",
    );
    refused(
        "create a Secret",
        k(&[
            "create",
            "secret",
            "generic",
            "x",
            "-n",
            NS,
            "--from-literal=a=b",
        ]),
        "forbidden",
    );
}
