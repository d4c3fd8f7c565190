//! The agent's loop: watch Nodes, the gateway Lease and the hub's Peers; on every change
//! re-plan and apply (annotations, the Peer, the dataplane). Every config the dataplane
//! accepts is saved ([`super::saved`]); API outages leave the views and the dataplane on
//! their last state ([`crate::outage`]).
//!
//! The gateway's part of a pass is in `gateway`, this node's own annotations in `annotations`.

mod annotations;
mod gateway;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleetboard_dataplane::core::DataplaneConfig;
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};

use super::failover::HubLeader;
use super::mcs::{Controllers, ServiceView, mcs_slice_selector};
use super::plan::{self, LocalSettings, NodeInfo, NodeInputs, PeerInfo, QuicFiles};
use super::startup::{Joined, Offline, join, member_client, poll_gateway};
use super::{AgentConfig, AgentError, GATEWAY_LEASE, saved};
use crate::crd::mcs::ServiceImport;
use crate::crd::peer::Peer;
use crate::embedded::{EmbeddedDataplane, admin_socket};
use crate::fence::{Fence, fenced_client};
use crate::health::Health;
use crate::keys::GatewayKeys;
use crate::leader::{LeaderElection, Leadership};
use crate::outage::Outage;
use crate::watch::cache;
use annotations::node_info;
pub(super) use annotations::publish_node;

/// Re-plan at least this often even without events (a missed event, a dataplane that died).
const RESYNC: Duration = Duration::from_secs(10);
/// Events closer together than this are handled in one pass (a burst of watch events).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Retry delay after a failed pass.
const RETRY: Duration = Duration::from_secs(2);

