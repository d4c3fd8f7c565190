//! The cloud's load balancer, for clusters on real nodes: what a cloud controller manager (or
//! MetalLB, or kind's cloud-provider-kind) does for a `type: LoadBalancer` Service, reduced to
//! its Kubernetes-visible part. It gives each such Service an address from a pool
//! (`status.loadBalancer.ingress`); kube-proxy on the nodes then forwards that address's
//! traffic to the Service's endpoints, and the test routes the address to a node.
//!
//! This is harness plumbing below the test (a test network has no cloud): the Service, the
//! address assignment, kube-proxy's forwarding and the pods are all real.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::task::JoinHandle;

/// Assigns pool addresses to LoadBalancer Services of one cluster until dropped.
pub struct LoadBalancer {
    task: JoinHandle<()>,
}

impl LoadBalancer {
    /// Watches `client`'s cluster (polling every second) and gives every LoadBalancer Service
    /// without an address the next free one of `pool`, in order.
    pub fn start(client: kube::Client, pool: Vec<Ipv4Addr>) -> Self {
        let task = tokio::spawn(async move {
            let api: Api<Service> = Api::all(client.clone());
            loop {
                if let Err(e) = assign(&client, &api, &pool).await {
                    eprintln!("load balancer: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self { task }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn assign(
    client: &kube::Client,
    api: &Api<Service>,
    pool: &[Ipv4Addr],
) -> anyhow::Result<()> {
    let services = api.list(&ListParams::default()).await?.items;
    let ingress_of = |s: &Service| -> Vec<String> {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default()
    };
    let taken: Vec<String> = services.iter().flat_map(ingress_of).collect();
    for svc in &services {
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) != Some("LoadBalancer")
            || !ingress_of(svc).is_empty()
        {
            continue;
        }
        let Some(ip) = pool.iter().find(|ip| !taken.contains(&ip.to_string())) else {
            anyhow::bail!("pool exhausted");
        };
        let (ns, name) = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let status = serde_json::json!({
            "status": { "loadBalancer": { "ingress": [{ "ip": ip.to_string(), "ipMode": "VIP" }] } }
        });
        Api::<Service>::namespaced(client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        eprintln!("load balancer: {ns}/{name} -> {ip}");
        return Ok(()); // one at a time: `taken` is stale now
    }
    Ok(())
}
