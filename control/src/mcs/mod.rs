//! Multi-cluster services (KEP-1645) on FleetBoard.
//!
//! - [`run_endpointslice_controller`]: in a member, EndpointSlices with the pods' parallel
//!   addresses for every *exported* Service ([`endpoints`]).
//! - [`run_syncer`]: the MCS-Syncer. Pushes this cluster's exports to the hub as
//!   `ExportedService` objects, pulls everyone's, and keeps ServiceImports (with a ClusterSetIP
//!   from the cluster's service block) and their MCS EndpointSlices in every namespace that
//!   exists; writes ServiceExport conditions ([`plan`], [`syncer`]).
//! - [`dataplane_services`]: ServiceImports and their slices as the dataplane's `services`.
//!
//! Both controllers are level-triggered: watches fill caches and any change triggers a full
//! pass that computes the wanted objects with pure functions, then applies only differences
//! (server-side apply, field managers `fleetboard.io/parallel-endpointslice` and
//! `fleetboard.io/mcs-syncer`). They are library functions: the gateway agent runs them while
//! it holds the gateway Lease.

pub mod endpoints;
pub mod plan;
pub mod services;
pub mod syncer;
mod trigger;
pub mod vip;

use std::time::Duration;

use ipnet::IpNet;

pub use endpoints::run_endpointslice_controller;
pub use services::dataplane_services;
pub use syncer::run_syncer;

/// The pod annotation with the pod's parallel address(es) (written by the NRI plugin; a
/// comma-separated list is accepted for dual-stack pods).
pub const PARALLEL_IP_ANNOTATION: &str = "router.fleetboard.io/parallel_ip";
/// `endpointslice.kubernetes.io/managed-by` of the parallel EndpointSlices.
pub const PARALLEL_MANAGED_BY: &str = "parallel.fleetboard.io";
/// `endpointslice.kubernetes.io/managed-by` of the MCS EndpointSlices of ServiceImports.
pub const MCS_MANAGED_BY: &str = "mcs.fleetboard.io";
/// Label of the parallel EndpointSlices naming their Service (not `kubernetes.io/service-name`:
/// kube-proxy must not take parallel addresses as the Service's endpoints).
pub const LABEL_PARALLEL_SERVICE: &str = "fleetboard.io/parallel-service";
/// Label the syncer puts on the ServiceImports it owns.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on our ServiceImports.
pub const MANAGED_BY_VALUE: &str = "fleetboard";
/// The EndpointSlice label of the managing controller.
pub const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Default per-cluster block of ClusterSetIPs. It lies inside the default tunnel CIDR
/// (100.64.0.0/10) so pods already route it through their parallel interface; the hub must
/// not hand it out as a cluster block (its last /16).
pub const DEFAULT_SERVICE_CIDR: &str = "100.127.0.0/16";
/// Default namespace of the hub objects.
pub const DEFAULT_HUB_NAMESPACE: &str = "fleetboard-system";
/// A full pass also runs this often without any watch event (repairs drift, retries).
pub const RESYNC: Duration = Duration::from_secs(30);
/// Events within this window are handled by one pass (a Deployment's pods appear together).
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Settings of the MCS-Syncer.
#[derive(Debug, Clone)]
pub struct SyncerConfig {
    /// This cluster's id (the hub Peer name).
    pub cluster_id: String,
    /// Shared namespace in the hub (ExportedServices, Peers).
    pub hub_namespace: String,
    /// Blocks of ClusterSetIPs, at most one per IP family.
    pub service_cidrs: Vec<IpNet>,
    /// Only import from clusters that have a Peer in the hub (a deleted Peer = a lost cluster
    /// whose endpoints go away everywhere). Off: every ExportedService counts.
    pub require_peer: bool,
}

impl SyncerConfig {
    /// Defaults for `cluster_id`: hub namespace `fleetboard-system`, service block
    /// [`DEFAULT_SERVICE_CIDR`], peers required.
    pub fn new(cluster_id: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            hub_namespace: DEFAULT_HUB_NAMESPACE.into(),
            service_cidrs: vec![DEFAULT_SERVICE_CIDR.parse().expect("valid default")],
            require_peer: true,
        }
    }
}

/// Settings of the parallel EndpointSlice controller.
#[derive(Debug, Clone, Default)]
pub struct EndpointSliceConfig {
    /// Only this namespace (none: all).
    pub namespace: Option<String>,
}

/// Errors of the MCS controllers.
#[derive(Debug, thiserror::Error)]
pub enum McsError {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch ended (its writer was dropped).
    #[error("watch ended: {0}")]
    Watch(String),
    /// The configuration is wrong (names the field).
    #[error("invalid MCS config: {field}: {problem}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}
