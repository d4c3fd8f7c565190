//! A cluster set on real nodes, installed as a user installs it: what the end-to-end fleet
//! test (`tests/tests/e2e/kube_fleet/`) and the demo (`scripts/demo.sh`) both run.
//!
//! A hub cluster with one node and two member clusters with two nodes each (a kubelet +
//! containerd with NRI + runc + CNI + kube-proxy per node, [`crate::node`]), on a test
//! internet where API servers and load-balancer addresses are public and everything else is
//! behind each cluster's NAT ([`crate::internet`]); a stand-in cloud load balancer gives the
//! hub Service its address. The user's laptop (a namespace on that internet) serves the chart
//! repository packaged from this checkout, runs `helm repo add fleetboard`, the hub install
//! (`--set tunnel.endpoint=<load balancer address> --set tunnel.cidr=…`) and, for each
//! member, the member install the hub's NOTES print, as printed. Every node runs the image
//! built from the Dockerfile (`tests/k8s/images`).
//!
//! The steps are separate ([`RealFleet::start`], [`RealFleet::install_hub`],
//! [`RealFleet::install_members`], [`RealFleet::wait_connected`]) so that a caller can place
//! workload pods before the charts (NRI Synchronize) or look at each step.

pub mod pods;
pub mod probe;
pub mod services;
pub mod traffic;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::chart_repo::ChartRepo;
use crate::internet::Internet;
use crate::kube::{Cluster, ClusterOptions, NodeSupport, eventually};
use crate::load_balancer::LoadBalancer;
use crate::netns::{Netns, unique_token};
use crate::node::{ImageSet, Node, NodeOptions, NodeTraces, install_cluster_dns};
use crate::user_shell::UserShell;

/// The hub's load balancer address (published on the test internet, served by kube-proxy on
/// the hub's node).
pub const HUB_LB: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 1);
/// The hub's tunnel CIDR. Not the original docs' 20.112.0.0/12: the tests keep overlay
/// addresses in 100.64.0.0/10 (never public ones); any value works alike.
pub const TUNNEL_CIDR: &str = "100.96.0.0/12";
/// The charts' namespace in every cluster.
pub const NS: &str = "fleetboard-system";
/// The images the nodes import.
pub const IMAGES: [&str; 4] = ["pause", "busybox", "coredns", "fleetboard"];

/// What to build.
#[derive(Debug, Clone)]
pub struct RealFleetOptions {
    /// `wg` or `quic` (`tunnel.transport` of the hub chart).
    pub transport: &'static str,
    /// The pod CIDR of both members (kube-controller-manager's `--cluster-cidr`); `None`: a
    /// range of its own for each.
    pub member_pod_cidr: Option<String>,
    /// Install CoreDNS in member A (its pods then resolve `clusterset.local` names once the
    /// member NOTES' server block is added).
    pub member_a_dns: bool,
    /// Images the nodes import besides [`IMAGES`] (e.g. the demo's `iperf3`); default none.
    pub extra_images: Vec<&'static str>,
}

impl RealFleetOptions {
    /// `transport`, both members on one pod CIDR (100.80.0.0/16: overlapping ranges must
    /// work), CoreDNS in member A.
    pub fn new(transport: &'static str) -> Self {
        Self {
            transport,
            member_pod_cidr: Some("100.80.0.0/16".into()),
            member_a_dns: true,
            extra_images: Vec::new(),
        }
    }
}

/// A member cluster: its id, nodes, the user's kubeconfig for it and the NOTES of its
/// install.
pub struct Member {
    pub id: &'static str,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    pub kubeconfig: PathBuf,
    pub notes: String,
}

/// The running cluster set. Dropping it tears everything down (fields drop in order).
pub struct RealFleet {
    pub transport: &'static str,
    /// The user's shell on the laptop (`kubectl`, `helm`, `kubectl peers` on `PATH`).
    pub user: UserShell,
    repo: ChartRepo,
    laptop: Netns,
    _lb: LoadBalancer,
    pub members: Vec<Member>,
    pub hub_node: Node,
    pub hub: Cluster,
    _internet: Internet,
    /// The hub kubeconfig the user holds.
    pub hub_kubeconfig: PathBuf,
    /// The hub install's NOTES (empty before [`RealFleet::install_hub`]).
    pub hub_notes: String,
    pub images: ImageSet,
    traces: Vec<NodeTraces>,
    dir: Scratch,
}

