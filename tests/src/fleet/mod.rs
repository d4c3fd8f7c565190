//! A whole FleetBoard cluster set on one machine: a hub cluster and member clusters (real
//! apiservers), nodes as network namespaces on one underlay, `fleetboard hub` and one
//! `fleetboard agent` per node as processes inside them.
//!
//! Underlay (198.18.0.0/24 on the test's own bridge): the hub's apiserver host `.1`, the hub
//! process `.2` (a second replica `.3`), member `i`'s apiserver host `.10*(i+1)` and its nodes
//! `.10*(i+1)+1..`. Everything is killed and deleted on drop.
//!
//! What the clusters need before FleetBoard runs (namespaces, CRDs, RBAC, tokens, Node
//! objects) is in `setup`; the fleet's processes and what tests ask of them here.

mod setup;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::json;

use crate::binaries::bin;
use crate::kube::{Cluster, ClusterOptions};
use crate::netns::{Netns, Underlay, require_net_admin, unique_token};
use crate::process::ChildGuard;
pub use setup::{
    HUB_TOKEN_SECRET, create_member_roles, install_crds, join_member, prepare_hub, prepare_member,
};
use setup::{create, create_nodes};

/// Port of each agent's `/live`, `/ready`, `/metrics` (in its node's namespace).
pub const AGENT_METRICS_PORT: u16 = 9465;
/// The shared namespace in the hub and the agents' namespace in members.
pub const NAMESPACE: &str = "fleetboard-system";
/// The tunnel CIDR the hub hands blocks out of.
pub const TUNNEL_CIDR: &str = "100.64.0.0/10";
/// Gateway/hub lease timings for tests (seconds): a dead leader is replaced quickly.
pub const LEASE_SECS: u64 = 6;
/// Renew interval for tests (seconds).
pub const RENEW_SECS: u64 = 2;
/// Generous deadline for convergence on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// Poll interval.
pub const POLL: Duration = Duration::from_millis(300);

/// Transport of a test fleet (`wg` or `quic`).
pub type TransportName = &'static str;

/// One simulated node: a namespace on the underlay, running `fleetboard agent`.
pub struct FleetNode {
    /// Node name (also the Node object's name).
    pub name: String,
    /// Index of its member cluster.
    pub member: usize,
    /// Its namespace.
    pub ns: Netns,
    /// Underlay address.
    pub ip: String,
    /// State dir of its agent (admin socket `dataplane.sock`).
    pub state_dir: PathBuf,
    /// The running agent.
    pub agent: Option<ChildGuard>,
    log: PathBuf,
}

impl FleetNode {
    /// The agent's dataplane admin socket.
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("dataplane.sock")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One ping to `dst` from this node; true when answered.
    pub fn ping_once(&self, dst: &str) -> bool {
        self.ns.ping_once(dst)
    }
}

/// One member cluster: its apiserver host and the agent's credentials.
pub struct Member {
    /// Cluster id.
    pub id: String,
    /// The apiserver.
    pub cluster: Cluster,
    /// The namespace hosting its apiserver.
    pub cp: Netns,
    /// Agent kubeconfig (service account `fleetboard-agent`).
    pub kubeconfig: PathBuf,
}

/// The hub cluster and its `fleetboard hub` process(es).
pub struct Hub {
    /// The hub apiserver.
    pub cluster: Cluster,
    /// The namespace hosting its apiserver.
    pub cp: Netns,
    /// The hub replicas' namespaces, processes, state dirs.
    pub replicas: Vec<HubReplica>,
    /// Hub service-account kubeconfig.
    pub kubeconfig: PathBuf,
}

/// One `fleetboard hub` replica.
pub struct HubReplica {
    /// Identity (Lease holder name).
    pub identity: String,
    /// Its namespace.
    pub ns: Netns,
    /// Underlay address.
    pub ip: String,
    /// State dir.
    pub state_dir: PathBuf,
    /// The process.
    pub process: Option<ChildGuard>,
    log: PathBuf,
}

