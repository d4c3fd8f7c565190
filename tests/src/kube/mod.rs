//! Real Kubernetes API servers for tests: each [`Cluster`] is its own etcd and kube-apiserver
//! (the binaries `tests/k8s/tools ensure` builds from their Go modules), with RBAC on, fresh
//! certificates, service-account token signing, an admin kubeconfig and a kube-rs client.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fleetboard_tests::kube::Cluster;
//! let cluster = Cluster::start().await?;           // etcd + apiserver on 127.0.0.1
//! let client = cluster.client();                    // admin (system:masters)
//! let token = cluster.service_account_token("fleetboard", "agent").await?;
//! let kubeconfig = cluster.token_kubeconfig("agent", &token)?; // for a component under test
//! # Ok(()) }
//! ```
//!
//! Clusters can listen on any address the test controls: [`ClusterOptions::on`] binds an
//! address of the host namespace (e.g. the host end of a veth), [`ClusterOptions::in_netns`]
//! runs etcd and the apiserver inside a namespace the test made (e.g. a "control-plane" host
//! on the underlay), reachable by agents in other namespaces at that address and by the test
//! itself through a loopback forwarder. Ports come from the kernel and a start that loses a
//! port race is retried with new ones; each cluster also has its own etcd key prefix, so
//! parallel tests never share state. Everything is killed and deleted on drop.

mod accounts;
mod controllers;
mod forward;
mod outage;
pub mod pki;
pub mod tools;
mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

pub use controllers::{
    CLUSTER_DNS_IP, KUBERNETES_SERVICE_IP, NodeNetwork, NodeRoute, NodeSupport, remove_node_route,
};
pub use forward::{Forwarder, NetnsDialer};
pub use tools::Tool;
pub use util::{api_requests, client_from_kubeconfig, eventually};
use util::{create_if_missing, tail, write_kubeconfig};

use crate::netns::{Netns, unique_token};
use crate::process::ChildGuard;

/// How long a cluster may take to answer `/readyz` (typically a few seconds; generous for a
/// busy 2-core machine starting several clusters at once).
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// Poll interval for `/readyz`.
const READY_POLL: Duration = Duration::from_millis(250);
/// Starts that lose a port race (another process took a port between our probe and the bind)
/// are retried with fresh ports this many times.
const START_ATTEMPTS: usize = 4;
/// Lifetime asked for minted service-account tokens (the apiserver's minimum is 10 minutes).
const TOKEN_SECONDS: i64 = 3600;
/// The service range the apiserver allocates ClusterIPs from, inside the test-reserved
/// 198.18.0.0/15 (only clusters with nodes run kube-proxy; elsewhere no traffic goes there).
pub const SERVICE_CIDR: &str = "198.19.255.0/24";

/// The audit policy of every test API server: writes of FleetBoard's objects at the Metadata
/// level, nothing else.
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
    resources:
      - group: fleetboard.io
  - level: None
";
const AUDIT_LOG: &str = "audit.log";

/// Where and how a [`Cluster`] runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The address kube-apiserver listens and advertises on.
    pub bind: IpAddr,
    /// Run etcd and kube-apiserver inside this network namespace (`ip netns` name).
    pub netns: Option<String>,
    /// Host real nodes ([`crate::node::Node`]): the cluster makes its own underlay and
    /// control-plane namespace (`bind` and `netns` are then ignored), and runs
    /// kube-controller-manager and kube-scheduler too. See [`ClusterOptions::with_nodes`].
    pub nodes: Option<NodeSupport>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self::loopback()
    }
}

