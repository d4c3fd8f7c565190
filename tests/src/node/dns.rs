//! CoreDNS for a cluster with nodes: the upstream manifest's objects (ServiceAccount,
//! ClusterRole, ClusterRoleBinding, ConfigMap, Deployment, the `kube-dns` Service at
//! [`CLUSTER_DNS_IP`]) in `kube-system`. It serves `cluster.local` (and reverse zones) only:
//! no `forward` plugin, so every other name is refused and nothing ever reaches the machine's
//! resolver.

use std::io::Write;
use std::process::Stdio;

use anyhow::Context;

use crate::kube::{CLUSTER_DNS_IP, Cluster};

const COREFILE: &str = "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        ttl 5
    }
    cache 5
}
";

/// Installs CoreDNS from `image` (a reference the nodes imported, e.g. `ImageSet::get
/// ("coredns")`); returns once the objects exist (the pod turns Ready like any other: wait
/// for it with the rest of the test's pods, or on the Deployment's `readyReplicas`).
pub async fn install_cluster_dns(cluster: &Cluster, image: &str) -> anyhow::Result<()> {
    let labels = serde_json::json!({ "k8s-app": "kube-dns" });
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            { "apiVersion": "v1", "kind": "ServiceAccount",
              "metadata": { "name": "coredns", "namespace": "kube-system" } },
            { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
              "metadata": { "name": "system:coredns" },
              "rules": [
                { "apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                  "verbs": ["list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                  "verbs": ["list", "watch"] },
              ] },
            { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
              "metadata": { "name": "system:coredns" },
              "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "system:coredns" },
              "subjects": [{ "kind": "ServiceAccount", "name": "coredns",
                             "namespace": "kube-system" }] },
            { "apiVersion": "v1", "kind": "ConfigMap",
              "metadata": { "name": "coredns", "namespace": "kube-system" },
              "data": { "Corefile": COREFILE } },
            { "apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": { "name": "coredns", "namespace": "kube-system", "labels": labels },
              "spec": {
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": {
                  "metadata": { "labels": labels },
                  "spec": {
                    "serviceAccountName": "coredns",
                    // The node's resolv.conf is empty: CoreDNS has no upstream either.
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [{ "operator": "Exists" }],
                    "containers": [{
                      "name": "coredns",
                      "image": image,
                      "imagePullPolicy": "IfNotPresent",
                      "args": ["-conf", "/etc/coredns/Corefile"],
                      "ports": [
                        { "name": "dns", "containerPort": 53, "protocol": "UDP" },
                        { "name": "dns-tcp", "containerPort": 53, "protocol": "TCP" },
                      ],
                      "readinessProbe": { "httpGet": { "path": "/ready", "port": 8181 },
                                          "periodSeconds": 2 },
                      "livenessProbe": { "httpGet": { "path": "/health", "port": 8080 },
                                         "initialDelaySeconds": 30, "periodSeconds": 10,
                                         "failureThreshold": 6 },
                      "volumeMounts": [{ "name": "config", "mountPath": "/etc/coredns",
                                         "readOnly": true }],
                    }],
                    "volumes": [{ "name": "config", "configMap": {
                      "name": "coredns", "items": [{ "key": "Corefile", "path": "Corefile" }] } }],
                  },
                },
              } },
            { "apiVersion": "v1", "kind": "Service",
              "metadata": { "name": "kube-dns", "namespace": "kube-system", "labels": labels },
              "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "selector": labels,
                "ports": [
                  { "name": "dns", "port": 53, "protocol": "UDP" },
                  { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                ],
              } },
        ],
    });
    let mut cmd = cluster.kubectl()?;
    cmd.args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let text = serde_json::to_vec(&list)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut child = cmd.spawn().context("spawning kubectl apply")?;
        child.stdin.take().context("stdin")?.write_all(&text)?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply of CoreDNS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await?
}
