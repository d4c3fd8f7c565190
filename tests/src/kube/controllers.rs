//! What a [`Cluster`] needs for real nodes ([`crate::node::Node`]): a network the nodes
//! share with the apiserver, the apiserver flags kubelets need, and kube-controller-manager +
//! kube-scheduler.
//!
//! Topology of a cluster started with [`ClusterOptions::with_nodes`]:
//!
//! ```text
//! netns fb-net-<t> (bridge br0, the cluster's underlay 198.18.<n>.0/24)
//!   ├─ netns fb-kcp-<t>  eth0 198.18.<n>.1: etcd, kube-apiserver, kube-controller-manager,
//!   │                     kube-scheduler (ip_forward stays 0: nothing is routed through it)
//!   ├─ netns of node 1    eth0 198.18.<n>.2, default via .1, ip_forward=1, routes to the
//!   │                     other nodes' podCIDRs via their addresses (what kindnet does)
//!   └─ netns of node 2    eth0 198.18.<n>.3, …
//! ```
//!
//! The root namespace only reaches the apiserver through the cluster's loopback forwarder;
//! nothing is forwarded there. Each cluster gets its own cluster CIDR (a /16 of
//! 100.64.0.0/10, one /24 per node allocated by kube-controller-manager).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, PostParams};

use super::{Cluster, ClusterOptions, SERVICE_CIDR, Tool, pki, write_kubeconfig};
use crate::netns::{Netns, Underlay};
use crate::process::ChildGuard;

/// The ClusterIP of CoreDNS' `kube-dns` Service, in [`SERVICE_CIDR`] (kubelets' `clusterDNS`).
pub const CLUSTER_DNS_IP: &str = "198.19.255.10";
/// The `kubernetes` Service's ClusterIP (the first of [`SERVICE_CIDR`]): the apiserver's
/// certificate names it, pods reach the API there through kube-proxy.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

/// Numbers the clusters of this process (their underlay /24 and cluster CIDR /16).
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// Options of a cluster that hosts real nodes.
#[derive(Debug, Clone, Default)]
pub struct NodeSupport {
    /// The pods' range (kube-controller-manager's `--cluster-cidr`); `None`: a /16 of
    /// 100.64.0.0/10 of its own.
    pub cluster_cidr: Option<String>,
}

/// The network of a cluster with nodes: the underlay bridge, the control-plane namespace, the
/// nodes' addresses and their podCIDR routes.
#[derive(Debug)]
pub struct NodeNetwork {
    // Dropped in this order: the control plane namespace first, then the underlay.
    control: Netns,
    underlay: Underlay,
    subnet: [u8; 3],
    next_host: AtomicU32,
    cluster_cidr: String,
    routes: Arc<Mutex<Vec<NodeRoute>>>,
}

/// One node's podCIDR route: `pod_cidr via addr`, to be installed in every other node's
/// namespace (and the control-plane one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    /// The node's network namespace.
    pub netns: String,
    /// Its underlay address.
    pub addr: Ipv4Addr,
    /// Its `spec.podCIDR`.
    pub pod_cidr: String,
}

impl NodeNetwork {
    fn new(opts: &NodeSupport) -> anyhow::Result<Self> {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        // Each underlay is its own bridge in its own namespace, so clusters never see each
        // other's addresses; distinct subnets only make logs easier to read.
        let subnet = [198, 18, 100 + (n % 100) as u8];
        let cluster_cidr = opts
            .cluster_cidr
            .clone()
            .unwrap_or_else(|| format!("100.{}.0.0/16", 64 + n % 64));
        let underlay = Underlay::new()?;
        let control = Netns::new("kcp")?;
        let addr = format!("{}.{}.{}.1/24", subnet[0], subnet[1], subnet[2]);
        underlay.attach(&control, "eth0", &[&addr])?;
        Ok(Self {
            control,
            underlay,
            subnet,
            next_host: AtomicU32::new(2),
            cluster_cidr,
            routes: Arc::default(),
        })
    }

    /// The control-plane namespace's underlay address (the apiserver listens there).
    pub fn apiserver_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    /// The control-plane namespace.
    pub fn control(&self) -> &Netns {
        &self.control
    }

    /// The underlay (bridge namespace) nodes attach to.
    pub fn underlay(&self) -> &Underlay {
        &self.underlay
    }