/// A directory removed when dropped (last of the fleet).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RealFleet {
    /// Starts the three clusters and their nodes, the internet, the load balancer, the
    /// laptop with the chart repository (`helm repo add` done). `say` hears about each step.
    pub async fn start(opts: RealFleetOptions, say: &dyn Fn(&str)) -> anyhow::Result<Self> {
        let began = Instant::now();
        let names: Vec<&str> = IMAGES.iter().chain(&opts.extra_images).copied().collect();
        let images = ImageSet::from_env().and_then(|s| s.only(&names))?;
        let member_opts = ClusterOptions {
            nodes: Some(NodeSupport {
                cluster_cidr: opts.member_pod_cidr.clone(),
            }),
            ..ClusterOptions::with_nodes()
        };
        let mut clusters = Cluster::start_all(vec![
            ClusterOptions::with_nodes(),
            member_opts.clone(),
            member_opts,
        ])
        .await?;
        let internet = Internet::new()?;
        for c in &clusters {
            internet.connect(c)?;
        }
        let (b, a, hub) = (
            clusters.pop().expect("3 clusters"),
            clusters.pop().expect("3 clusters"),
            clusters.pop().expect("3 clusters"),
        );
        say(&format!(
            "3 clusters (hub, member-a, member-b) up in {:.1?}; starting 5 nodes",
            began.elapsed()
        ));
        let start = |c, name: &str| {
            let opts = NodeOptions::new(name, &images);
            async move { Node::start(c, opts?).await }
        };
        let (hub_node, a1, a2, b1, b2) = tokio::try_join!(
            start(&hub, "hub-1"),
            start(&a, "a-1"),
            start(&a, "a-2"),
            start(&b, "b-1"),
            start(&b, "b-2"),
        )?;
        let mut traces = vec![hub_node.traces()];
        for n in [&a1, &a2, &b1, &b2] {
            traces.push(n.traces());
        }
        say(&format!(
            "5 nodes Ready (kubelet, containerd with NRI, kube-proxy) {:.1?} after the start",
            began.elapsed()
        ));
        if opts.member_a_dns {
            let coredns = images.get("coredns")?.reference.clone();
            install_cluster_dns(&a, &coredns).await?;
        }

        // The cloud: a load balancer address for the hub's Service, routed to the hub's node.
        let lb = LoadBalancer::start(hub.client(), vec![HUB_LB]);
        internet.publish(&hub, &format!("{HUB_LB}/32"), hub_node.address())?;

        // The user's laptop on the internet: chart repository, helm, kubectl.
        let dir = Scratch(std::env::temp_dir().join(format!("fb-real-fleet-{}", unique_token())));
        std::fs::create_dir_all(&dir.0)?;
        let laptop = Netns::new("user")?;
        internet.attach_host(&laptop)?;
        let repo = ChartRepo::start_in(&dir.0.join("repo"), laptop.name())?;
        let user = UserShell::new(&dir.0.join("home"))?.in_netns(laptop.name());
        let hub_kubeconfig = dir.0.join("hub.kubeconfig");
        hub.user_kubeconfig(&hub_kubeconfig)?;
        user.run(
            &hub_kubeconfig,
            &format!("helm repo add fleetboard {}", repo.url()),
        )?;
        let mut members = Vec::new();
        for (id, cluster, nodes) in [("member-a", a, vec![a1, a2]), ("member-b", b, vec![b1, b2])] {
            let kubeconfig = dir.0.join(format!("{id}.kubeconfig"));
            cluster.user_kubeconfig(&kubeconfig)?;
            members.push(Member {
                id,
                cluster,
                nodes,
                kubeconfig,
                notes: String::new(),
            });
        }
        Ok(Self {
            transport: opts.transport,
            user,
            repo,
            laptop,
            _lb: lb,
            members,
            hub_node,
            hub,
            _internet: internet,
            hub_kubeconfig,
            hub_notes: String::new(),
            images,
            traces,
            dir,
        })
    }

    /// The reference of image `name` ([`IMAGES`] and the extra ones) as the nodes know it.
    pub fn image(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.images.get(name)?.reference.clone())
    }

    /// A scratch directory of the fleet's (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The laptop's network namespace.
    pub fn laptop(&self) -> &Netns {
        &self.laptop
    }

    /// The hub install as the original docs give it; returns the command and keeps its NOTES.
    pub fn install_hub(&mut self) -> anyhow::Result<String> {
        let mut install = format!(
            "helm install fleetboard fleetboard/fleetboard --namespace {NS} --create-namespace \
             --set tunnel.endpoint={HUB_LB} --set tunnel.cidr={TUNNEL_CIDR}"
        );
        if self.transport != "wg" {
            install.push_str(&format!(" --set tunnel.transport={}", self.transport));
        }
        let notes = self.user.run(&self.hub_kubeconfig, &install)?;
        anyhow::ensure!(
            notes.contains(&format!("tunnel CIDR {TUNNEL_CIDR}")),
            "the hub NOTES do not name the tunnel CIDR:\n{notes}"
        );
        self.hub_notes = notes;
        Ok(install)
    }

    /// Each member's install, as the hub NOTES print it; keeps each member's NOTES.
    pub fn install_members(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            m.notes = self.user.install_member_from_notes(
                &self.hub_notes,
                &self.hub_kubeconfig,
                &m.kubeconfig,
                m.id,
            )?;
        }
        anyhow::ensure!(
            self.repo.served() >= 3,
            "helm fetched the charts from the repository"
        );
        Ok(())
    }

    /// Waits until every chart pod is Ready: two hub replicas, an agent on every member node,
    /// each member's DNS server. Returns the hub's pods.
    pub async fn wait_chart_pods_ready(&self) -> anyhow::Result<Vec<pods::PodState>> {
        let hub_pods = pods::wait_all_ready(&self.hub, "hub", NS, 2).await?;
        for m in &self.members {
            let got = pods::wait_all_ready(&m.cluster, m.id, NS, m.nodes.len() + 1).await?;
            for n in &m.nodes {
                anyhow::ensure!(
                    got.iter()
                        .any(|p| p.node == n.name() && p.name.starts_with("fleetboard-agent-")),
                    "{}: no agent pod on {}: {got:#?}",
                    m.id,
                    n.name()
                );
            }
        }
        Ok(hub_pods)
    }

    /// Waits until both members' Peers in the hub say Connected (`kubectl get peers`).
    pub async fn wait_connected(&self) -> anyhow::Result<()> {
        for m in &self.members {
            let get = format!(
                "kubectl get peers.fleetboard.io {} -n {NS} \
                 -o jsonpath='{{.status.conditions[?(@.type==\"Connected\")].status}}'",
                m.id
            );
            eventually(
                &format!("{} Connected to the hub over {}", m.id, self.transport),
                pods::DEADLINE,
                pods::POLL,
                || {
                    let out = self.user.run(&self.hub_kubeconfig, &get);
                    async move { Ok((out?.trim() == "True").then_some(())) }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The agent pod on node `node` of `member`.
    pub async fn agent_on(&self, member: usize, node: &str) -> anyhow::Result<String> {
        let m = &self.members[member];
        pods::pods(&m.cluster, NS)
            .await?
            .into_iter()
            .find(|p| p.node == node && p.name.starts_with("fleetboard-agent-"))
            .map(|p| p.name)
            .ok_or_else(|| anyhow::anyhow!("{}: no agent pod on {node}", m.id))
    }

    /// Tears everything down and returns what any node left behind (empty: nothing).
    pub fn shutdown(self) -> Vec<String> {
        let traces = self.traces.clone();
        drop(self);
        traces.iter().flat_map(NodeTraces::leftovers).collect()
    }
}
