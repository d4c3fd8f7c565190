//! `fleetboard hub`: leader-elected replicas; the leader runs the hub dataplane, publishes the
//! hub's `Peer`, allocates every member a block of each tunnel CIDR (persisted in the Peer's
//! status), serves every valid member in its dataplane and keeps the Peer status live.
//!
//! Every replica watches the Peers (a warm cache); only the leader writes. One reconcile pass
//! ([`Leader::pass`]) observes (cache + dataplane status), plans ([`plan::plan`], pure),
//! writes what changed (status subresource, merge patch), then applies the dataplane config.
//! A pass runs on every Peer event and every [`PASS_EVERY`] (the status refresh).

pub mod failover;
pub mod plan;
pub mod role;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetboard_dataplane::core::{DataplaneConfig, DataplaneStatus};
use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::crd::peer::{HUB_LEADER_ANNOTATION, Peer, PeerSpec, PeerStatus, Transport};
use crate::embedded::{EmbeddedDataplane, admin_socket};
use crate::fence::{Fence, fenced_client};
use crate::health::Health;
use crate::ipam::BlockAllocator;
use crate::keys::{self, GatewayKeys};
use crate::leader::{LeaderElection, Leadership};
use crate::outage::Outage;
use plan::{HubSettings, PeerInput};
use role::{PodRole, Role};

/// Field manager of everything the hub writes.
pub const FIELD_MANAGER: &str = "fleetboard.io/hub";
/// Default Lease name.
pub const LEASE_NAME: &str = "fleetboard-hub";
/// Default keys Secret name.
pub const KEYS_SECRET: &str = "fleetboard-hub-keys";
/// A reconcile pass runs at least this often: it refreshes `Connected` from the dataplane.
pub const PASS_EVERY: Duration = Duration::from_secs(2);
/// Retry delay after a failure to load keys or start the dataplane.
const RETRY: Duration = Duration::from_secs(2);
/// `/ready` of a replica that is not (yet) leading, without `--label-pod`: live, not ready,
/// so that a Service selecting every replica only sends members to the leader.
const STANDBY: &str = "standby: not leading (only the leader serves the tunnel)";
/// `/ready` of a standby replica with `--label-pod`: ready (the Service selects the leader by
/// its Pod label, see [`role`]), so rolling updates of the replicas proceed.
const STANDBY_LABELLED: &str =
    "standby: ready to take over (the Service selects the leader's pod by label)";
/// `/ready` of the leader until its dataplane serves the tunnel.
const LEADER_STARTING: &str = "leader: starting the tunnel";
/// `/ready` of the leader while it serves the tunnel.
const LEADER_SERVING: &str = "leader: serving the tunnel";
/// `/ready` of a leader that cannot renew its Lease because the hub API does not answer:
/// still ready (the Service must keep sending members here), nothing written meanwhile.
const LEADER_API_UNREACHABLE: &str = "leader: hub API unreachable, serving the tunnel on the last known state (no writes until the Lease is renewed)";
/// Resolved endpoint names are kept this long.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Settings of `fleetboard hub` (one per replica; the CLI fills it).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Shared namespace of the Peers, the Lease and the keys Secret.
    pub namespace: String,
    /// The hub's cluster id (its Peer's name).
    pub cluster_id: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Tunnel CIDRs (v4 and/or v6) blocks are allocated from.
    pub tunnel_cidrs: Vec<IpNet>,
    /// Ranges never handed out as a cluster block (`--reserved-cidr`; default the MCS
    /// ClusterSetIP block 100.127.0.0/16).
    pub reserved_cidrs: Vec<IpNet>,
    /// Block prefix length for IPv4 pools.
    pub block_prefix: u8,
    /// Block prefix length for IPv6 pools.
    pub block_prefix_v6: u8,
    /// Public endpoint (host name or address) published in the hub's Peer.
    pub endpoint: Option<String>,
    /// WireGuard UDP port (QUIC on the next port).
    pub listen_port: u16,
    /// Port published in the hub's Peer (members dial it, QUIC on the next one): a NodePort
    /// or NAT in front of the listener; `None` publishes `listen_port`.
    pub advertise_port: Option<u16>,
    /// The hub's default transport.
    pub transport: Transport,
    /// TUN device name.
    pub tun_name: String,
    /// State folder (admin socket, QUIC key files).
    pub state_dir: PathBuf,
    /// `/metrics` `/live` `/ready` address, served by every replica from its start
    /// ([`crate::health`]): live always, ready while leading with the dataplane up.
    pub metrics_address: Option<SocketAddr>,
    /// Lease name.
    pub lease_name: String,
    /// Keys Secret name.
    pub keys_secret: String,
    /// Lease duration (a standby takes over this long after the leader's last renewal).
    pub lease_duration: Duration,
    /// Lease renewal interval.
    pub renew_interval: Duration,
    /// This replica's own Pod (in `namespace`), labelled with its role
    /// ([`role::ROLE_LABEL`]) so that the Service selects the leader; a standby is then
    /// ready. `None`: no label, and only the leader is ready.
    pub label_pod: Option<String>,
}