    /// The next free node address on the underlay (`.2`, `.3`, …).
    pub fn allocate_address(&self) -> anyhow::Result<Ipv4Addr> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(host < 255, "no node addresses left on the underlay");
        Ok(Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            host as u8,
        ))
    }

    /// The underlay prefix length (a /24).
    pub fn prefix_len(&self) -> u8 {
        24
    }

    /// kube-controller-manager's `--cluster-cidr` (also kube-proxy's).
    pub fn cluster_cidr(&self) -> &str {
        &self.cluster_cidr
    }

    /// Adds `route` (a node that just got its podCIDR) everywhere: its podCIDR via its
    /// address in the other nodes' namespaces and the control-plane one, theirs in its own.
    pub fn add_node_route(&self, route: NodeRoute) -> anyhow::Result<()> {
        let mut routes = self.routes.lock().expect("routes lock");
        let via = route.addr.to_string();
        for other in routes.iter().filter(|r| r.netns != route.netns) {
            replace_route(&other.netns, &route.pod_cidr, &via)?;
            replace_route(&route.netns, &other.pod_cidr, &other.addr.to_string())?;
        }
        replace_route(self.control.name(), &route.pod_cidr, &via)?;
        routes.retain(|r| r.netns != route.netns);
        routes.push(route);
        Ok(())
    }

    /// The registry a node removes itself from on drop.
    pub fn routes(&self) -> Arc<Mutex<Vec<NodeRoute>>> {
        self.routes.clone()
    }
}

/// Removes the route of the node in namespace `netns` from `routes` and from the other
/// nodes' namespaces (best effort: a namespace may be gone already).
pub fn remove_node_route(routes: &Mutex<Vec<NodeRoute>>, netns: &str) {
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = routes.iter().position(|r| r.netns == netns) else {
        return;
    };
    let gone = routes.remove(i);
    for other in routes.iter() {
        let _ = crate::netns::run(std::process::Command::new("ip").args([
            "-n",
            &other.netns,
            "route",
            "del",
            &gone.pod_cidr,
        ]));
    }
}

fn replace_route(netns: &str, cidr: &str, via: &str) -> anyhow::Result<()> {
    crate::netns::run(
        std::process::Command::new("ip").args(["-n", netns, "route", "replace", cidr, "via", via]),
    )
    .map(|_| ())
}

/// The apiserver flags nodes need (on top of the fixture's own), given the kubelet client
/// certificate the apiserver uses for exec/logs.
pub(super) fn apiserver_node_args(kubelet_client: &(PathBuf, PathBuf)) -> Vec<String> {
    vec![
        "--enable-admission-plugins=NodeRestriction".into(),
        // The node names are not in any DNS: connect to kubelets by their InternalIP (else the
        // apiserver asks the machine's resolver).
        "--kubelet-preferred-address-types=InternalIP".into(),
        "--allow-privileged=true".into(),
        format!(
            "--kubelet-client-certificate={}",
            kubelet_client.0.display()
        ),
        format!("--kubelet-client-key={}", kubelet_client.1.display()),
    ]
}

/// Prepares the node network (when asked for) before the cluster starts: returns it with the
/// options rewritten to run the cluster inside its control-plane namespace.
pub(super) fn prepare(
    opts: ClusterOptions,
) -> anyhow::Result<(ClusterOptions, Option<NodeNetwork>)> {
    let Some(support) = &opts.nodes else {
        return Ok((opts, None));
    };
    let net = NodeNetwork::new(support)?;
    let opts = ClusterOptions {
        bind: IpAddr::V4(net.apiserver_ip()),
        netns: Some(net.control.name().to_string()),
        nodes: opts.nodes.clone(),
    };
    Ok((opts, Some(net)))
}

/// kube-controller-manager and kube-scheduler of a cluster with nodes.
pub(super) struct ControlPlane {
    kcm: ChildGuard,
    scheduler: ChildGuard,
}

