//! Kubernetes control plane of FleetBoard.
