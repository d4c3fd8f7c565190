//! The plugin's answers to the runtime: Configure, Synchronize and the pod sandbox events.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::sync::Mutex;
use ttrpc::r#async::TtrpcContext;

use crate::annotate::{AnnotateMetrics, Annotator};
use crate::api::{self, Event, PodSandbox, api_ttrpc};
use crate::config::PluginConfig;
use crate::ipam::{Ipam, IpamError};
use crate::metrics::Metrics;
use crate::podnet::{PodNet, node_ifname};

/// The pod annotation that carries the pod's parallel address (as FleetBoard publishes it).
pub const PARALLEL_IP_ANNOTATION: &str = "router.fleetboard.io/parallel_ip";

/// Events the plugin subscribes to.
pub const SUBSCRIBED: [Event; 3] = [
    Event::RUN_POD_SANDBOX,
    Event::STOP_POD_SANDBOX,
    Event::REMOVE_POD_SANDBOX,
];

/// Longest pod sandbox id accepted (containerd's are 64 hex digits).
const MAX_POD_ID: usize = 256;

/// The event mask of `events`: bit `event - 1` per event, as NRI encodes subscriptions.
pub fn event_mask(events: &[Event]) -> i32 {
    events
        .iter()
        .map(|e| *e as i32)
        .filter(|&e| e > 0 && e < Event::LAST as i32)
        .fold(0, |m, e| m | 1 << (e - 1))
}

/// Events a runtime speaking NRI `version` can deliver. Pod sandbox events exist since the
/// first NRI release; UpdatePodSandbox (0.8) and ValidateContainerAdjustment (0.10) came later.
/// An unknown or empty version is treated as the oldest.
pub fn supported_mask(version: &str) -> i32 {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let mut known: Vec<Event> = (1..=11).filter_map(protobuf::Enum::from_i32).collect();
    if major > 0 || minor >= 8 {
        known.extend([Event::UPDATE_POD_SANDBOX, Event::POST_UPDATE_POD_SANDBOX]);
    }
    if major > 0 || minor >= 10 {
        known.push(Event::VALIDATE_CONTAINER_ADJUSTMENT);
    }
    event_mask(&known)
}

/// Where a pod's interface goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodTarget {
    /// Host-network pod: nothing to do.
    HostNetwork,
    /// One of FleetBoard's own pods: nothing to do.
    Own,
    /// A pod with its own network namespace at this path.
    Netns(PathBuf),
}

/// The plugin: configuration, interface setup and the address manager.
pub struct FleetPlugin {
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Counters of the pod annotation task.
    pub annotate_metrics: Arc<AnnotateMetrics>,
    cfg: PluginConfig,
    net: PodNet,
    state: Mutex<State>,
    annotator: OnceLock<Annotator>,
}

struct State {
    ipam: Ipam,
    /// Pods stopped or removed since the last Synchronize (the background repair skips them).
    gone: HashSet<String>,
    /// Pods of a Synchronize still being streamed (`more` set).
    sync_buf: Vec<PodSandbox>,
}

