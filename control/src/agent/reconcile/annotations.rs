//! This node's own annotations (its key and underlay address, the hub's tunnel CIDR), and
//! the plan's view of a Node, which reads the annotations the agents write.

use fleetboard_dataplane::core::PublicKey;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;

use super::Agent;
use crate::agent::plan::{NodeInfo, PeerInfo};
use crate::agent::{
    AgentConfig, AgentError, NODE_CIDR_ANNOTATION, PUBLIC_KEY_ANNOTATION, TUNNEL_CIDR_ANNOTATION,
    TUNNEL_IP_ANNOTATION,
};
use crate::keys::GatewayKeys;

/// Writes this node's `public-key` and `tunnel-ip` annotations.
pub(in crate::agent) async fn publish_node(
    member: &kube::Client,
    cfg: &AgentConfig,
    keys: &GatewayKeys,
) -> Result<(), AgentError> {
    let annotations = serde_json::json!({
        PUBLIC_KEY_ANNOTATION: keys.public_key_base64(),
        TUNNEL_IP_ANNOTATION: cfg.node_ip.to_string(),
    });
    annotate_own_node(member, cfg, annotations, "").await
}

/// Merge-patches `annotations` onto this agent's own Node; `what` completes the error's
/// "annotating node NAME".
async fn annotate_own_node(
    member: &kube::Client,
    cfg: &AgentConfig,
    annotations: serde_json::Value,
    what: &str,
) -> Result<(), AgentError> {
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    Api::<Node>::all(member.clone())
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| AgentError::Member {
            what: format!("annotating node {}{what}", cfg.node_name),
            source,
        })?;
    Ok(())
}

fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub(super) fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        name: n.metadata.name.clone().unwrap_or_default(),
        created: n
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        cidr: annotation(n, NODE_CIDR_ANNOTATION).and_then(|s| s.parse().ok()),
        public_key: annotation(n, PUBLIC_KEY_ANNOTATION)
            .and_then(|s| PublicKey::from_base64(s).ok()),
        tunnel_ip: annotation(n, TUNNEL_IP_ANNOTATION).and_then(|s| s.parse().ok()),
    }
}

impl Agent {
    /// Re-publishes this node's annotations if someone removed or changed them.
    pub(super) async fn check_own_annotations(&self, nodes: &[NodeInfo]) -> Result<(), AgentError> {
        let Some(me) = nodes.iter().find(|n| n.name == self.cfg.node_name) else {
            return Ok(());
        };
        if me.public_key != Some(self.node_keys.public_key())
            || me.tunnel_ip != Some(self.cfg.node_ip)
        {
            publish_node(&self.member, &self.cfg, &self.node_keys).await?;
        }
        Ok(())
    }

    /// Keeps this node's `fleetboard.io/tunnel-cidr` equal to the hub's IPv4 tunnel CIDR (its
    /// Peer's `spec.cidrs`), what the NRI plugin beside the agent routes through the pods.
    pub(super) async fn publish_tunnel_cidr(&self, peers: &[PeerInfo]) -> Result<(), AgentError> {
        let Some(cidr) = peers
            .iter()
            .filter(|p| p.spec.is_hub)
            .flat_map(|p| p.spec.cidrs.iter())
            .filter_map(|c| c.parse::<IpNet>().ok())
            .find(|c| c.addr().is_ipv4())
        else {
            return Ok(());
        };
        let cidr = cidr.trunc().to_string();
        let current = self
            .nodes
            .get(&reflector::ObjectRef::new(&self.cfg.node_name))
            .and_then(|n| annotation(&n, TUNNEL_CIDR_ANNOTATION).map(str::to_owned));
        if current.as_deref() == Some(cidr.as_str()) {
            return Ok(());
        }
        let annotations = serde_json::json!({ TUNNEL_CIDR_ANNOTATION: cidr });
        annotate_own_node(
            &self.member,
            &self.cfg,
            annotations,
            " with the tunnel CIDR",
        )
        .await?;
        tracing::info!(node = %self.cfg.node_name, %cidr, "published the hub's tunnel CIDR");
        Ok(())
    }
}