impl ClusterOptions {
    /// On 127.0.0.1 of the host namespace.
    pub fn loopback() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            nodes: None,
        }
    }

    /// On `addr` of the host namespace (e.g. the host end of a veth the test made).
    pub fn on(addr: IpAddr) -> Self {
        Self {
            bind: addr,
            netns: None,
            nodes: None,
        }
    }

    /// Inside `ns`, listening on `addr` (an address of that namespace, e.g. its underlay
    /// address, so agents in other namespaces reach the API there).
    pub fn in_netns(ns: &Netns, addr: IpAddr) -> Self {
        Self {
            bind: addr,
            netns: Some(ns.name().to_string()),
            nodes: None,
        }
    }

    /// A cluster for real nodes: etcd, kube-apiserver (NodeRestriction, kubelet client
    /// certificate, InternalIP preference, privileged pods allowed), kube-controller-manager
    /// (podCIDRs from a cluster CIDR of its own) and kube-scheduler in a control-plane
    /// namespace on an underlay of the cluster's own, which [`crate::node::Node`]s join.
    pub fn with_nodes() -> Self {
        Self {
            nodes: Some(NodeSupport::default()),
            ..Self::loopback()
        }
    }
}

/// One running Kubernetes control plane (etcd + kube-apiserver). Dropping it kills both and
/// deletes its directory (set `FLEETBOARD_KEEP_KUBE=1` to keep the directory and logs).
pub struct Cluster {
    client: kube::Client,
    forwarder: Option<Forwarder>,
    apiserver: ChildGuard,
    /// How the apiserver was started (program, arguments, log): [`Cluster::start_apiserver`]
    /// starts it again the same way.
    apiserver_cmd: outage::ApiserverCommand,
    etcd: ChildGuard,
    dir: PathBuf,
    pki: pki::PkiFiles,
    url: String,
    internal_url: String,
    kubeconfig: PathBuf,
    started_in: Duration,
    control_plane: Option<controllers::ControlPlane>,
    // After the processes: deleting its namespaces kills whatever is left in them.
    node_network: Option<NodeNetwork>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("internal_url", &self.internal_url)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Why one start attempt failed.
enum StartError {
    /// A port was taken by someone else: retry with fresh ports.
    PortInUse,
    /// Anything else: give up.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError::Failed(e.into())
    }
}