fn rpc_err(code: ttrpc::Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn ipam_err(e: IpamError) -> ttrpc::Error {
    match e {
        IpamError::Exhausted { .. } => rpc_err(ttrpc::Code::RESOURCE_EXHAUSTED, e),
        _ => rpc_err(ttrpc::Code::INTERNAL, e),
    }
}

impl FleetPlugin {
    /// Opens the IPAM state (creating its folder) for the configuration.
    pub fn new(cfg: PluginConfig) -> Result<Self, IpamError> {
        if let Some(dir) = cfg
            .state_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| IpamError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let ipam = Ipam::open(&cfg.state_file, cfg.pod_cidr, cfg.gateway)?;
        tracing::info!(
            allocations = ipam.len(),
            state = %cfg.state_file.display(),
            "IPAM state loaded"
        );
        Ok(Self {
            metrics: Metrics::default(),
            annotate_metrics: Arc::default(),
            annotator: OnceLock::new(),
            net: PodNet::new(&cfg),
            cfg,
            state: Mutex::new(State {
                ipam,
                gone: HashSet::new(),
                sync_buf: Vec::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PluginConfig {
        &self.cfg
    }

    /// Decides where `pod`'s interface goes, rejecting malformed pods.
    pub fn target(&self, pod: &PodSandbox) -> Result<PodTarget, String> {
        check_pod_id(&pod.id)?;
        if pod.namespace == self.cfg.own_namespace {
            return Ok(PodTarget::Own);
        }
        let ns = pod.linux.as_ref().and_then(|l| {
            l.namespaces
                .iter()
                .find(|n| n.type_ == "network" || n.type_ == "net")
        });
        let Some(ns) = ns.filter(|n| !n.path.is_empty()) else {
            return Ok(PodTarget::HostNetwork);
        };
        let path = Path::new(&ns.path);
        if !path.is_absolute()
            || ns.path.chars().any(|c| c.is_whitespace() || c.is_control())
            || ns.path.split('/').any(|c| c == "..")
        {
            return Err(format!(
                "pod {}: bad network namespace path {:?}",
                pod.id, ns.path
            ));
        }
        if !path.exists() {
            return Err(format!(
                "pod {}: network namespace {} does not exist",
                pod.id, ns.path
            ));
        }
        Ok(PodTarget::Netns(path.to_path_buf()))
    }

    /// RunPodSandbox: allocate, persist, create the interface; undo everything on failure.
    pub async fn handle_run(&self, pod: &PodSandbox) -> ttrpc::Result<()> {
        let target = self.target(pod).map_err(|m| {
            Metrics::inc(&self.metrics.malformed_requests);
            rpc_err(ttrpc::Code::INVALID_ARGUMENT, m)
        })?;
        let PodTarget::Netns(netns) = target else {
            tracing::debug!(pod = %pod.id, ?target, "no parallel interface for this pod");
            return Ok(());
        };
        let mut st = self.state.lock().await;
        st.gone.remove(&pod.id);
        let fresh = st.ipam.get(&pod.id).is_none();
        let ip = st
            .ipam
            .allocate(&pod.id, &pod.namespace, &pod.name)
            .map_err(|e| {
                Metrics::inc(&self.metrics.setup_failures);
                ipam_err(e)
            })?;
        if !fresh && self.net.is_configured(&pod.id, &netns, ip).await {
            self.publish(pod, ip);
            return Ok(());
        }
        if let Err(e) = self.net.setup(&pod.id, &netns, ip).await {
            Metrics::inc(&self.metrics.setup_failures);
            if let Err(re) = st.ipam.release(&pod.id) {
                tracing::error!(pod = %pod.id, error = %re, "releasing the address after a failed setup");
            }
            tracing::warn!(pod = %pod.id, error = %e, "pod interface setup failed");
            return Err(rpc_err(
                ttrpc::Code::INTERNAL,
                format!("fleetboard: pod {}/{}: {e}", pod.namespace, pod.name),
            ));
        }
        Metrics::inc(&self.metrics.pods_configured);
        self.publish(pod, ip);
        tracing::info!(
            pod = %pod.id, namespace = %pod.namespace, name = %pod.name, %ip,
            annotation = PARALLEL_IP_ANNOTATION,
            "pod interface {} ready", self.cfg.pod_interface
        );
        Ok(())
    }

    /// StopPodSandbox / RemovePodSandbox: delete the interface and free the address;
    /// idempotent.
    pub async fn handle_release(&self, pod: &PodSandbox) -> ttrpc::Result<()> {
        check_pod_id(&pod.id).map_err(|m| {
            Metrics::inc(&self.metrics.malformed_requests);
            rpc_err(ttrpc::Code::INVALID_ARGUMENT, m)
        })?;
        let mut st = self.state.lock().await;
        st.gone.insert(pod.id.clone());
        self.net.teardown(&pod.id).await.map_err(|e| {
            rpc_err(
                ttrpc::Code::INTERNAL,
                format!("fleetboard: pod {}: {e}", pod.id),
            )
        })?;
        if let Some(rec) = st.ipam.release(&pod.id).map_err(ipam_err)? {
            Metrics::inc(&self.metrics.pods_released);
            tracing::info!(pod = %pod.id, ip = %rec.ip, "pod interface released");
        }
        Ok(())
    }

    /// Synchronize: free addresses and interfaces of pods the runtime no longer has, then
    /// (in the background, so the runtime is answered quickly) give every listed pod that lacks
    /// its interface one, keeping recorded addresses.
    pub async fn handle_sync(self: &Arc<Self>, pods: Vec<PodSandbox>) -> ttrpc::Result<()> {
        let mut wanted: HashMap<String, (PodSandbox, PathBuf)> = HashMap::new();
        for pod in pods {
            match self.target(&pod) {
                Ok(PodTarget::Netns(p)) => {
                    wanted.insert(pod.id.clone(), (pod, p));
                }
                Ok(_) => {}
                Err(m) => tracing::warn!("synchronize: skipping pod: {m}"),
            }
        }
        let mut st = self.state.lock().await;
        st.gone.clear();
        let freed = st
            .ipam
            .retain(|id| wanted.contains_key(id))
            .map_err(ipam_err)?;
        self.metrics
            .leaks_freed
            .fetch_add(freed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (id, rec) in &freed {
            if let Err(e) = self.net.teardown(id).await {
                tracing::warn!(pod = %id, error = %e, "removing a leaked interface");
            }
            tracing::info!(pod = %id, ip = %rec.ip, "freed the address of a pod the runtime no longer has");
        }
        let ours: HashSet<String> = st.ipam.pods().map(|(id, _)| node_ifname(id)).collect();
        match self.net.node_interfaces().await {
            Ok(ifs) => {
                for name in ifs.into_iter().filter(|n| !ours.contains(n)) {
                    tracing::info!(interface = %name, "removing an orphaned node-side interface");
                    let _ = self.net.remove_node_if(&name).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing node-side interfaces"),
        }
        let kept = st.ipam.len();
        drop(st);
        tracing::info!(
            pods = wanted.len(),
            kept,
            freed = freed.len(),
            "synchronized with the runtime"
        );
        let me = self.clone();
        tokio::spawn(async move { me.repair(wanted).await });
        Ok(())
    }

    async fn repair(&self, wanted: HashMap<String, (PodSandbox, PathBuf)>) {
        for (id, (pod, netns)) in wanted {
            let mut st = self.state.lock().await;
            if st.gone.contains(&id) {
                continue;
            }
            let fresh = st.ipam.get(&id).is_none();
            let ip = match st.ipam.allocate(&id, &pod.namespace, &pod.name) {
                Ok(ip) => ip,
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "synchronize: no address");
                    continue;
                }
            };
            if !fresh && self.net.is_configured(&id, &netns, ip).await {
                self.publish(&pod, ip);
                continue;
            }
            match self.net.setup(&id, &netns, ip).await {
                Ok(()) => {
                    self.publish(&pod, ip);
                    tracing::info!(pod = %id, %ip, "synchronize: pod interface (re)created")
                }
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "synchronize: pod interface setup failed");
                    if fresh {
                        let _ = st.ipam.release(&id);
                    }
                }
            }
        }
    }

    /// Publishes pods' parallel addresses through `client` from now on (see [`crate::annotate`]).
    pub fn enable_annotations(&self, client: kube::Client) {
        let _ = self
            .annotator
            .set(Annotator::spawn(client, self.annotate_metrics.clone()));
    }

    fn publish(&self, pod: &PodSandbox, ip: std::net::Ipv4Addr) {
        if let Some(a) = self.annotator.get() {
            a.publish(&pod.namespace, &pod.name, ip);
        }
    }

    /// Number of allocated addresses.
    pub async fn allocations(&self) -> usize {
        self.state.lock().await.ipam.len()
    }

    /// Address of `pod_id`, if it has one.
    pub async fn address_of(&self, pod_id: &str) -> Option<std::net::Ipv4Addr> {
        self.state.lock().await.ipam.get(pod_id).map(|r| r.ip)
    }

    /// The pod of a `what` request; a request without one is refused (INVALID_ARGUMENT) and
    /// counted as malformed.
    pub fn need_pod(&self, pod: Option<PodSandbox>, what: &str) -> ttrpc::Result<PodSandbox> {
        pod.ok_or_else(|| {
            Metrics::inc(&self.metrics.malformed_requests);
            rpc_err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("{what} without a pod"),
            )
        })
    }
}

fn check_pod_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("pod sandbox id is empty".into());
    }
    if id.len() > MAX_POD_ID || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("pod sandbox id {id:?} is malformed"));
    }
    Ok(())
}