impl ControlPlane {
    /// Starts both in the control-plane namespace (no serving port: `--secure-port=0`) and
    /// binds the apiserver's kubelet client to `system:kubelet-api-admin`.
    pub(super) async fn start(cluster: &Cluster, net: &NodeNetwork) -> anyhow::Result<Self> {
        let kcm_kc = cluster.client_cert_kubeconfig(
            "kube-controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        let sched_kc =
            cluster.client_cert_kubeconfig("kube-scheduler", "system:kube-scheduler", &[])?;
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "fleetboard-test:kubelet-api-admin" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:kubelet-api-admin" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": KUBELET_CLIENT_CN }],
        }))?;
        Api::<ClusterRoleBinding>::all(cluster.client())
            .create(&PostParams::default(), &binding)
            .await
            .context("binding the apiserver's kubelet client to system:kubelet-api-admin")?;

        let mut sched = net
            .control
            .command(Tool::KubeScheduler.path()?.to_str().context("path")?);
        sched
            .arg(format!("--kubeconfig={}", sched_kc.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                sched_kc.display()
            ))
            .arg(format!("--authorization-kubeconfig={}", sched_kc.display()))
            .args(["--leader-elect=false", "--secure-port=0"]);
        let scheduler = ChildGuard::spawn(
            "kube-scheduler",
            sched,
            &cluster.dir.join("kube-scheduler.log"),
        )?;
        let mut kcm = net.control.command(
            Tool::KubeControllerManager
                .path()?
                .to_str()
                .context("path")?,
        );
        kcm.arg(format!("--kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm_kc.display()))
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg(format!(
                "--service-account-private-key-file={}",
                cluster.pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", cluster.pki.ca_cert.display()))
            .arg("--use-service-account-credentials=true")
            .arg("--allocate-node-cidrs=true")
            .arg(format!("--cluster-cidr={}", net.cluster_cidr))
            .arg("--node-cidr-mask-size=24")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // Nodes of a test come and go with the test: evict nothing, wait for nothing.
            .arg("--node-monitor-grace-period=40s");
        let kcm = ChildGuard::spawn(
            "kube-controller-manager",
            kcm,
            &cluster.dir.join("kube-controller-manager.log"),
        )?;
        Ok(Self { kcm, scheduler })
    }

    pub(super) fn kill(&mut self) {
        self.kcm.kill();
        self.scheduler.kill();
    }
}

/// The CN of the apiserver's client certificate for kubelets (exec, logs, port-forward).
pub(super) const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

impl Cluster {
    /// Writes `<dir>/<stem>.kubeconfig` with a fresh client certificate `CN=<common_name>,
    /// O=<orgs>` signed by the cluster CA, against [`Cluster::internal_url`] (what kubelets,
    /// kube-proxy and controllers in the test's namespaces use).
    pub fn client_cert_kubeconfig(
        &self,
        stem: &str,
        common_name: &str,
        orgs: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let (crt, key) =
            pki::issue_client(&self.pki, &self.dir.join("pki"), stem, common_name, orgs)?;
        let path = self.dir.join(format!("{stem}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.internal_url,
            &self.pki.ca_cert,
            serde_json::json!({ "client-certificate": crt, "client-key": key }),
        )?;
        Ok(path)
    }

    /// kube-controller-manager running only `controllers` (e.g. `resourcequota`: without it
    /// nobody computes a ResourceQuota's usage and the API server admits past every quota), as
    /// a process of the host namespace: for clusters on a host address
    /// ([`ClusterOptions::loopback`], [`ClusterOptions::on`]); a cluster with nodes runs every
    /// controller already. The process stops when the guard is dropped.
    pub fn run_controllers(&self, controllers: &[&str]) -> anyhow::Result<ChildGuard> {
        let kc = self.client_cert_kubeconfig(
            "kube-controller-manager-only",
            "system:kube-controller-manager",
            &[],
        )?;
        let mut kcm = std::process::Command::new(Tool::KubeControllerManager.path()?);
        kcm.arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--authentication-kubeconfig={}", kc.display()))
            .arg(format!("--authorization-kubeconfig={}", kc.display()))
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.pki.ca_cert.display()))
            .arg("--use-service-account-credentials=true")
            .arg(format!("--controllers={}", controllers.join(",")));
        ChildGuard::spawn(
            "kube-controller-manager",
            kcm,
            &self.dir.join("kube-controller-manager-only.log"),
        )
    }

    /// Writes to `path` a self-contained admin kubeconfig against [`Cluster::internal_url`],
    /// the CA and the client certificate embedded (`*-data`), as a cloud hands one out: what a
    /// user's shell on the test internet ([`crate::internet::Internet`]) uses, and what
    /// `kubectl config view --minify --raw` reads the CA from.
    pub fn user_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let b64 = |p: &Path| -> anyhow::Result<String> {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "fleetboard-test", "cluster": {
                "server": self.internal_url,
                "certificate-authority-data": b64(&self.pki.ca_cert)?,
            }}],
            "users": [{ "name": "admin", "user": {
                "client-certificate-data": b64(&self.pki.admin_cert)?,
                "client-key-data": b64(&self.pki.admin_key)?,
            }}],
            "contexts": [{ "name": "fleetboard-test", "context": {
                "cluster": "fleetboard-test",
                "user": "admin",
            }}],
            "current-context": "fleetboard-test",
        });
        std::fs::write(path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The node network of a cluster started with [`ClusterOptions::with_nodes`].
    pub fn node_network(&self) -> Option<&NodeNetwork> {
        self.node_network.as_ref()
    }
}
