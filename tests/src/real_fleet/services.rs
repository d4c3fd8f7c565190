//! A Service exported from one member, reached from the other by its ClusterSetIP and by its
//! `clusterset.local` name through the cluster's CoreDNS, with the server block the member
//! chart's NOTES print added to the Corefile, each step as a user types it (`kubectl` in the
//! user's shell).

use std::path::Path;

use crate::kube::eventually;
use crate::user_shell::UserShell;

use super::pods::{APPS, DEADLINE, POLL};

/// The exported Service's name and port (the workload pods' `httpd`).
pub const SERVICE: &str = "web";
pub const PORT: u16 = 8080;

/// In the cluster of `kubeconfig`: labels `pods` `app=web`, creates Service `web` for them and
/// exports it.
pub fn export_web(user: &UserShell, kubeconfig: &Path, pods: &[&str]) -> anyhow::Result<()> {
    user.run(
        kubeconfig,
        &format!(
            "set -e
kubectl -n {APPS} label pod {pods} app={SERVICE} --overwrite
kubectl -n {APPS} create service clusterip {SERVICE} --tcp={PORT}:{PORT}
kubectl apply -f - <<EOF
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: {SERVICE}
  namespace: {APPS}
EOF",
            pods = pods.join(" ")
        ),
    )
    .map(drop)
}

/// Waits for the ServiceImport of `web` in the cluster of `kubeconfig`; returns its
/// ClusterSetIP.
pub async fn clusterset_ip(user: &UserShell, kubeconfig: &Path) -> anyhow::Result<String> {
    let get =
        format!("kubectl -n {APPS} get serviceimport {SERVICE} -o jsonpath='{{.spec.ips[0]}}'");
    eventually(
        &format!("ServiceImport {APPS}/{SERVICE} with a ClusterSetIP"),
        DEADLINE,
        POLL,
        || {
            let out = user.run(kubeconfig, &get);
            async move {
                let ip = out.unwrap_or_default().trim().to_string();
                Ok((!ip.is_empty()).then_some(ip))
            }
        },
    )
    .await
}

/// The CoreDNS server block the member chart's NOTES print (from the line naming the zone to
/// its closing brace), with the fleetboard-dns Service's ClusterIP filled in as the NOTES say.
pub fn notes_dns_block(notes: &str, dns_ip: &str) -> anyhow::Result<String> {
    let start = notes
        .lines()
        .position(|l| l.trim_start().starts_with("clusterset.local:53 {"))
        .ok_or_else(|| {
            anyhow::anyhow!("no clusterset.local server block in the NOTES:\n{notes}")
        })?;
    let mut block = Vec::new();
    for l in notes.lines().skip(start) {
        block.push(l.trim());
        if l.trim() == "}" {
            return Ok(block
                .join("\n")
                .replace("<fleetboard-dns-cluster-ip>", dns_ip));
        }
    }
    anyhow::bail!("unterminated clusterset.local server block in the NOTES:\n{notes}")
}

/// Adds the NOTES' server block to CoreDNS's Corefile in the cluster of `kubeconfig` and
/// restarts CoreDNS, as the NOTES tell the user.
pub fn forward_clusterset_zone(
    user: &UserShell,
    kubeconfig: &Path,
    member_notes: &str,
) -> anyhow::Result<()> {
    let dns_ip = user.run(
        kubeconfig,
        "kubectl -n fleetboard-system get service fleetboard-dns -o jsonpath='{.spec.clusterIP}'",
    )?;
    let block = notes_dns_block(member_notes, dns_ip.trim())?;
    user.run(
        kubeconfig,
        &format!(
            "set -e
corefile=$(kubectl -n kube-system get configmap coredns -o jsonpath='{{.data.Corefile}}')
printf '%s\\n%s\\n' \"$corefile\" '{block}' > \"$HOME/Corefile\"
kubectl -n kube-system create configmap coredns --from-file=Corefile=\"$HOME/Corefile\" \\
  --dry-run=client -o yaml \\
  | kubectl apply -f -
kubectl -n kube-system rollout restart deployment coredns
kubectl -n kube-system rollout status deployment coredns --timeout=300s"
        ),
    )
    .map(drop)
}