/// Why the hub cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A flag is wrong (the message names it).
    #[error("{0}")]
    Config(String),
    /// Leader election failed.
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
    /// The health endpoint could not be bound.
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
}

impl HubConfig {
    /// One block allocator per tunnel CIDR (checks `--tunnel-cidr` and the block prefixes).
    pub fn pools(&self) -> Result<Vec<BlockAllocator>, HubError> {
        if self.tunnel_cidrs.is_empty() {
            return Err(HubError::Config(
                "--tunnel-cidr: at least one is required".into(),
            ));
        }
        let mut out: Vec<BlockAllocator> = Vec::new();
        for c in &self.tunnel_cidrs {
            let (flag, len) = match c {
                IpNet::V4(_) => ("--block-prefix", self.block_prefix),
                IpNet::V6(_) => ("--block-prefix-v6", self.block_prefix_v6),
            };
            if let Some(o) = out
                .iter()
                .find(|o| o.pool().contains(&c.network()) || c.contains(&o.pool().network()))
            {
                return Err(HubError::Config(format!(
                    "--tunnel-cidr {c} overlaps {}",
                    o.pool()
                )));
            }
            if let Some(r) = self.reserved_cidrs.iter().find(|r| r.contains(c)) {
                return Err(HubError::Config(format!(
                    "--reserved-cidr {r} covers the whole --tunnel-cidr {c}"
                )));
            }
            let a = BlockAllocator::new(*c, len)
                .map_err(|e| HubError::Config(format!("{flag}: {e}")))?;
            out.push(a);
        }
        if self.listen_port == 0 || self.listen_port == u16::MAX {
            return Err(HubError::Config(
                "--listen-port: must be 1..=65534 (QUIC listens on the next port)".into(),
            ));
        }
        Ok(out)
    }
}

