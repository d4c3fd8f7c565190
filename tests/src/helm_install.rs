//! Installing the charts of this checkout into fixture clusters as a user does (see the hub
//! chart's NOTES.txt): the hub chart generates the bootstrap token; each member's agent chart
//! gets the hub's URL, that token and the hub's CA.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use crate::charts::{AGENT_CHART, HUB_CHART, chart_crds, chart_dir, wait_established};
use crate::kube::Cluster;
use crate::netns::run;

/// `helm install fleetboard charts/fleetboard` into `hub` (namespace `namespace`), then waits
/// for its CRDs and returns the bootstrap token (`<id>.<secret>`) the chart generated.
pub async fn install_hub_chart(
    hub: &Cluster,
    namespace: &str,
    endpoint: &str,
    transport: &str,
) -> anyhow::Result<String> {
    run(hub
        .helm()?
        .args(["install", "fleetboard"])
        .arg(chart_dir(HUB_CHART))
        .args(["--namespace", namespace, "--create-namespace"])
        .args(["--set", &format!("tunnel.endpoint={endpoint}")])
        .args(["--set", &format!("tunnel.transport={transport}")]))
    .context("helm install of the hub chart")?;
    wait_chart_crds(&hub.client(), HUB_CHART).await?;
    bootstrap_token(&hub.client()).await
}

/// `helm install fleetboard-agent charts/fleetboard-agent` into `member` as cluster
/// `cluster_id`, joining `hub` with `token`.
pub async fn install_agent_chart(
    member: &Cluster,
    namespace: &str,
    cluster_id: &str,
    hub: &Cluster,
    token: &str,
    transport: &str,
) -> anyhow::Result<()> {
    let ca = std::fs::read(hub.ca_cert()).context("reading the hub CA")?;
    run(member
        .helm()?
        .args(["install", "fleetboard-agent"])
        .arg(chart_dir(AGENT_CHART))
        .args(["--namespace", namespace, "--create-namespace"])
        .args(["--set", &format!("cluster.clusterID={cluster_id}")])
        .args(["--set", &format!("hub.hubURL={}", hub.internal_url())])
        .args(["--set", &format!("hub.token={token}")])
        .args([
            "--set",
            &format!(
                "hub.caData={}",
                base64::engine::general_purpose::STANDARD.encode(&ca)
            ),
        ])
        .args(["--set", &format!("hub.namespace={namespace}")])
        .args(["--set", &format!("tunnel.transport={transport}")]))
    .with_context(|| format!("helm install of the agent chart into {cluster_id}"))?;
    wait_chart_crds(&member.client(), AGENT_CHART).await
}

async fn wait_chart_crds(client: &kube::Client, chart: &str) -> anyhow::Result<()> {
    for crd in chart_crds(chart)? {
        let name = crd.metadata.name.unwrap_or_default();
        wait_established(client, &name, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// The FleetBoard bootstrap token in the hub's kube-system (the one whose extra group is
/// `system:bootstrappers:fleetboard`).
pub async fn bootstrap_token(hub: &kube::Client) -> anyhow::Result<String> {
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), "kube-system");
    let list = secrets
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await?;
    for s in list.items {
        let data = s.data.unwrap_or_default();
        let field = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        if field("auth-extra-groups").contains("system:bootstrappers:fleetboard") {
            return Ok(format!("{}.{}", field("token-id"), field("token-secret")));
        }
    }
    anyhow::bail!("the hub chart created no bootstrap token Secret in kube-system")
}
