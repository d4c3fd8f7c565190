//! FleetBoard's end-to-end and real-apiserver tests, one module per area, built as one test
//! binary: every module links the whole workspace, and one binary compiles and links it once
//! (44 binaries took most of CI's build time). Run one area with
//! `cargo test -p fleetboard-tests --test e2e kube_api::`.

mod dataplane_support;
mod mcs_support;

mod api_outage;
mod charts;
mod control_cluster;
mod control_hub;
mod control_membership;
mod control_peer_crd;
mod crash_safety;
mod dataplane_admin;
mod dataplane_impaired;
mod dataplane_mtu;
mod dataplane_probes;
mod dataplane_protocols;
mod dataplane_relay;
mod dataplane_resilience;
mod dns_server;
mod dockerfile;
mod first_run;
mod kube_api;
mod kube_cli;
mod kube_clusters;
mod kube_fleet;
mod kube_nodes;
mod kubectl_peers;
mod mcs_conformance;
mod mcs_dataplane;
mod netns_support;
mod nri_dataplane;
mod soak;
