//! containerd NRI plugin of FleetBoard.
