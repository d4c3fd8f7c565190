//! Kubernetes control plane of FleetBoard: CRDs (`Peer`), CIDR allocation, and (next) the hub
//! and agent controllers that turn these objects into dataplane configuration.

pub mod agent;
pub mod atomic_file;
pub mod crd;
pub mod embedded;
pub mod fence;
pub mod health;
pub mod hub;
pub mod ipam;
pub mod keys;
pub mod leader;
pub mod mcs;
pub mod membership;
pub mod outage;
pub mod watch;
