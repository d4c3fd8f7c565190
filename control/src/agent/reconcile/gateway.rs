//! The gateway's part of a pass: the cluster keys, the node sub-blocks, the cluster's `Peer`
//! in the hub (and the hub leader our probes found silent), and the gateway's dataplane
//! config.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use fleetboard_dataplane::core::DataplaneConfig;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;

use super::Agent;
use crate::agent::failover::HubLeader;
use crate::agent::plan::{self, GatewayInputs, NodeBlock, NodeInfo, PeerInfo, QuicFiles};
use crate::agent::{
    AgentError, CLUSTER_KEYS_SECRET, FIELD_MANAGER, HubError, NODE_CIDR_ANNOTATION,
};
use crate::crd::peer::{HUB_LEADER_ANNOTATION, HUB_SILENT_ANNOTATION, Peer, PeerSpec};
use crate::keys::{GatewayKeys, load_or_create};

impl Agent {
    /// The gateway's dataplane config; `may_write` false (the Lease is not renewed): nothing
    /// is written (the Peer, node sub-blocks), only what is already recorded is used.
    pub(super) async fn gateway_pass(
        &mut self,
        nodes: &[NodeInfo],
        peers: &[PeerInfo],
        may_write: bool,
    ) -> Result<Option<DataplaneConfig>, AgentError> {
        let keys = match &self.cluster_keys {
            Some(k) => k.clone(),
            // Loading may create the keys Secret: a write.
            None if !may_write => return Ok(None),
            None => {
                let k = load_or_create(
                    self.member.clone(),
                    &self.cfg.namespace,
                    CLUSTER_KEYS_SECRET,
                    &self.cfg.cluster_id,
                )
                .await?;
                self.cluster_keys = Some(k.clone());
                k
            }
        };
        if self.quic_files.is_none() {
            let (certificate, private_key) =
                keys.write_quic_files(&self.cfg.state_dir.join("cluster"))?;
            self.quic_files = Some(QuicFiles {
                certificate,
                private_key,
            });
        }
        if may_write {
            self.apply_peer(&keys, peers).await?;
        }
        let Some(own) = peers.iter().find(|p| p.name == self.cfg.cluster_id) else {
            tracing::info!("waiting for our Peer to appear in the hub");
            return Ok(None);
        };
        if own.allocated.is_empty() {
            tracing::info!("waiting for the hub to allocate our block");
            return Ok(None);
        }
        let blocks = match plan::plan_node_blocks(&own.allocated, self.cfg.node_block_prefix, nodes)
        {
            Ok((mut all, changed)) => {
                if may_write {
                    for b in &changed {
                        self.write_node_block(b).await?;
                    }
                } else {
                    all.retain(|b| !changed.contains(b));
                }
                all
            }
            Err(e) => {
                tracing::warn!(error = %e, "node sub-blocks cannot be allocated");
                Vec::new()
            }
        };
        let resolve = resolve_endpoints(peers).await;
        Ok(plan::gateway_config(&GatewayInputs {
            local: &self.local,
            cluster_key: keys.private_key.clone(),
            quic: self.quic_files.clone(),
            peers,
            nodes,
            blocks: &blocks,
            resolve: &resolve,
        }))
    }

    /// The hub and its leading replica as the hub's Peer names them, while this node is the
    /// `gateway`.
    pub(super) fn hub_leader_seen(&self, gateway: bool) -> Option<HubLeader> {
        if !gateway {
            return None;
        }
        let peers = self.peers.state();
        let hub = peers.iter().find(|p| p.spec.is_hub)?;
        Some(HubLeader {
            peer: hub.metadata.name.clone()?,
            leader: hub.annotation(HUB_LEADER_ANNOTATION)?.to_owned(),
        })
    }

    /// Server-side applies this cluster's Peer spec, and the hub leader our probes found
    /// silent ([`HUB_SILENT_ANNOTATION`], none while the hub answers), when either differs
    /// from the hub's copy.
    async fn apply_peer(&self, keys: &GatewayKeys, peers: &[PeerInfo]) -> Result<(), AgentError> {
        let mut spec: PeerSpec =
            serde_json::from_value(serde_json::json!({ "clusterId": self.cfg.cluster_id }))
                .expect("minimal PeerSpec");
        spec.cidrs = self.cfg.cidrs.iter().map(|c| c.to_string()).collect();
        spec.endpoint = Some(self.cfg.public_endpoint());
        spec.port = self.cfg.listen_port;
        spec.public_key = Some(keys.public_key_base64());
        spec.cert_fingerprint = Some(keys.fingerprint.clone());
        spec.transport = self.cfg.transport;
        spec.is_public = self.cfg.public;
        let silent = self.hub_silent.borrow().clone();
        let recorded = self
            .peers
            .get(&reflector::ObjectRef::new(&self.cfg.cluster_id).within(&self.cfg.hub_namespace))
            .and_then(|p| p.annotation(HUB_SILENT_ANNOTATION).map(str::to_owned));
        if recorded == silent
            && peers
                .iter()
                .any(|p| p.name == self.cfg.cluster_id && p.spec == spec)
        {
            return Ok(());
        }
        // Server-side apply: leaving the annotation out removes what we set before.
        let mut metadata = serde_json::json!({ "name": self.cfg.cluster_id });
        if let Some(leader) = &silent {
            metadata["annotations"] = serde_json::json!({ HUB_SILENT_ANNOTATION: leader });
        }
        let obj = serde_json::json!({
            "apiVersion": "fleetboard.io/v1alpha1",
            "kind": "Peer",
            "metadata": metadata,
            "spec": spec,
        });
        Api::<Peer>::namespaced(self.gw_hub.clone(), &self.cfg.hub_namespace)
            .patch(
                &self.cfg.cluster_id,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                    AgentError::Hub(HubError::Refused {
                        url: "hub".into(),
                        flag: self.cfg.hub.auth_flag(),
                        message: s.message,
                    })
                }
                source => AgentError::Member {
                    what: format!("applying Peer {} in the hub", self.cfg.cluster_id),
                    source,
                },
            })?;
        tracing::info!(peer = %self.cfg.cluster_id, endpoint = %self.cfg.public_endpoint(), hub_silent = ?silent, "registered the cluster's Peer in the hub");
        Ok(())
    }

    async fn write_node_block(&mut self, b: &NodeBlock) -> Result<(), AgentError> {
        let patch = serde_json::json!({ "metadata": { "annotations": {
            NODE_CIDR_ANNOTATION: b.cidr.to_string(),
        }}});
        Api::<Node>::all(self.gw_member.clone())
            .patch(&b.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| AgentError::Member {
                what: format!("annotating node {} with its block", b.node),
                source,
            })?;
        tracing::info!(node = %b.node, cidr = %b.cidr, "allocated node sub-block");
        self.assigned.insert(b.node.clone(), b.cidr);
        Ok(())
    }
}

/// Resolves the endpoint host names of `peers` that are not IP addresses.
async fn resolve_endpoints(peers: &[PeerInfo]) -> HashMap<String, IpAddr> {
    let mut out = HashMap::new();
    let names: BTreeMap<&str, u16> = peers
        .iter()
        .filter_map(|p| p.spec.endpoint.as_deref().map(|e| (e, p.spec.port)))
        .filter(|(e, _)| e.parse::<IpAddr>().is_err())
        .collect();
    for (name, port) in names {
        match tokio::net::lookup_host((name, port)).await {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next() {
                    out.insert(name.to_string(), a.ip());
                }
            }
            Err(e) => tracing::warn!(endpoint = name, error = %e, "cannot resolve peer endpoint"),
        }
    }
    out
}
