//! kube-proxy of a node: iptables mode inside the node's network (and mount) namespace.

use super::Node;
use crate::kube::{Cluster, Tool};
use crate::process::ChildGuard;

/// Starts kube-proxy (client certificate `CN=system:kube-proxy`, which the default RBAC binds
/// to `system:node-proxier`) in the node's namespaces and `kubelet` cgroup. Its healthz is
/// `127.0.0.1:10256` inside the network namespace.
pub(super) fn start(
    cluster: &Cluster,
    node: &Node,
    cluster_cidr: &str,
) -> anyhow::Result<ChildGuard> {
    let kubeconfig = cluster.client_cert_kubeconfig(
        &format!("kube-proxy-{}", node.token),
        "system:kube-proxy",
        &[],
    )?;
    let mut cmd = node.command(&Tool::KubeProxy.path()?, "kubelet")?;
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--hostname-override={}", node.name))
        .arg(format!("--cluster-cidr={cluster_cidr}"))
        .arg("--proxy-mode=iptables")
        // The conntrack table size and timeouts are global sysctls (read-only outside the
        // root namespace): leave them alone.
        .arg("--conntrack-max-per-core=0")
        .arg("--conntrack-min=0")
        .arg("--conntrack-tcp-timeout-established=0s")
        .arg("--conntrack-tcp-timeout-close-wait=0s")
        // Service traffic is SNATed to the node: replies from a backend on the same bridge or
        // on another node come back through the node that DNATed them (no br_netfilter
        // needed, no routes back to the client's pod range).
        .arg("--masquerade-all")
        .arg("--nodeport-addresses=primary")
        .arg("--metrics-bind-address=127.0.0.1:10249")
        .arg("--healthz-bind-address=127.0.0.1:10256")
        .arg("--oom-score-adj=0")
        .arg("--v=2");
    ChildGuard::spawn("kube-proxy", cmd, &node.dir.join("kube-proxy.log"))
}
