//! The gateway's multi-cluster-service controllers (started while this node holds the
//! gateway Lease, stopped when it loses it) and every node's view of the service VIPs.

use std::time::Duration;

use fleetboard_dataplane_core::service_nat::ServiceConfig;
use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tokio::task::JoinHandle;

use crate::crd::mcs::ServiceImport;
use crate::mcs::{
    self, EndpointSliceConfig, LABEL_SLICE_MANAGED_BY, MCS_MANAGED_BY, McsError, SyncerConfig,
};

/// A controller that stopped is restarted after at least this long.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// The label selector of the MCS EndpointSlices the syncer writes.
pub(super) fn mcs_slice_selector() -> String {
    format!("{LABEL_SLICE_MANAGED_BY}={MCS_MANAGED_BY}")
}

/// One running controller.
struct Task {
    name: &'static str,
    handle: JoinHandle<Result<(), McsError>>,
    started: tokio::time::Instant,
}

/// The parallel EndpointSlice controller and the MCS-Syncer of a gateway.
#[derive(Default)]
pub(super) struct Controllers {
    tasks: Vec<Task>,
}

impl Controllers {
    /// True while the controllers run (this node is the gateway).
    pub(super) fn running(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Starts both controllers (or restarts one that stopped).
    pub(super) fn ensure(
        &mut self,
        member: &kube::Client,
        hub: &kube::Client,
        cluster_id: &str,
        hub_namespace: &str,
        service_cidrs: &[IpNet],
    ) {
        if self.tasks.is_empty() {
            tracing::info!(cluster = cluster_id, service_cidrs = ?service_cidrs, "starting the MCS controllers");
        }
        for name in ["parallel-endpointslices", "mcs-syncer"] {
            if let Some(t) = self.tasks.iter_mut().find(|t| t.name == name) {
                if !t.handle.is_finished() || t.started.elapsed() < RESTART_AFTER {
                    continue;
                }
                let why = match futures::FutureExt::now_or_never(&mut t.handle) {
                    Some(Ok(Err(e))) => e.to_string(),
                    Some(Err(e)) => e.to_string(),
                    _ => "ended".to_string(),
                };
                tracing::warn!(controller = name, error = %why, "MCS controller stopped; restarting it");
            }
            self.tasks.retain(|t| t.name != name);
            let handle = match name {
                "parallel-endpointslices" => tokio::spawn(mcs::run_endpointslice_controller(
                    member.clone(),
                    EndpointSliceConfig::default(),
                )),
                _ => {
                    let mut cfg = SyncerConfig::new(cluster_id);
                    cfg.hub_namespace = hub_namespace.to_string();
                    cfg.service_cidrs = service_cidrs.to_vec();
                    tokio::spawn(mcs::run_syncer(member.clone(), hub.clone(), cfg))
                }
            };
            self.tasks.push(Task {
                name,
                handle,
                started: tokio::time::Instant::now(),
            });
        }
    }

    /// Stops both controllers (the gateway Lease is lost, or the agent stops).
    pub(super) fn stop(&mut self) {
        if !self.tasks.is_empty() {
            tracing::info!("stopping the MCS controllers");
        }
        for t in self.tasks.drain(..) {
            t.handle.abort();
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This cluster's ServiceImports and MCS EndpointSlices, as every node's agent sees them.
pub(super) struct ServiceView {
    /// ServiceImports of every namespace.
    pub imports: Store<ServiceImport>,
    /// The MCS EndpointSlices of every namespace.
    pub slices: Store<EndpointSlice>,
}

impl ServiceView {
    /// The dataplane's `services` (one per ClusterSetIP).
    pub(super) fn services(&self, cluster_id: &str) -> Vec<ServiceConfig> {
        let imports: Vec<ServiceImport> =
            self.imports.state().iter().map(|i| (**i).clone()).collect();
        let slices: Vec<EndpointSlice> =
            self.slices.state().iter().map(|s| (**s).clone()).collect();
        mcs::dataplane_services(&imports, &slices, cluster_id)
    }
}