/// Runs a hub replica until `shutdown`: elects, leads (or stands by), releases the Lease.
pub async fn run(
    config: HubConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let pools = config.pools()?;
    let mut role = config
        .label_pod
        .as_deref()
        .map(|pod| PodRole::new(client.clone(), &config.namespace, pod));
    let standby = match role {
        Some(_) => (true, STANDBY_LABELLED),
        None => (false, STANDBY),
    };
    let health = Health::new(STANDBY);
    if let Some(addr) = config.metrics_address {
        crate::health::start(
            "--metrics-address",
            addr,
            health.clone(),
            Some(admin_socket(&config.state_dir)),
        )
        .await?;
    }
    let (lead_tx, mut lead_rx) = watch::channel(Leadership::Following);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (dead_tx, dead_rx) = watch::channel(None::<String>);
    // The leader writes Peers only through a client fenced by the Lease: a leader frozen
    // past its renew deadline cannot write once it runs again ([`crate::fence`]).
    let fence = Fence::new();
    let fenced = fenced_client(
        client.clone(),
        fence.clone(),
        config.lease_duration,
        &config.identity,
    );
    let election = LeaderElection {
        namespace: config.namespace.clone(),
        name: config.lease_name.clone(),
        identity: config.identity.clone(),
        lease_duration: config.lease_duration,
        renew_interval: config.renew_interval,
        fence,
        // Named by most members' probes (see failover): taken at once, not at Lease expiry.
        dead_holder: Some(dead_rx),
    };
    let elect = tokio::spawn(election.run(client.clone(), lead_tx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    let api: Api<Peer> = Api::namespaced(fenced, &config.namespace);
    let changed = Arc::new(Notify::new());
    // Every change wakes the leader's pass and re-counts the members' reports of a silent
    // leader (see failover).
    let reader = {
        let changed = changed.clone();
        let hub_id = config.cluster_id.clone();
        crate::watch::reflect(
            api.clone(),
            watcher::Config::default(),
            "hub API (peer watch)",
            move |peers| {
                // The election (the receiver) ended: so did this replica.
                if dead_tx.is_closed() {
                    return false;
                }
                changed.notify_one();
                let state = peers.state();
                let silent =
                    failover::silent_leader(state.iter().map(|p| &**p), &hub_id, Timestamp::now());
                dead_tx.send_if_modified(|cur| {
                    if *cur == silent {
                        return false;
                    }
                    if let Some(l) = &silent {
                        tracing::warn!(leader = %l, "most connected members report the hub leader's data path silent");
                    }
                    *cur = silent;
                    true
                });
                true
            },
        )
    };

    tracing::info!(identity = %config.identity, namespace = %config.namespace, "hub replica up; standing by for the lease");
    if let Some(r) = role.as_mut() {
        r.set(Role::Standby).await;
    }
    health.set(standby.0, standby.1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = lead_rx.wait_for(|l| l.is_leading()) => if r.is_err() { break },
        }
        let mut leader = Leader::new(
            &config,
            pools.clone(),
            api.clone(),
            reader.clone(),
            changed.clone(),
            health.clone(),
            role.take(),
            lead_rx.clone(),
        );
        // Only another holder ends the term: a leader that cannot renew (the hub API does not
        // answer) keeps the tunnel up and stops writing ([`Leadership::Unsure`]).
        let lost = async {
            let _ = lead_rx.wait_for(|l| *l == Leadership::Following).await;
        };
        let mut stopping = false;
        tokio::select! {
            _ = &mut shutdown => stopping = true,
            _ = lost => tracing::warn!("another replica holds the Lease: stopping the hub dataplane"),
            _ = leader.lead() => {}
        }
        leader.stop_dataplane().await;
        role = leader.role.take();
        if let Some(r) = role.as_mut() {
            r.set(Role::Standby).await;
        }
        health.set(standby.0, standby.1);
        if stopping {
            break;
        }
    }
    let _ = stop_tx.send(true);
    match elect.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "leader election task"),
    }
    Ok(())
}

/// The leader's state for one term.
struct Leader<'a> {
    config: &'a HubConfig,
    pools: Vec<BlockAllocator>,
    api: Api<Peer>,
    reader: Store<Peer>,
    changed: Arc<Notify>,
    settings: Option<HubSettings>,
    keys: Option<GatewayKeys>,
    dataplane: Option<EmbeddedDataplane>,
    applied: Option<DataplaneConfig>,
    /// Statuses written this term, by uid (the cache may lag behind our own writes).
    written: HashMap<String, PeerStatus>,
    /// When bytes/RTT were last written, by uid.
    volatile_at: HashMap<String, tokio::time::Instant>,
    dns: HashMap<String, (Option<IpAddr>, tokio::time::Instant)>,
    health: Health,
    /// This replica's Pod label, set to leader once the dataplane serves.
    role: Option<PodRole>,
    /// Where this replica stands in the election (passes run only while leading).
    leadership: watch::Receiver<Leadership>,
    /// The hub API as this term's passes see it (one warning per outage).
    outage: Outage,
}

