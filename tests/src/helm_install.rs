//! Installing the charts of this checkout into fixture clusters as a user does (see the hub
//! chart's NOTES.txt): each member is joined on the hub (its own identity and token, as
//! `kubectl peers join` makes them); its agent chart gets the hub's URL, that token and the
//! hub's CA.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;

use crate::charts::{AGENT_CHART, HUB_CHART, chart_crds, chart_dir, wait_established};
use crate::kube::Cluster;
use crate::netns::run;

/// `helm install fleetboard charts/fleetboard` into `hub` (namespace `namespace`), then waits
/// for its CRDs.
pub async fn install_hub_chart(
    hub: &Cluster,
    namespace: &str,
    endpoint: &str,
    transport: &str,
) -> anyhow::Result<()> {
    run(hub
        .helm()?
        .args(["install", "fleetboard"])
        .arg(chart_dir(HUB_CHART))
        .args(["--namespace", namespace, "--create-namespace"])
        .args(["--set", &format!("tunnel.endpoint={endpoint}")])
        .args(["--set", &format!("tunnel.transport={transport}")]))
    .context("helm install of the hub chart")?;
    wait_chart_crds(&hub.client(), HUB_CHART).await
}

/// `helm install fleetboard-agent charts/fleetboard-agent` into `member` as cluster
/// `cluster_id`, joining `hub` with `token` (the member's own, from
/// [`crate::fleet::join_member`]).
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