/// The ttrpc face of [`FleetPlugin`].
pub struct PluginService(pub Arc<FleetPlugin>);

#[async_trait::async_trait]
impl api_ttrpc::Plugin for PluginService {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        let events = event_mask(&SUBSCRIBED) & supported_mask(&req.NRI_version);
        tracing::info!(
            runtime = %req.runtime_name, version = %req.runtime_version,
            nri = %req.NRI_version, events = format!("{events:#x}"),
            "configured by the runtime"
        );
        Ok(api::ConfigureResponse {
            events,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        let pods = {
            let mut st = self.0.state.lock().await;
            st.sync_buf.extend(req.pods);
            if req.more {
                return Ok(api::SynchronizeResponse {
                    more: true,
                    ..Default::default()
                });
            }
            std::mem::take(&mut st.sync_buf)
        };
        self.0.handle_sync(pods).await?;
        Ok(api::SynchronizeResponse::default())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _: api::Empty) -> ttrpc::Result<api::Empty> {
        tracing::info!("the runtime is shutting down; will reconnect when it is back");
        Ok(api::Empty::default())
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        let pod = self.0.need_pod(req.pod.into_option(), "RunPodSandbox")?;
        self.0.handle_run(&pod).await?;
        Ok(api::RunPodSandboxResponse::default())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        let pod = self.0.need_pod(req.pod.into_option(), "StopPodSandbox")?;
        self.0.handle_release(&pod).await?;
        Ok(api::StopPodSandboxResponse::default())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        let pod = self.0.need_pod(req.pod.into_option(), "RemovePodSandbox")?;
        self.0.handle_release(&pod).await?;
        Ok(api::RemovePodSandboxResponse::default())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        // Runtimes deliver pod events through StateChange too.
        let event = req.event.enum_value_or(Event::UNKNOWN);
        match event {
            Event::RUN_POD_SANDBOX => {
                self.0
                    .handle_run(&self.0.need_pod(req.pod.into_option(), "StateChange")?)
                    .await?
            }
            Event::STOP_POD_SANDBOX | Event::REMOVE_POD_SANDBOX => {
                self.0
                    .handle_release(&self.0.need_pod(req.pod.into_option(), "StateChange")?)
                    .await?
            }
            _ => {}
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_mask() {
        assert_eq!(event_mask(&SUBSCRIBED), 0b111);
        assert_eq!(event_mask(&SUBSCRIBED) & supported_mask(""), 0b111);
        assert_eq!(
            supported_mask("v0.6.1") & (1 << 11),
            0,
            "no UpdatePodSandbox before 0.8"
        );
        assert_ne!(supported_mask("v0.10.0") & (1 << 13), 0);
    }
}
