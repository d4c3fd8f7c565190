//! The agent's start: the clients, joining the hub, publishing the node, the watched views,
//! and the node's tunnel from its saved config while the API servers do not answer.
//!
//! Nothing here gives up because an API call failed: [`join`] retries (one warning per
//! outage, [`crate::outage`]). A refusal (401, 403, no CRD) is retried too, logged at error
//! once: an API server that has just restarted refuses requests until its authorizer has
//! synced, and a wrong token fixed in its Secret is picked up without a restart. Meanwhile
//! [`Offline`] starts the dataplane from the config this node saved last time
//! ([`super::saved`]), so a restart during an outage does not take the node's traffic down
//! with it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio::sync::{Notify, watch};

use super::reconcile::{Running, publish_node};
use super::token::TokenKeeper;
use super::{AgentConfig, AgentError, GATEWAY_LEASE, HubError, saved};
use crate::embedded::EmbeddedDataplane;
use crate::health::Health;
use crate::keys::{GatewayKeys, load_or_create_local};
use crate::outage::Outage;

/// How often non-gateway nodes read the gateway Lease (a moved gateway is followed within it).
const LEASE_POLL: Duration = Duration::from_secs(1);
/// Delay between attempts to reach the hub or to publish the node.
const RETRY: Duration = Duration::from_secs(2);
/// `/ready` while the dataplane runs on the saved config.
pub(super) const RUNNING_SAVED: &str =
    "API unreachable: dataplane running on the config saved before the restart";

/// The member cluster's client (no I/O: the kubeconfig or the in-cluster config).
pub(super) async fn member_client(cfg: &AgentConfig) -> Result<kube::Client, AgentError> {
    let member_err = |what: &str, e: String| AgentError::Config {
        flag: "--kubeconfig",
        problem: format!("{what}: {e}"),
    };
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| member_err(&format!("reading {}", path.display()), e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| member_err("loading", e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| member_err("no in-cluster config or $KUBECONFIG", e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| member_err("client", e.to_string()))
}

/// What joining gives the agent.
pub(super) struct Joined {
    /// The hub's client.
    pub hub: kube::Client,
    /// The hub token's keeper.
    pub hub_token: TokenKeeper,
    /// This node's own keys.
    pub node_keys: GatewayKeys,
}

/// Reaches the hub (its token, then one list of Peers) and publishes this node's key and
/// address on its Node, retrying for as long as the API servers do not answer.
pub(super) async fn join(member: &kube::Client, cfg: &AgentConfig) -> Result<Joined, AgentError> {
    let (hub, hub_url, hub_token) = super::token::hub_client(member, cfg).await?;
    // An unreachable hub (its apiserver or load balancer not up yet, or down) is waited for;
    // so is one that refuses the token or lacks the CRD (logged at error: probably a
    // configuration problem, possibly an API server that has just restarted).
    let mut outage = Outage::new("hub API");
    loop {
        match cfg.hub.check(&hub, &hub_url, &cfg.hub_namespace).await {
            Ok(()) => break,
            Err(e @ HubError::Unreachable { .. }) => {
                outage.failed(&e);
            }
            Err(e) => {
                if outage.failed(&e) {
                    tracing::error!(error = %e, "the hub refuses this member; retrying");
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    outage.ok();
    tracing::info!(hub = %hub_url, cluster = %cfg.cluster_id, node = %cfg.node_name, "joined the hub");
    // The node's own keys stay on the node (the pod's state directory), never in a Secret.
    let node_keys = load_or_create_local(&cfg.state_dir.join("node"), &cfg.node_name)?;
    let mut outage = Outage::new("member API (publishing the node)");
    loop {
        match publish_node(member, cfg, &node_keys).await {
            Ok(()) => break,
            Err(AgentError::Member { what, source }) => {
                let refused = crate::outage::is_refusal(&source);
                if outage.failed(&format!("{what}: {source}")) && refused {
                    tracing::error!(error = %source, "the member API refuses to annotate this node; retrying");
                }
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(RETRY).await;
    }
    outage.ok();
    Ok(Joined {
        hub,
        hub_token,
        node_keys,
    })
}

/// The dataplane started from the saved config while the agent cannot reach its API servers.
pub(super) struct Offline {
    saved: Option<fleetboard_dataplane::core::DataplaneConfig>,
    running: Option<Running>,
    health: Health,
}

impl Offline {
    /// Reads the saved config of `state_dir` (if any).
    pub(super) fn new(state_dir: &std::path::Path, health: Health) -> Self {
        Self {
            saved: saved::load(state_dir),
            running: None,
            health,
        }
    }

    /// Runs `step` to its end, or until `shutdown` (none). If `step` has not ended after
    /// [`saved::USE_AFTER`], the saved config's dataplane is started meanwhile.
    pub(super) async fn until<T>(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        step: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(step);
        let start_at = tokio::time::Instant::now() + saved::USE_AFTER;
        loop {
            let can_start = self.running.is_none() && self.saved.is_some();
            tokio::select! {
                _ = &mut *shutdown => return None,
                out = &mut step => return Some(out),
                _ = tokio::time::sleep_until(start_at), if can_start => self.start().await,
            }
        }
    }

    async fn start(&mut self) {
        let Some(config) = self.saved.take() else {
            return;
        };
        match EmbeddedDataplane::start(config.clone()).await {
            Ok(dp) => {
                tracing::warn!(
                    peers = config.peers.len(),
                    address = ?config.interface.addresses,
                    "API servers not reachable: started the dataplane from the config saved before the restart"
                );
                self.running = Some(Running { dp, config });
                self.health.set(true, RUNNING_SAVED);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved dataplane config did not start; waiting for the API")
            }
        }
    }

    /// The dataplane it started, if any (the agent takes it over).
    pub(super) fn take(&mut self) -> Option<Running> {
        self.running.take()
    }
}

/// Reads the gateway Lease every [`LEASE_POLL`] and publishes its holder, poking `notify` on
/// a change; while the Lease cannot be read the last holder stays. Polled rather than
/// watched: agents may only get/create/update Leases.
pub(super) fn poll_gateway(
    api: Api<Lease>,
    notify: Arc<Notify>,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut outage = Outage::new("member API (gateway Lease)");
        loop {
            match api.get_opt(GATEWAY_LEASE).await {
                Ok(lease) => {
                    outage.ok();
                    let holder = lease
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity)
                        .filter(|h| !h.is_empty());
                    let changed = tx.send_if_modified(|cur| {
                        let changed = *cur != holder;
                        *cur = holder.clone();
                        changed
                    });
                    if changed {
                        tracing::info!(gateway = ?holder, "gateway Lease holder");
                        notify.notify_one();
                    }
                }
                Err(e) => {
                    outage.failed(&e);
                }
            }
            if tx.is_closed() {
                break;
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    });
    rx
}
