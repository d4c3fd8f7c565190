//! This node's sub-block, read from its Node object: the member agent's gateway writes it as
//! the annotation `fleetboard.io/node-cidr` (control/src/agent). Used when `fleetboard nri`
//! runs beside the agent (the member chart) and has no `--pod-cidr` of its own.

use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

/// The agent's Node annotation with the node's sub-block.
pub const NODE_CIDR_ANNOTATION: &str = "fleetboard.io/node-cidr";
/// The agent's Node annotation with the hub's IPv4 tunnel CIDR (from the hub's Peer): what
/// the plugin routes through `eth-fleet` when it runs without `--tunnel-cidr`.
pub const TUNNEL_CIDR_ANNOTATION: &str = "fleetboard.io/tunnel-cidr";

/// Why the node's sub-block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeCidrError {
    /// No Kubernetes API is configured, so the Node cannot be read.
    #[error(
        "--node-name {0}: reading the node's sub-block needs the Kubernetes API (--kubeconfig, or run in a pod); or pass --pod-cidr"
    )]
    NoApi(String),
    /// The annotation holds something that is not an IPv4 CIDR.
    #[error("node {node}: annotation {annotation}={value:?} is not an IPv4 CIDR")]
    Malformed {
        /// The node.
        node: String,
        /// The annotation.
        annotation: &'static str,
        /// What the annotation holds.
        value: String,
    },
}

/// The IPv4 sub-block in `value`, if it is one.
pub fn parse(value: &str) -> Option<Ipv4Net> {
    match value.trim().parse::<IpNet>().ok()? {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

/// Waits until Node `node` carries the annotation (polling every `every`; a missing Node or an
/// apiserver error is retried) and returns its sub-block. A malformed value is an error: the
/// agent never writes one, so a person did.
pub async fn wait(
    client: &kube::Client,
    node: &str,
    every: Duration,
) -> Result<Ipv4Net, NodeCidrError> {
    wait_annotation(client, node, NODE_CIDR_ANNOTATION, every).await
}

/// Like [`wait`], for the hub's tunnel CIDR the agent copies onto its Node.
pub async fn wait_tunnel_cidr(
    client: &kube::Client,
    node: &str,
    every: Duration,
) -> Result<Ipv4Net, NodeCidrError> {
    wait_annotation(client, node, TUNNEL_CIDR_ANNOTATION, every).await
}

async fn wait_annotation(
    client: &kube::Client,
    node: &str,
    annotation: &'static str,
    every: Duration,
) -> Result<Ipv4Net, NodeCidrError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut told = false;
    loop {
        match nodes.get_opt(node).await {
            Ok(Some(n)) => {
                if let Some(v) = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(annotation))
                {
                    return parse(v).ok_or_else(|| NodeCidrError::Malformed {
                        node: node.to_owned(),
                        annotation,
                        value: v.clone(),
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, node, "reading the Node"),
        }
        if !told {
            tracing::info!(
                node,
                annotation,
                "waiting for the agent to annotate this node"
            );
            told = true;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_cidrs_are_sub_blocks() {
        assert_eq!(
            parse("100.65.1.0/24"),
            Some("100.65.1.0/24".parse().unwrap())
        );
        assert_eq!(
            parse(" 100.65.1.0/24\n"),
            Some("100.65.1.0/24".parse().unwrap())
        );
        assert_eq!(parse("fd00:65::/64"), None);
        assert_eq!(parse("100.65.1.0"), None);
        assert_eq!(parse(""), None);
    }
}
