//! kubelet of a node: its client certificate and kubeconfig, its config, the process.

use anyhow::Context;

use super::{Node, NodeOptions};
use crate::kube::{CLUSTER_DNS_IP, Cluster, Tool};
use crate::process::ChildGuard;

/// Writes the node's kubelet config and kubeconfig and starts kubelet in the node's namespaces
/// (it moves itself into the node's `kubelet` cgroup, `kubeletCgroups`).
pub(super) fn start(
    cluster: &Cluster,
    node: &Node,
    opts: &NodeOptions,
) -> anyhow::Result<ChildGuard> {
    let dir = &node.dir;
    // The Node authorizer and NodeRestriction accept this identity as is.
    let kubeconfig = cluster.client_cert_kubeconfig(
        &format!("kubelet-{}", node.token),
        &format!("system:node:{}", node.name),
        &["system:nodes"],
    )?;
    let resolv = dir.join("resolv.conf");
    // Pods get no upstream nameserver: nothing ever asks the machine's resolver.
    std::fs::write(&resolv, "")?;
    std::fs::create_dir_all(dir.join("pod-logs"))?;
    let cg = format!("/{}", node.cgroup());
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": format!("unix://{}", node.containerd_socket().display()),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cg,
        "cgroupsPerQOS": true,
        "kubeletCgroups": format!("{cg}/kubelet"),
        "failSwapOn": false,
        "failCgroupV1": false,
        "address": node.address.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": cluster.ca_cert() },
        },
        "authorization": { "mode": "Webhook" },
        "podLogsDir": dir.join("pod-logs"),
        "resolvConf": resolv,
        "clusterDomain": "cluster.local",
        "clusterDNS": [CLUSTER_DNS_IP],
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "registerNode": true,
        "registerWithTaints": opts.taints,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
    });
    let config_path = dir.join("kubelet.yaml");
    std::fs::write(&config_path, serde_yaml::to_string(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = node.command(&Tool::Kubelet.path()?, "kubelet")?;
    cmd.arg(format!("--config={}", config_path.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", dir.join("kubelet").display()))
        .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
        .arg(format!("--hostname-override={}", node.name))
        .arg(format!("--node-ip={}", node.address))
        .arg("--v=2");
    if !opts.labels.is_empty() {
        let labels: Vec<String> = opts
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        cmd.arg(format!("--node-labels={}", labels.join(",")));
    }
    ChildGuard::spawn("kubelet", cmd, &dir.join("kubelet.log"))
}
