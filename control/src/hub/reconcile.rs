//! The leader's term: a [`Leader`] keeps the hub dataplane, the hub's `Peer` and every
//! member's `Peer` status in line with the plan, one reconcile pass at a time.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetboard_dataplane::core::{DataplaneConfig, DataplaneStatus};
use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};

use super::plan::{HubSettings, PeerInput};
use super::role::{PodRole, Role};
use super::{
    DNS_TTL, FIELD_MANAGER, HubConfig, LEADER_API_UNREACHABLE, LEADER_SERVING, LEADER_STARTING,
    PASS_EVERY, RETRY, plan, status,
};
use crate::crd::peer::{HUB_LEADER_ANNOTATION, Peer, PeerSpec, PeerStatus};
use crate::embedded::{EmbeddedDataplane, admin_socket};
use crate::health::Health;
use crate::ipam::BlockAllocator;
use crate::keys::{self, GatewayKeys};
use crate::leader::Leadership;
use crate::outage::Outage;

/// The leader's state for one term.
pub(super) struct Leader<'a> {
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
    pub(super) role: Option<PodRole>,
    /// Where this replica stands in the election (passes run only while leading).
    leadership: watch::Receiver<Leadership>,
    /// The hub API as this term's passes see it (one warning per outage).
    outage: Outage,
}

impl<'a> Leader<'a> {
    // One argument per shared handle of the replica (its cache, health, Pod label, election).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
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
    pub(super) async fn lead(&mut self) {
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

    pub(super) async fn stop_dataplane(&mut self) {
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