impl<'a> Leader<'a> {
    // One argument per shared handle of the replica (its cache, health, Pod label, election).
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &'a HubConfig,
        pools: Vec<BlockAllocator>,
        api: Api<Peer>,
        reader: Store<Peer>,
        changed: Arc<Notify>,
        health: Health,
        role: Option<PodRole>,
        leadership: watch::Receiver<Leadership>,
    ) -> Self {
        Self {
            config,
            pools,
            api,
            reader,
            changed,
            settings: None,
            keys: None,
            dataplane: None,
            applied: None,
            written: HashMap::new(),
            volatile_at: HashMap::new(),
            dns: HashMap::new(),
            health,
            role,
            leadership,
            outage: Outage::new("hub API"),
        }
    }

    /// Leads until cancelled (the caller drops this future when leadership ends).
    async fn lead(&mut self) {
        tracing::info!(identity = %self.config.identity, "leading: starting the hub");
        // Not ready until the dataplane serves the tunnel: a leader that cannot start it
        // (no TUN device, a port in use) shows it in `/ready` and the pod's Ready condition.
        self.health.set(false, LEADER_STARTING);
        let c = self.config;
        let keys = loop {
            match keys::load_or_create(
                self.api_client(),
                &c.namespace,
                &c.keys_secret,
                &c.cluster_id,
            )
            .await
            {
                Ok(k) => {
                    self.outage.ok();
                    break k;
                }
                Err(e) => {
                    self.outage.failed(&format!("hub keys: {e}"));
                }
            }
            tokio::time::sleep(RETRY).await;
        };
        let quic_files = loop {
            match keys.write_quic_files(&c.state_dir) {
                Ok(f) => break f,
                Err(e) => tracing::error!(error = %e, "writing the QUIC identity"),
            }
            tokio::time::sleep(RETRY).await;
        };
        self.settings = Some(HubSettings {
            cluster_id: c.cluster_id.clone(),
            pools: self.pools.clone(),
            reserved: c.reserved_cidrs.clone(),
            private_key: keys.private_key.clone(),
            listen_port: c.listen_port,
            transport: c.transport,
            tun_name: c.tun_name.clone(),
            admin_socket: admin_socket(&c.state_dir),
            // The process serves /metrics itself (health::start), from its start.
            metrics_address: None,
            quic_files,
        });
        self.keys = Some(keys);
        if self.reader.wait_until_ready().await.is_err() {
            tracing::error!("peer cache writer dropped");
            return;
        }
        loop {
            if !self.leadership.borrow().is_leading() {
                self.ride_out_lease_outage().await;
            }
            self.pass().await;
            tokio::select! {
                _ = self.changed.notified() => {
                    // Let a burst of events settle into one pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(PASS_EVERY) => {}
            }
        }
    }

    /// While the Lease cannot be renewed: no passes (nothing may be written), the dataplane
    /// keeps its last config, `/ready` says why. Returns once leading again (losing the Lease
    /// to another holder ends the term in [`run`]).
    async fn ride_out_lease_outage(&mut self) {
        if self.dataplane.is_some() {
            self.health.set(true, LEADER_API_UNREACHABLE);
        }
        let _ = self.leadership.wait_for(|l| l.is_leading()).await;
        if self.dataplane.is_some() {
            self.health.set(true, LEADER_SERVING);
        }
    }

    fn api_client(&self) -> kube::Client {
        self.api.clone().into_client()
    }

    async fn stop_dataplane(&mut self) {
        if let Some(dp) = self.dataplane.take() {
            match dp.stop().await {
                Ok(()) => tracing::info!("hub dataplane stopped"),
                Err(e) => tracing::warn!(error = %e, "hub dataplane stopped with an error"),
            }
        }
        self.applied = None;
    }

    async fn resolve(&mut self, host: &str) -> Option<IpAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(ip);
        }
        if let Some((ip, at)) = self.dns.get(host)
            && at.elapsed() < DNS_TTL
        {
            return *ip;
        }
        let ip = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, 0)))
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|mut it| it.next())
            .map(|a| a.ip());
        self.dns
            .insert(host.to_string(), (ip, tokio::time::Instant::now()));
        ip
    }

    /// One reconcile pass: observe, plan, write, apply.
    async fn pass(&mut self) {
        let Some(settings) = self.settings.clone() else {
            return;
        };
        let Some(keys) = self.keys.clone() else {
            return;
        };
        if let Some(dp) = self.dataplane.as_mut()
            && dp.has_exited()
        {
            tracing::error!("hub dataplane exited; restarting it");
            self.dataplane = None;
            self.applied = None;
        }
        let dp_status = match &self.dataplane {
            Some(dp) => dp.status().await.ok(),
            None => None,
        };
        let mut peers = self.reader.state();
        peers.sort_by(|a, b| {
            let ka = (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                a.metadata.name.clone(),
            );
            let kb = (
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.metadata.name.clone(),
            );
            ka.cmp(&kb)
        });
        let live: HashSet<String> = peers
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.written.retain(|uid, _| live.contains(uid));
        self.volatile_at.retain(|uid, _| live.contains(uid));

        self.publish_hub_spec(&peers, &keys).await;
        let hub_obj = peers
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(self.config.cluster_id.as_str()))
            .cloned();
        let hub_current = hub_obj
            .as_ref()
            .map(|p| self.current_status(p))
            .unwrap_or_default();
        let hub_allocated = parse_blocks(&hub_current.allocated_cidrs);

        let members: Vec<Arc<Peer>> = peers
            .iter()
            .filter(|p| {
                p.metadata.name.as_deref() != Some(self.config.cluster_id.as_str())
                    && !p.spec.is_hub
            })
            .cloned()
            .collect();
        let mut inputs = Vec::with_capacity(members.len());
        for p in &members {
            let endpoint_ip = match p.spec.endpoint.clone() {
                Some(h) => self.resolve(&h).await,
                None => None,
            };
            inputs.push(PeerInput {
                name: p.metadata.name.clone().unwrap_or_default(),
                spec: p.spec.clone(),
                allocated: parse_blocks(&self.current_status(p).allocated_cidrs),
                endpoint_ip,
            });
        }
        let mut plan = plan::plan(&settings, &hub_allocated, &inputs);
        let now = Timestamp::now();

        // Persist first: a block is used only once it is in the Peer's status.
        if let Some(h) = &hub_obj {
            let st = status::hub_status(
                &hub_current,
                &plan.hub_allocated,
                h.metadata.generation,
                &self.config.identity,
                now,
            );
            self.write_status(h, st).await;
        }
        let mut persisted: HashSet<String> = HashSet::new();
        for (p, m) in members.iter().zip(plan.members.iter()) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let current = self.current_status(p);
            let dp_peer = dp_status.as_ref().and_then(|s| find_dp_peer(s, &m.name));
            let mut obs = status::observe(dp_peer, now);
            if dp_peer.is_none() && m.peer.is_some() {
                // Served from this pass on: the dataplane has not seen it yet.
                obs.reason = "NoHandshake";
                obs.message = "no handshake yet".into();
            }
            let refresh = self
                .volatile_at
                .get(&uid)
                .is_none_or(|t| t.elapsed() >= status::VOLATILE_EVERY);
            let desired =
                status::member_status(&current, m, &obs, p.metadata.generation, now, refresh);
            let volatile_changed = desired.rx_bytes != current.rx_bytes
                || desired.tx_bytes != current.tx_bytes
                || desired.rtt_micros != current.rtt_micros
                || desired.probe_rtt_micros != current.probe_rtt_micros
                || desired.probe_loss_percent != current.probe_loss_percent;
            if self.write_status(p, desired).await {
                if volatile_changed {
                    self.volatile_at.insert(uid, tokio::time::Instant::now());
                }
                persisted.insert(m.name.clone());
            }
        }
        plan.dataplane
            .peers
            .retain(|peer| peer.name.as_ref().is_some_and(|n| persisted.contains(n)));
        self.apply_dataplane(plan.dataplane).await;
        if self.dataplane.is_some()
            && let Some(r) = self.role.as_mut()
        {
            r.set(Role::Leader).await;
        }
    }

    /// The status as we last wrote it this term, else as the cache has it.
    fn current_status(&self, p: &Peer) -> PeerStatus {
        p.metadata
            .uid
            .as_ref()
            .and_then(|u| self.written.get(u))
            .cloned()
            .or_else(|| p.status.clone())
            .unwrap_or_default()
    }

    /// Writes `desired` if it differs from the current status; true when it is persisted.
    async fn write_status(&mut self, p: &Peer, desired: PeerStatus) -> bool {
        let current = self.current_status(p);
        if current == desired {
            return true;
        }
        let name = p.metadata.name.clone().unwrap_or_default();
        let body = serde_json::json!({ "status": status_patch(&desired) });
        match self
            .api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                self.outage.ok();
                if current.allocated_cidrs != desired.allocated_cidrs {
                    tracing::info!(peer = %name, blocks = ?desired.allocated_cidrs, "allocation persisted");
                }
                for c in &desired.conditions {
                    if !current
                        .conditions
                        .iter()
                        .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
                    {
                        tracing::info!(peer = %name, condition = %c.type_, status = %c.status, reason = %c.reason, message = %c.message, "peer condition");
                    }
                }
                if let Some(uid) = p.metadata.uid.clone() {
                    self.written.insert(uid, desired);
                }
                true
            }
            Err(e) => {
                self.outage
                    .failed(&format!("writing the status of peer {name}: {e}"));
                // Unchanged blocks are persisted already; new ones are not.
                current.allocated_cidrs == desired.allocated_cidrs
            }
        }
    }

    /// Server-side applies the hub's own Peer spec, and this replica's identity as the leader
    /// ([`HUB_LEADER_ANNOTATION`], what members name when its probes go silent), when either
    /// differs from what it should be.
    async fn publish_hub_spec(&mut self, peers: &[Arc<Peer>], keys: &GatewayKeys) {
        let c = self.config;
        let desired = PeerSpec {
            cluster_id: c.cluster_id.clone(),
            cidrs: c
                .tunnel_cidrs
                .iter()
                .map(|n| n.trunc().to_string())
                .collect(),
            endpoint: c.endpoint.clone(),
            port: c.advertise_port.unwrap_or(c.listen_port),
            public_key: Some(keys.public_key_base64()),
            cert_fingerprint: Some(keys.fingerprint.clone()),
            transport: c.transport,
            is_hub: true,
            is_public: true,
        };
        let current = peers
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(c.cluster_id.as_str()));
        if current.is_some_and(|p| {
            p.spec == desired && p.annotation(HUB_LEADER_ANNOTATION) == Some(c.identity.as_str())
        }) {
            return;
        }
        let obj = serde_json::json!({
            "apiVersion": "fleetboard.io/v1alpha1",
            "kind": "Peer",
            "metadata": {
                "name": c.cluster_id,
                "namespace": c.namespace,
                "annotations": { HUB_LEADER_ANNOTATION: c.identity },
            },
            "spec": desired,
        });
        match self
            .api
            .patch(
                &c.cluster_id,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(peer = %c.cluster_id, endpoint = ?c.endpoint, leader = %c.identity, "published the hub peer")
            }
            Err(e) => {
                self.outage.failed(&format!("publishing the hub peer: {e}"));
            }
        }
    }

    async fn apply_dataplane(&mut self, config: DataplaneConfig) {
        if self.applied.as_ref() == Some(&config) {
            return;
        }
        match &self.dataplane {
            Some(dp) => match dp.apply(config.clone()).await {
                Ok(()) => {
                    tracing::info!(peers = config.peers.len(), "hub dataplane config applied");
                    self.applied = Some(config);
                }
                Err(e) => tracing::error!(error = %e, "applying the hub dataplane config"),
            },
            None => match EmbeddedDataplane::start(config.clone()).await {
                Ok(dp) => {
                    tracing::info!(udp = %dp.local_addr(), peers = config.peers.len(), "hub dataplane started");
                    self.dataplane = Some(dp);
                    self.applied = Some(config);
                    self.health.set(true, LEADER_SERVING);
                }
                Err(e) => {
                    tracing::error!(error = %e, "starting the hub dataplane");
                    self.health
                        .set(false, &format!("leader: the dataplane did not start: {e}"));
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    }
}

fn find_dp_peer<'s>(
    s: &'s DataplaneStatus,
    name: &str,
) -> Option<&'s fleetboard_dataplane::core::PeerStatus> {
    s.peers.iter().find(|p| p.name.as_deref() == Some(name))
}

