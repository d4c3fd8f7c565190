//! The "internet" between test clusters on real nodes: a shared underlay (198.18.250.0/24)
//! that each cluster's control-plane namespace joins as the cluster's edge router, and on
//! which test "laptops" (a user's shell) sit.
//!
//! What a cloud gives a cluster, reduced to routing:
//! - the cluster's API server is public: every other party routes its address
//!   ([`crate::kube::NodeNetwork::apiserver_ip`]) via the cluster's router;
//! - addresses the cluster publishes ([`Internet::publish`], e.g. a load balancer's) are routed
//!   to the cluster's router, which forwards them to a node (kube-proxy there serves them);
//! - everything leaving the cluster (its nodes' and pods' traffic) is masqueraded to the
//!   router's internet address, as a cloud NAT gateway does: pods of different clusters can
//!   never reach each other directly, only through what a cluster publishes.
//!
//! ```text
//! netns fb-net-<t> (bridge br0, 198.18.250.0/24)
//!   ├─ control-plane netns of cluster 1: wan0 198.18.250.1, ip_forward=1, MASQUERADE on wan0
//!   ├─ control-plane netns of cluster 2: wan0 198.18.250.2, …
//!   └─ a user's netns (laptop):          wan0 198.18.250.3
//! ```

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::kube::Cluster;
use crate::netns::{Netns, Underlay, run};

/// The internet's interface name in every attached namespace.
const WAN_IF: &str = "wan0";
/// The internet's subnet (inside the test-reserved 198.18.0.0/15).
const SUBNET: [u8; 3] = [198, 18, 250];

/// One attached namespace and what it publishes.
#[derive(Debug, Clone)]
struct Site {
    netns: String,
    address: Ipv4Addr,
    /// CIDRs others reach through this site (its API server, its load balancers).
    public: Vec<String>,
}

/// The shared network of a fleet test. Drop it after the clusters and namespaces attached.
#[derive(Debug)]
pub struct Internet {
    underlay: Underlay,
    next_host: AtomicU32,
    sites: Mutex<Vec<Site>>,
}

impl Internet {
    /// Creates the internet's bridge (its own namespace).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            underlay: Underlay::new()?,
            next_host: AtomicU32::new(1),
            sites: Mutex::default(),
        })
    }

    /// Makes `cluster` (started with [`crate::kube::ClusterOptions::with_nodes`]) a site: its
    /// control-plane namespace joins as the cluster's router, its API server becomes public,
    /// and its outgoing traffic is masqueraded. Returns the router's internet address.
    pub fn connect(&self, cluster: &Cluster) -> anyhow::Result<Ipv4Addr> {
        let net = cluster.node_network().context(
            "the cluster has no node network: start it with ClusterOptions::with_nodes()",
        )?;
        let ns = net.control();
        let address = self.attach_ns(ns)?;
        ns.sysctl("net.ipv4.ip_forward=1")?;
        ns.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                WAN_IF,
                "-j",
                "MASQUERADE",
            ],
        )
        .context("masquerading the cluster's outgoing traffic")?;
        self.add_site(Site {
            netns: ns.name().to_string(),
            address,
            public: vec![format!("{}/32", net.apiserver_ip())],
        })?;
        Ok(address)
    }

    /// Attaches `ns` as a host of the internet (e.g. a user's laptop): it reaches every site's
    /// public addresses, and publishes nothing. Returns its address.
    pub fn attach_host(&self, ns: &Netns) -> anyhow::Result<Ipv4Addr> {
        let address = self.attach_ns(ns)?;
        self.add_site(Site {
            netns: ns.name().to_string(),
            address,
            public: Vec::new(),
        })?;
        Ok(address)
    }

    /// Publishes `cidr` (e.g. a load balancer's address) at `cluster`: every other site routes
    /// it to the cluster's router, which forwards it to `via` (one of its nodes).
    pub fn publish(&self, cluster: &Cluster, cidr: &str, via: Ipv4Addr) -> anyhow::Result<()> {
        let net = cluster
            .node_network()
            .context("the cluster has no node network")?;
        let router = net.control().name().to_string();
        replace_route(&router, cidr, via)?;
        let mut sites = self.sites.lock().expect("sites lock");
        let at = sites
            .iter()
            .position(|s| s.netns == router)
            .context("the cluster is not connected to this internet")?;
        let address = sites[at].address;
        for other in sites.iter().filter(|s| s.netns != router) {
            replace_route(&other.netns, cidr, address)?;
        }
        sites[at].public.push(cidr.to_string());
        Ok(())
    }

    fn attach_ns(&self, ns: &Netns) -> anyhow::Result<Ipv4Addr> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(host < 255, "no internet addresses left");
        let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host as u8);
        self.underlay
            .attach(ns, WAN_IF, &[&format!("{address}/24")])?;
        Ok(address)
    }

    /// Routes the new site's public CIDRs from every other site, and theirs from it.
    fn add_site(&self, site: Site) -> anyhow::Result<()> {
        let mut sites = self.sites.lock().expect("sites lock");
        for other in sites.iter() {
            for cidr in &site.public {
                replace_route(&other.netns, cidr, site.address)?;
            }
            for cidr in &other.public {
                replace_route(&site.netns, cidr, other.address)?;
            }
        }
        sites.push(site);
        Ok(())
    }
}

fn replace_route(netns: &str, cidr: &str, via: Ipv4Addr) -> anyhow::Result<()> {
    run(std::process::Command::new("ip").args([
        "-n",
        netns,
        "route",
        "replace",
        cidr,
        "via",
        &via.to_string(),
    ]))
    .map(|_| ())
    .with_context(|| format!("route {cidr} via {via} in {netns}"))
}