/// Runs the agent until `shutdown` completes; on shutdown the gateway Lease is released (the
/// next gateway takes over at once) and the dataplane stopped.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    // Live from the start, whatever the hub does; ready once the node's dataplane runs.
    let health = Health::new("joining the hub");
    if let Some(addr) = cfg.metrics_address {
        crate::health::start(
            "--metrics-address",
            addr,
            health.clone(),
            Some(admin_socket(&cfg.state_dir)),
        )
        .await?;
    }
    let member = member_client(&cfg).await?;
    tokio::pin!(shutdown);
    // Until the API servers answer, the node's tunnel runs on its saved config (if any).
    let mut offline = Offline::new(&cfg.state_dir, health.clone());
    let joined = match offline.until(&mut shutdown, join(&member, &cfg)).await {
        Some(j) => j?,
        None => {
            if let Some(r) = offline.take() {
                let _ = r.dp.stop().await;
            }
            return Ok(());
        }
    };
    let Joined {
        hub,
        hub_token,
        node_keys,
    } = joined;
    if !offline_reason(&health) {
        health.set(false, "joined the hub; starting the dataplane");
    }

    let notify = Arc::new(Notify::new());
    let nodes = cache(Api::<Node>::all(member.clone()), None, "nodes", &notify);
    let gateway = poll_gateway(
        Api::<Lease>::namespaced(member.clone(), &cfg.namespace),
        notify.clone(),
    );
    let peers = cache(
        Api::<Peer>::namespaced(hub.clone(), &cfg.hub_namespace),
        None,
        "hub peers",
        &notify,
    );

    let services = cfg.mcs.then(|| ServiceView {
        imports: cache(
            Api::<ServiceImport>::all(member.clone()),
            None,
            "service imports",
            &notify,
        ),
        slices: cache(
            Api::<EndpointSlice>::all(member.clone()),
            Some(&mcs_slice_selector()),
            "MCS endpoint slices",
            &notify,
        ),
    });

    let (lead_tx, mut lead_rx) = watch::channel(Leadership::Following);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // What only the gateway writes goes through clients fenced by the gateway Lease.
    let fence = Fence::new();
    let gw_member = fenced_client(
        member.clone(),
        fence.clone(),
        cfg.lease_duration,
        &cfg.node_name,
    );
    let gw_hub = fenced_client(
        hub.clone(),
        fence.clone(),
        cfg.lease_duration,
        &cfg.node_name,
    );
    // An ordinary node names a gateway whose data path went silent; the election then takes
    // the Lease without waiting for it to expire (see super::failover).
    let (dead_tx, dead_rx) = watch::channel(None);
    tokio::spawn(super::failover::watch_gateway(
        admin_socket(&cfg.state_dir),
        cfg.node_name.clone(),
        gateway.clone(),
        dead_tx,
    ));
    // As the gateway, this node reports a hub leader whose data path went silent in its Peer
    // (standby hub replicas act on most members' reports, see crate::hub::failover).
    let (hub_tx, hub_rx) = watch::channel(None);
    let (silent_tx, mut hub_silent) = watch::channel(None);
    tokio::spawn(super::failover::watch_hub(
        admin_socket(&cfg.state_dir),
        hub_rx,
        silent_tx,
    ));
    let election = LeaderElection {
        namespace: cfg.namespace.clone(),
        name: GATEWAY_LEASE.into(),
        identity: cfg.node_name.clone(),
        lease_duration: cfg.lease_duration,
        renew_interval: cfg.renew_interval,
        fence,
        dead_holder: Some(dead_rx),
    };
    let election = tokio::spawn(election.run(member.clone(), lead_tx, async {
        let _ = stop_rx.await;
    }));

    let mut agent = Agent {
        local: LocalSettings {
            node_name: cfg.node_name.clone(),
            cluster_id: cfg.cluster_id.clone(),
            listen_port: cfg.listen_port,
            transport: cfg.transport,
            is_public: cfg.public,
            tun_name: cfg.tun_name.clone(),
            admin_socket: admin_socket(&cfg.state_dir),
            // The agent serves /metrics itself (health::start), from its start.
            metrics_address: None,
            service_cidrs: cfg.service_cidrs.clone(),
        },
        cfg,
        member,
        gw_member,
        gw_hub,
        node_keys,
        cluster_keys: None,
        quic_files: None,
        nodes,
        gateway,
        peers,
        services,
        controllers: Controllers::default(),
        hub_token,
        assigned: HashMap::new(),
        dataplane: None,
        was_gateway: false,
        health,
        hub_leader: hub_tx,
        hub_silent: hub_silent.clone(),
    };

    // Act only on complete views: an empty store before the first list would re-allocate.
    let (nodes, peers) = (agent.nodes.clone(), agent.peers.clone());
    let views = async {
        let _ = nodes.wait_until_ready().await;
        let _ = peers.wait_until_ready().await;
    };
    let ready = offline.until(&mut shutdown, views).await;
    agent.dataplane = offline.take();
    if ready.is_none() {
        return agent.stop(stop_tx, election).await;
    }
    let mut outage = Outage::new("reconcile");
    loop {
        let leadership = *lead_rx.borrow_and_update();
        let wait = match agent.pass(leadership).await {
            Ok(()) => {
                outage.ok();
                RESYNC
            }
            Err(e) => {
                outage.failed(&e);
                RETRY
            }
        };
        agent.report(leadership, outage.down_for().is_some());
        tokio::select! {
            _ = &mut shutdown => break,
            _ = notify.notified() => {}
            _ = lead_rx.changed() => {}
            _ = hub_silent.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
    agent.stop(stop_tx, election).await
}
fn peer_info(p: &Peer) -> PeerInfo {
    PeerInfo {
        name: p.metadata.name.clone().unwrap_or_default(),
        spec: p.spec.clone(),
        allocated: p
            .status
            .as_ref()
            .map(|s| {
                s.allocated_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A running dataplane and the config it runs.
pub(super) struct Running {
    pub(super) dp: EmbeddedDataplane,
    pub(super) config: DataplaneConfig,
}

/// True while `/ready` says the dataplane runs on the saved config.
fn offline_reason(health: &Health) -> bool {
    health.get().reason == super::startup::RUNNING_SAVED
}

struct Agent {
    cfg: AgentConfig,
    local: LocalSettings,
    member: kube::Client,
    /// `member` and the hub's client, fenced by the gateway Lease ([`crate::fence`]): for
    /// what only the gateway writes.
    gw_member: kube::Client,
    gw_hub: kube::Client,
    node_keys: GatewayKeys,
    cluster_keys: Option<GatewayKeys>,
    quic_files: Option<QuicFiles>,
    nodes: Store<Node>,
    /// The gateway Lease's holder (a node name).
    gateway: watch::Receiver<Option<String>>,
    peers: Store<Peer>,
    /// ServiceImports and MCS EndpointSlices (none with MCS off).
    services: Option<ServiceView>,
    /// The MCS controllers (running while this node is the gateway).
    controllers: Controllers,
    /// The hub token file, and its renewal (running while this node is the gateway).
    hub_token: super::token::TokenKeeper,
    /// Blocks this gateway wrote and the Node store may not show yet.
    assigned: HashMap<String, IpNet>,
    dataplane: Option<Running>,
    was_gateway: bool,
    health: Health,
    /// The hub leader while this node is the gateway (for [`super::failover::watch_hub`]).
    hub_leader: watch::Sender<Option<HubLeader>>,
    /// The hub leader this gateway's probes found silent: reported in our Peer.
    hub_silent: watch::Receiver<Option<String>>,
}

impl Agent {
    async fn stop(
        mut self,
        stop_election: tokio::sync::oneshot::Sender<()>,
        election: tokio::task::JoinHandle<Result<(), crate::leader::LeaderError>>,
    ) -> Result<(), AgentError> {
        self.controllers.stop();
        self.hub_token.stop_renewal();
        let _ = stop_election.send(());
        match tokio::time::timeout(Duration::from_secs(5), election).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway election ended with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("gateway Lease not released in time"),
        }
        if let Some(r) = self.dataplane.take()
            && let Err(e) = r.dp.stop().await
        {
            tracing::warn!(error = %e, "stopping the dataplane");
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// `/ready` after a pass: a running dataplane stays ready whatever the API servers do;
    /// the reason says when they do not answer.
    fn report(&self, leadership: Leadership, failing: bool) {
        if self.dataplane.is_none() {
            return;
        }
        let reason = match (leadership, failing) {
            (Leadership::Unsure, _) => {
                "joined: dataplane up; member API unreachable (gateway Lease not renewed): running on the last known state, no writes"
            }
            (_, true) => "joined: dataplane up; API unreachable: running on the last known state",
            _ => "joined: dataplane up",
        };
        self.health.set(true, reason);
    }

    /// One observe-plan-apply pass. A gateway that cannot renew its Lease
    /// ([`Leadership::Unsure`]) keeps planning its dataplane from the views but writes nothing.
    async fn pass(&mut self, leadership: Leadership) -> Result<(), AgentError> {
        let leading = leadership.is_leading();
        let gateway = leadership != Leadership::Following;
        if gateway != self.was_gateway {
            tracing::info!(
                node = %self.cfg.node_name,
                gateway,
                "{}",
                if gateway { "this node is now the gateway" } else { "this node is no longer the gateway" }
            );
            self.was_gateway = gateway;
            self.assigned.clear();
        }
        if leading && self.cfg.mcs {
            self.controllers.ensure(
                &self.gw_member,
                &self.gw_hub,
                &self.cfg.cluster_id,
                &self.cfg.hub_namespace,
                &self.cfg.service_cidrs,
            );
        } else if self.controllers.running() {
            self.controllers.stop();
        }
        if leading {
            self.hub_token.ensure_renewal(&self.gw_member, &self.gw_hub);
        } else {
            self.hub_token.stop_renewal();
        }
        let mut nodes: Vec<NodeInfo> = self.nodes.state().iter().map(|n| node_info(n)).collect();
        for n in &mut nodes {
            if let Some(c) = self.assigned.get(&n.name)
                && n.cidr.is_none()
            {
                n.cidr = Some(*c);
            }
        }
        let peers: Vec<PeerInfo> = self.peers.state().iter().map(|p| peer_info(p)).collect();
        let hub = self.hub_leader_seen(gateway);
        self.hub_leader.send_if_modified(|cur| {
            let changed = *cur != hub;
            *cur = hub;
            changed
        });
        self.check_own_annotations(&nodes).await?;
        self.publish_tunnel_cidr(&peers).await?;
        let desired = if gateway {
            self.gateway_pass(&nodes, &peers, leading).await?
        } else {
            self.node_pass(&nodes, &peers)
        };
        if let Some(mut c) = desired {
            if let Some(v) = &self.services {
                c.services = v.services(&self.cfg.cluster_id);
            }
            self.apply_dataplane(c).await;
        }
        Ok(())
    }
    fn node_pass(&self, nodes: &[NodeInfo], peers: &[PeerInfo]) -> Option<DataplaneConfig> {
        let holder = self.gateway.borrow().clone();
        let gateway = holder.and_then(|h| nodes.iter().find(|n| n.name == h));
        let own_block = nodes
            .iter()
            .find(|n| n.name == self.cfg.node_name)
            .and_then(|n| n.cidr);
        plan::node_config(&NodeInputs {
            local: &self.local,
            node_key: self.node_keys.private_key.clone(),
            peers,
            own_block,
            gateway,
        })
    }

    /// Applies `c`: hot when only keys, peers and routes change, a restart otherwise.
    async fn apply_dataplane(&mut self, c: DataplaneConfig) {
        if let Some(r) = self.dataplane.as_mut() {
            if r.dp.has_exited() {
                tracing::warn!("dataplane exited; restarting it");
                self.health
                    .set(false, "joined; dataplane exited, restarting it");
                self.dataplane = None;
            } else if r.config == c {
                return;
            } else if !needs_restart(&r.config, &c) {
                match r.dp.apply(c.clone()).await {
                    Ok(()) => {
                        tracing::info!(peers = c.peers.len(), key = %c.private_key.public_key(), "dataplane config applied");
                        saved::save(&self.cfg.state_dir, &c);
                        r.config = c;
                    }
                    Err(e) => tracing::warn!(error = %e, "dataplane refused the config"),
                }
                return;
            } else if let Some(r) = self.dataplane.take() {
                tracing::info!("dataplane settings changed: restarting it");
                if let Err(e) = r.dp.stop().await {
                    tracing::warn!(error = %e, "stopping the dataplane");
                }
            }
        }
        match EmbeddedDataplane::start(c.clone()).await {
            Ok(dp) => {
                tracing::info!(
                    address = ?c.interface.addresses,
                    peers = c.peers.len(),
                    key = %c.private_key.public_key(),
                    "dataplane started"
                );
                saved::save(&self.cfg.state_dir, &c);
                self.dataplane = Some(Running { dp, config: c });
                self.health.set(true, "joined: dataplane up");
            }
            Err(e) => tracing::warn!(error = %e, "dataplane did not start"),
        }
    }
}

/// True when going from `a` to `b` needs a new driver (what `set_config` cannot change).
fn needs_restart(a: &DataplaneConfig, b: &DataplaneConfig) -> bool {
    a.interface != b.interface
        || a.listen_port != b.listen_port
        || a.listen_address != b.listen_address
        || a.admin != b.admin
        || a.metrics_address != b.metrics_address
        || a.quic != b.quic
}