impl HubReplica {
    /// The dataplane admin socket.
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("dataplane.sock")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The whole cluster set.
pub struct Fleet {
    /// Work folder (logs, state dirs, kubeconfigs).
    pub dir: PathBuf,
    /// Transport in use.
    pub transport: TransportName,
    /// The hub.
    pub hub: Hub,
    /// Member clusters.
    pub members: Vec<Member>,
    /// Nodes of every member.
    pub nodes: Vec<FleetNode>,
    /// The hub's tunnel CIDR.
    pub tunnel_cidr: &'static str,
    /// Extra agent flags (e.g. `--public`).
    pub agent_flags: Vec<String>,
    /// The bridge (dropped last).
    pub underlay: Underlay,
}
/// How to build a [`Fleet`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `wg` or `quic`.
    pub transport: TransportName,
    /// Member cluster ids.
    pub members: Vec<&'static str>,
    /// Nodes per member.
    pub nodes_per_member: usize,
    /// Hub replicas.
    pub hub_replicas: usize,
    /// Extra agent flags.
    pub agent_flags: Vec<String>,
    /// The hub's `--tunnel-cidr` (members learn it from the hub).
    pub tunnel_cidr: &'static str,
    /// Install with the charts of this checkout (`helm install`, the token the hub chart
    /// generates) instead of creating the install-time objects directly.
    pub helm: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            transport: "wg",
            members: vec!["a", "b"],
            nodes_per_member: 2,
            hub_replicas: 1,
            agent_flags: Vec::new(),
            tunnel_cidr: TUNNEL_CIDR,
            helm: false,
        }
    }
}

impl Fleet {
    /// Creates the underlay, the apiservers (concurrently), the install-time objects and the
    /// CRDs (`crds`, e.g. `fleetboard_control::crd::all_crds()`), then starts the hub and
    /// every agent. Returns without waiting for convergence.
    pub async fn start(
        opts: FleetOptions,
        crds: Vec<CustomResourceDefinition>,
    ) -> anyhow::Result<Self> {
        require_net_admin();
        let dir = std::env::temp_dir().join(format!("fb-fleet-{}", unique_token()));
        std::fs::create_dir_all(&dir)?;
        let underlay = Underlay::new()?;
        let hub_cp = Netns::new("hubcp")?;
        underlay.attach(&hub_cp, "eth0", &["198.18.0.1/24"])?;
        let mut cps = Vec::new();
        for i in 0..opts.members.len() {
            let ns = Netns::new(&format!("cp{i}"))?;
            underlay.attach(&ns, "eth0", &[&format!("198.18.0.{}/24", 10 * (i + 1))])?;
            cps.push(ns);
        }
        let mut all_opts = vec![ClusterOptions::in_netns(&hub_cp, "198.18.0.1".parse()?)];
        for (i, ns) in cps.iter().enumerate() {
            let ip: IpAddr = format!("198.18.0.{}", 10 * (i + 1)).parse()?;
            all_opts.push(ClusterOptions::in_netns(ns, ip));
        }
        let mut clusters = Cluster::start_all(all_opts).await?;
        let hub_cluster = clusters.remove(0);
        let hub_kubeconfig = if opts.helm {
            let endpoint = "198.18.0.2";
            crate::helm_install::install_hub_chart(
                &hub_cluster,
                NAMESPACE,
                endpoint,
                opts.transport,
            )
            .await?;
            install_crds(&hub_cluster.client(), crds).await?;
            let sa = hub_cluster
                .service_account_token(NAMESPACE, "fleetboard-hub")
                .await?;
            hub_cluster.token_kubeconfig("fleetboard-hub", &sa)?
        } else {
            install_crds(&hub_cluster.client(), crds).await?;
            prepare_hub(&hub_cluster).await?
        };

        let mut members = Vec::new();
        let mut nodes = Vec::new();
        for (i, (cluster, cp)) in clusters.into_iter().zip(cps).enumerate() {
            let id = opts.members[i].to_string();
            let names: Vec<String> = (1..=opts.nodes_per_member)
                .map(|n| format!("{id}{n}"))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            // The member's own identity on the hub, as `kubectl peers join` makes it.
            let token = join_member(&hub_cluster, &id).await?;
            let kubeconfig = if opts.helm {
                crate::helm_install::install_agent_chart(
                    &cluster,
                    NAMESPACE,
                    &id,
                    &hub_cluster,
                    &token,
                    opts.transport,
                )
                .await?;
                create_nodes(&cluster.client(), &refs).await?;
                let sa = cluster
                    .service_account_token(NAMESPACE, "fleetboard-agent")
                    .await?;
                cluster.token_kubeconfig("fleetboard-agent", &sa)?
            } else {
                let kubeconfig = prepare_member(&cluster, &refs).await?;
                create(
                    &Api::<Secret>::namespaced(cluster.client(), NAMESPACE),
                    json!({
                        "metadata": { "name": HUB_TOKEN_SECRET, "namespace": NAMESPACE },
                        "stringData": { "token": token },
                    }),
                )
                .await?;
                kubeconfig
            };
            for (n, name) in names.iter().enumerate() {
                let ns = Netns::new(&format!("n{name}"))?;
                let ip = format!("198.18.0.{}", 10 * (i + 1) + n + 1);
                underlay.attach(&ns, "eth0", &[&format!("{ip}/24")])?;
                nodes.push(FleetNode {
                    name: name.clone(),
                    member: i,
                    ns,
                    ip,
                    state_dir: dir.join(name),
                    agent: None,
                    log: dir.join(format!("agent-{name}.log")),
                });
            }
            members.push(Member {
                id,
                cluster,
                cp,
                kubeconfig,
            });
        }
        let mut replicas = Vec::new();
        for r in 0..opts.hub_replicas {
            let ns = Netns::new(&format!("hub{r}"))?;
            let ip = format!("198.18.0.{}", 2 + r);
            underlay.attach(&ns, "eth0", &[&format!("{ip}/24")])?;
            replicas.push(HubReplica {
                identity: format!("hub-{r}"),
                ns,
                ip,
                state_dir: dir.join(format!("hub-{r}")),
                process: None,
                log: dir.join(format!("hub-{r}.log")),
            });
        }
        let mut fleet = Fleet {
            dir,
            transport: opts.transport,
            hub: Hub {
                cluster: hub_cluster,
                cp: hub_cp,
                replicas,
                kubeconfig: hub_kubeconfig,
            },
            members,
            nodes,
            agent_flags: opts.agent_flags,
            tunnel_cidr: opts.tunnel_cidr,
            underlay,
        };
        for r in 0..fleet.hub.replicas.len() {
            fleet.start_hub(r)?;
        }
        for n in 0..fleet.nodes.len() {
            fleet.start_agent(n)?;
        }
        Ok(fleet)
    }