impl Cluster {
    /// Starts a cluster on 127.0.0.1 and waits until it is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions::loopback()).await
    }

    /// Starts `n` independent clusters on 127.0.0.1, concurrently.
    pub async fn start_many(n: usize) -> anyhow::Result<Vec<Self>> {
        Self::start_all((0..n).map(|_| ClusterOptions::loopback()).collect()).await
    }

    /// Starts one cluster per options entry, concurrently.
    pub async fn start_all(options: Vec<ClusterOptions>) -> anyhow::Result<Vec<Self>> {
        futures::future::try_join_all(options.into_iter().map(Self::start_with)).await
    }

    /// Starts a cluster as `opts` says and waits until `/readyz` answers `ok`.
    pub async fn start_with(opts: ClusterOptions) -> anyhow::Result<Self> {
        let began = Instant::now();
        let (opts, mut node_network) = controllers::prepare(opts)?;
        let apiserver_bin = Tool::KubeApiserver.path()?;
        let etcd_bin = Tool::Etcd.path()?;
        let dir = std::env::temp_dir().join(format!("fb-kube-{}", unique_token()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dialer = opts.netns.as_deref().map(NetnsDialer::new).transpose()?;
        let mut ips = vec![opts.bind, IpAddr::V4(KUBERNETES_SERVICE_IP)];
        if opts.bind != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            // The test process reaches in-namespace clusters through a loopback forwarder.
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let pki = pki::generate(&dir.join("pki"), &ips)?;
        let kubelet_client = match opts.nodes {
            Some(_) => Some(pki::issue_client(
                &pki,
                &dir.join("pki"),
                "apiserver-kubelet-client",
                controllers::KUBELET_CLIENT_CN,
                &[],
            )?),
            None => None,
        };
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let start = Start {
                opts: &opts,
                dir: &dir,
                pki: &pki,
                attempt,
                apiserver_bin: &apiserver_bin,
                etcd_bin: &etcd_bin,
                dialer: dialer.clone(),
                kubelet_client: kubelet_client.as_ref(),
            };
            match start.run().await {
                Ok(mut cluster) => {
                    cluster.node_network = node_network.take();
                    if let Some(net) = &cluster.node_network {
                        cluster.control_plane =
                            Some(controllers::ControlPlane::start(&cluster, net).await?);
                    }
                    cluster.started_in = began.elapsed();
                    eprintln!(
                        "kube: cluster {} ready in {:.1?} (dir {})",
                        cluster.url,
                        cluster.started_in,
                        cluster.dir.display()
                    );
                    return Ok(cluster);
                }
                Err(StartError::PortInUse) => {
                    last_log = format!("attempt {attempt}: a port was in use");
                }
                Err(StartError::Failed(e)) => {
                    if std::env::var_os("FLEETBOARD_KEEP_KUBE").is_none() {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::bail!("could not start a cluster in {START_ATTEMPTS} attempts: {last_log}")
    }

    /// The admin client (certificate in group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The API URL as the test process reaches it (`https://ip:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API URL on the cluster's own address, as components inside the test's network
    /// namespaces reach it (equals [`Cluster::url`] for host-namespace clusters).
    pub fn internal_url(&self) -> &str {
        &self.internal_url
    }

    /// The admin kubeconfig file (for `kubectl`, `helm`, or a component run as admin).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster CA certificate (PEM file).
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The cluster's directory (certificates, kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Cluster::start_with`] took until `/readyz` said ok.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The kube-apiserver log so far (for assertion messages).
    pub fn apiserver_log(&self) -> String {
        self.apiserver.log()
    }

    /// The API server's audit events so far, one JSON object each: every write (create,
    /// update, patch, delete) of a `fleetboard.io` object, at the Metadata level (who, what,
    /// when, the response code; see [`AUDIT_POLICY`]).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(AUDIT_LOG))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `kubectl` (ours, see [`Tool::Kubectl`]) with the admin kubeconfig.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(Tool::Kubectl.path()?);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c.env("KUBECONFIG", &self.kubeconfig);
        Ok(c)
    }

    /// `helm` with the admin kubeconfig and its cache/config/data kept in the cluster's
    /// directory (tests never share or touch `~/.config/helm`).
    pub fn helm(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(Tool::Helm.path()?);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        let home = self.dir.join("helm");
        c.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", &self.kubeconfig);
        Ok(c)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster {} (dir {}) kube-apiserver log tail:\n{}",
                self.url,
                self.dir.display(),
                tail(&self.apiserver.log(), 40)
            );
        }
        self.forwarder.take();
        if let Some(cp) = &mut self.control_plane {
            cp.kill();
        }
        self.apiserver.kill();
        self.etcd.kill();
        if std::env::var_os("FLEETBOARD_KEEP_KUBE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One attempt to start etcd and kube-apiserver with fresh ports.
struct Start<'a> {
    opts: &'a ClusterOptions,
    dir: &'a Path,
    pki: &'a pki::PkiFiles,
    attempt: usize,
    apiserver_bin: &'a Path,
    etcd_bin: &'a Path,
    dialer: Option<NetnsDialer>,
    kubelet_client: Option<&'a (PathBuf, PathBuf)>,
}

impl Start<'_> {
    async fn run(self) -> Result<Cluster, StartError> {
        let [etcd_client, etcd_peer, secure] = free_ports()?;
        let token = unique_token();
        let etcd_dir = self.dir.join(format!("etcd-{}", self.attempt));
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd_cmd = self.command(self.etcd_bin);
        etcd_cmd
            .arg("--name=default")
            .arg(format!("--data-dir={}", etcd_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg(format!("--initial-cluster-token=fb-{token}"))
            // Test data is thrown away: skip fsync (it is most of etcd's latency on a busy disk).
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd_log = self.dir.join(format!("etcd-{}.log", self.attempt));
        let mut etcd = ChildGuard::spawn("etcd", etcd_cmd, &etcd_log)?;

        let bind = self.opts.bind;
        let secure_addr = SocketAddr::new(bind, secure);
        let mut api_cmd = self.command(self.apiserver_bin);
        api_cmd
            .arg(format!("--etcd-servers={client_url}"))
            // Own prefix: even a misdirected connection could never mix two clusters' data.
            .arg(format!("--etcd-prefix=/registry-{token}"))
            .arg(format!("--bind-address={bind}"))
            .arg(format!("--advertise-address={bind}"))
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--cert-dir={}", self.dir.join("pki").display()))
            .arg(format!(
                "--tls-cert-file={}",
                self.pki.server_cert.display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                self.pki.server_key.display()
            ))
            .arg(format!("--client-ca-file={}", self.pki.ca_cert.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                self.pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.pki.sa_key.display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--profiling=false");
        // Who wrote which FleetBoard object, when ([`Cluster::audit_events`]).
        let policy = self.dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY)?;
        api_cmd
            .arg(format!("--audit-policy-file={}", policy.display()))
            .arg(format!(
                "--audit-log-path={}",
                self.dir.join(AUDIT_LOG).display()
            ))
            .arg("--audit-log-mode=blocking");
        match self.kubelet_client {
            Some(client) => {
                // Nodes: the `kubernetes` Service's endpoint is the underlay address (pods
                // reach it through kube-proxy).
                api_cmd.args(controllers::apiserver_node_args(client));
            }
            None => {
                // No kubelets, no kube-proxy: the `kubernetes` Endpoints would point at a
                // loopback address, which validation refuses; nothing reads them here.
                api_cmd.arg("--endpoint-reconciler-type=none");
            }
        }
        let api_log = self.dir.join(format!("apiserver-{}.log", self.attempt));
        let apiserver_cmd = outage::ApiserverCommand::of(&api_cmd, &api_log);
        let mut apiserver = ChildGuard::spawn("kube-apiserver", api_cmd, &api_log)?;

        let internal_url = format!("https://{}", secure_addr);
        let forwarder = match &self.dialer {
            Some(d) => Some(Forwarder::start(d.clone(), secure_addr).await?),
            None => None,
        };
        let url = match &forwarder {
            Some(f) => format!("https://{}", f.local_addr()),
            None => internal_url.clone(),
        };
        let kubeconfig = self.dir.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &url,
            &self.pki.ca_cert,
            serde_json::json!({
                "client-certificate": self.pki.admin_cert,
                "client-key": self.pki.admin_key,
            }),
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;

        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            for (name, child) in [("etcd", &mut etcd), ("kube-apiserver", &mut apiserver)] {
                if let Some(status) = child.try_wait() {
                    let log = child.log();
                    if log.contains("address already in use") {
                        return Err(StartError::PortInUse);
                    }
                    return Err(StartError::Failed(anyhow::anyhow!(
                        "{name} exited ({status}) before the cluster was ready; log {}:\n{}",
                        child.log_path().display(),
                        tail(&log, 40)
                    )));
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => break,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(StartError::Failed(anyhow::anyhow!(
                    "kube-apiserver at {url} not ready after {READY_DEADLINE:?}: {last}\nlog {}:\n{}",
                    api_log.display(),
                    tail(&apiserver.log(), 40)
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(Cluster {
            client,
            forwarder,
            apiserver,
            apiserver_cmd,
            etcd,
            dir: self.dir.to_path_buf(),
            pki: self.pki.clone(),
            url,
            internal_url,
            kubeconfig,
            started_in: Duration::ZERO,
            control_plane: None,
            node_network: None,
        })
    }

    /// `program`, inside the cluster's namespace when it has one.
    fn command(&self, program: &Path) -> Command {
        match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// Three distinct ports the kernel says are free right now (held together so they differ).
/// Another process may still take one before etcd/apiserver bind it: [`StartError::PortInUse`]
/// covers that.
fn free_ports() -> std::io::Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
    ];
    Ok([
        listeners[0].local_addr()?.port(),
        listeners[1].local_addr()?.port(),
        listeners[2].local_addr()?.port(),
    ])
}