fn parse_blocks(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// The status as a merge patch: absent optional fields become explicit nulls (a merge patch
/// would otherwise leave stale values in place).
fn status_patch(s: &PeerStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in [
            "conditions",
            "allocatedCidrs",
            "lastHandshake",
            "rttMicros",
            "probeRttMicros",
            "probeLossPercent",
            "rxBytes",
            "txBytes",
            "observedGeneration",
        ] {
            o.entry(k).or_insert(serde_json::Value::Null);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tunnel: &str, reserved: &str) -> HubConfig {
        HubConfig {
            namespace: "fleetboard-system".into(),
            cluster_id: "hub".into(),
            identity: "hub-0".into(),
            tunnel_cidrs: vec![tunnel.parse().unwrap()],
            reserved_cidrs: vec![reserved.parse().unwrap()],
            block_prefix: 16,
            block_prefix_v6: 64,
            endpoint: None,
            listen_port: 31820,
            advertise_port: None,
            transport: Transport::Wg,
            tun_name: "fb0".into(),
            state_dir: "/run/fleetboard".into(),
            metrics_address: None,
            lease_name: LEASE_NAME.into(),
            keys_secret: KEYS_SECRET.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(2),
            label_pod: None,
        }
    }

    #[test]
    fn a_reserved_cidr_may_not_cover_a_whole_tunnel_cidr() {
        assert_eq!(
            config("100.64.0.0/10", "100.127.0.0/16")
                .pools()
                .unwrap()
                .len(),
            1
        );
        let e = config("100.127.0.0/16", "100.64.0.0/10")
            .pools()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--reserved-cidr 100.64.0.0/10"), "{e}");
    }
}