    /// Starts (or restarts) hub replica `r`.
    pub fn start_hub(&mut self, r: usize) -> anyhow::Result<()> {
        let rep = &mut self.hub.replicas[r];
        if let Some(mut p) = rep.process.take() {
            p.kill();
        }
        let mut cmd = rep.ns.command(bin("fleetboard").to_str().context("path")?);
        cmd.arg("hub")
            .args(["--namespace", NAMESPACE, "--cluster-id", "hub"])
            .args(["--identity", &rep.identity])
            .args(["--tunnel-cidr", self.tunnel_cidr, "--block-prefix", "16"])
            .args(["--endpoint", &rep.ip, "--transport", self.transport])
            .arg("--state-dir")
            .arg(&rep.state_dir)
            .arg("--kubeconfig")
            .arg(&self.hub.kubeconfig)
            .env("FLEETBOARD_LEASE_DURATION", LEASE_SECS.to_string())
            .env("FLEETBOARD_RENEW_INTERVAL", RENEW_SECS.to_string())
            .env("RUST_LOG", "info");
        rep.process = Some(ChildGuard::spawn(&rep.identity, cmd, &rep.log)?);
        Ok(())
    }

    /// Starts (or restarts) the agent of node `n`.
    pub fn start_agent(&mut self, n: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[n];
        if let Some(mut p) = node.agent.take() {
            p.kill();
        }
        let member = &self.members[node.member];
        let mut cmd = node.ns.command(bin("fleetboard").to_str().context("path")?);
        cmd.arg("agent")
            .args(["--namespace", NAMESPACE, "--cluster-id", &member.id])
            .args(["--node-name", &node.name, "--node-ip", &node.ip])
            .args(["--transport", self.transport])
            .args(["--hub-url", self.hub.cluster.internal_url()])
            .arg("--hub-ca-file")
            .arg(self.hub.cluster.ca_cert())
            .args(["--hub-namespace", NAMESPACE])
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--kubeconfig")
            .arg(&member.kubeconfig)
            .args(["--lease-duration", &LEASE_SECS.to_string()])
            .args(["--renew-interval", &RENEW_SECS.to_string()])
            .args([
                "--metrics-address",
                &format!("127.0.0.1:{AGENT_METRICS_PORT}"),
            ])
            .args(&self.agent_flags)
            .env("FLEETBOARD_HUB_TOKEN_SECRET", HUB_TOKEN_SECRET)
            .env("RUST_LOG", "info");
        node.agent = Some(ChildGuard::spawn(&node.name, cmd, &node.log)?);
        Ok(())
    }

