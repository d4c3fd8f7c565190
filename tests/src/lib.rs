//! Test support for FleetBoard's end-to-end tests.
//!
//! - [`netns`]: network namespaces, veth links and bridges made by the test itself, with
//!   unique names and cleanup on drop (the "nodes" and the "internet" of ARCHITECTURE.md).
//! - [`process`]: child processes that are killed when the test ends, and polling helpers.
//! - [`charts`]: the Helm charts of the checkout and the values files of the chart tests.
//! - [`binaries`]: where the workspace's built binaries are.
//! - [`kube`]: real Kubernetes control planes (etcd + kube-apiserver) started per test.
//! - [`chart_repo`], [`user_shell`]: the charts as a user installs them: a chart repository
//!   served on loopback, `helm repo add`, the NOTES' commands run as printed.
//! - [`node`]: real Kubernetes nodes (containerd, kubelet, kube-proxy) for test clusters.
//! - [`internet`], [`load_balancer`]: what a cloud gives clusters on real nodes: a shared
//!   network with public API servers, NAT for everything leaving a cluster, and addresses for
//!   `type: LoadBalancer` Services.
//! - [`impaired_link`], [`link_impairment`]: a link with loss, delay, jitter, reordering,
//!   duplication and a rate limit, in userspace (this kernel has no `tc netem`).
//! - [`timed_transfer`]: one TCP transfer between namespaces with its goodput and longest
//!   stall; [`net_counters`]: a namespace's kernel network counters (why it was slow).
//! - [`real_fleet`]: a hub and two member clusters on real nodes with both charts installed
//!   from a chart repository, as a user does (the fleet test and the demo).

pub mod binaries;
pub mod chart_repo;
pub mod charts;
pub mod fleet;
pub mod helm_install;
pub mod impaired_link;
pub mod internet;
pub mod kube;
pub mod link_impairment;
pub mod load_balancer;
pub mod net_counters;
pub mod netns;
pub mod node;
pub mod process;
pub mod real_fleet;
pub mod steady_stream;
pub mod timed_transfer;
pub mod user_shell;