    /// What a kubelet probe of node `n`'s agent gets: the HTTP status of `path`.
    pub fn agent_probe(&self, n: usize, path: &str) -> Option<u16> {
        self.nodes[n].ns.http_status(AGENT_METRICS_PORT, path)
    }

    /// Kills the agent of node `n` (SIGKILL: no Lease release, like a crashed node).
    pub fn kill_agent(&mut self, n: usize) {
        if let Some(mut p) = self.nodes[n].agent.take() {
            p.kill();
        }
    }

    /// Kills hub replica `r` (SIGKILL: no Lease release, like a crashed hub pod).
    pub fn kill_hub(&mut self, r: usize) {
        if let Some(mut p) = self.hub.replicas[r].process.take() {
            p.kill();
        }
    }

    /// The hub replica holding the hub Lease, by identity.
    pub async fn hub_leader(&self) -> anyhow::Result<Option<String>> {
        lease_holder(&self.hub.cluster, "fleetboard-hub").await
    }

    /// Returns right after the hub leader renews the hub Lease (its `renewTime` changes), so
    /// that a kill that follows leaves the Lease a whole [`LEASE_SECS`] to run.
    pub async fn hub_lease_renewed(&self) -> anyhow::Result<()> {
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.hub.cluster.client(), NAMESPACE);
        let renewed = || async {
            anyhow::Ok(
                api.get("fleetboard-hub")
                    .await?
                    .spec
                    .and_then(|s| s.renew_time)
                    .map(|t| t.0),
            )
        };
        let before = renewed().await?;
        let deadline = Instant::now() + Duration::from_secs(4 * RENEW_SECS);
        while Instant::now() < deadline {
            if renewed().await? != before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("the hub Lease was not renewed within {} s", 4 * RENEW_SECS)
    }

    /// Index of node `name`.
    pub fn node(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Every log (hub replicas and agents), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for r in &self.hub.replicas {
            out.push_str(&format!(
                "---- {} ----\n{}\n",
                r.identity,
                tail(&r.log(), 40)
            ));
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "---- agent {} ----\n{}\n",
                n.name,
                tail(&n.log(), 40)
            ));
        }
        out
    }

    /// The `fleetboard.io/node-cidr` annotation of every node of member `m`.
    pub async fn node_cidrs(&self, m: usize) -> anyhow::Result<BTreeMap<String, String>> {
        self.node_annotations(m, "fleetboard.io/node-cidr").await
    }

    /// Annotation `key` of every node of member `m` that has it.
    pub async fn node_annotations(
        &self,
        m: usize,
        key: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let nodes = Api::<Node>::all(self.members[m].cluster.client())
            .list(&Default::default())
            .await?;
        Ok(nodes
            .items
            .into_iter()
            .filter_map(|n| {
                let cidr = n.metadata.annotations.as_ref()?.get(key)?.clone();
                Some((n.metadata.name?, cidr))
            })
            .collect())
    }

    /// The TUN address of node `name` (first host of its sub-block), once allocated.
    pub async fn tun_ip(&self, name: &str) -> anyhow::Result<Option<String>> {
        let m = self.nodes[self.node(name)].member;
        let cidrs = self.node_cidrs(m).await?;
        Ok(cidrs.get(name).and_then(|c| first_host(c)))
    }

    /// The gateway Lease holder of member `m`.
    pub async fn gateway(&self, m: usize) -> anyhow::Result<Option<String>> {
        lease_holder(&self.members[m].cluster, "fleetboard-gateway").await
    }

    /// `fleetboard dataplane show --json --socket <socket>` (run inside `ns`, parsed).
    pub fn dataplane_show(&self, socket: &Path) -> anyhow::Result<serde_json::Value> {
        let out = crate::netns::run(
            Command::new(bin("fleetboard"))
                .args(["dataplane", "show", "--json", "--socket"])
                .arg(socket),
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

/// The holder of Lease `name` in the shared namespace of `cluster` (none when free).
async fn lease_holder(cluster: &Cluster, name: &str) -> anyhow::Result<Option<String>> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client(), NAMESPACE);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fleet logs (dir {}):\n{}", self.dir.display(), self.logs());
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.agent.take() {
                p.kill();
            }
        }
        for r in &mut self.hub.replicas {
            if let Some(mut p) = r.process.take() {
                p.kill();
            }
        }
        if std::env::var_os("FLEETBOARD_KEEP_KUBE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The first host address of a CIDR (`100.64.1.0/24` -> `100.64.1.1`).
pub fn first_host(cidr: &str) -> Option<String> {
    let (addr, _) = cidr.split_once('/')?;
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
