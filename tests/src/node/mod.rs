//! Real Kubernetes nodes for a test [`Cluster`]: containerd v2 + runc + the CNI bridge +
//! kubelet + kube-proxy, each node inside a network namespace of its own on the cluster's
//! underlay (docs/REAL-NODES.md has every config, error and fix behind this).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fleetboard_tests::kube::{Cluster, ClusterOptions};
//! use fleetboard_tests::node::{ImageSet, Node, NodeOptions, install_cluster_dns};
//! let images = ImageSet::from_env()?;              // FLEETBOARD_IMAGES (tests/k8s/images env)
//! let cluster = Cluster::start_with(ClusterOptions::with_nodes()).await?;
//! let a = Node::start(&cluster, NodeOptions::new("a", &images)?).await?;   // waits for Ready
//! let b = Node::start(&cluster, NodeOptions::new("b", &images)?).await?;
//! install_cluster_dns(&cluster, &images.get("coredns")?.reference).await?;
//! println!("containerd NRI socket of a: {}", a.nri_socket().display());
//! // The node's own /var/lib/fleetboard (a hostPath of its pods), read from the test:
//! let state = a.host_path(std::path::Path::new("/var/lib/fleetboard/nri-ipam.json"));
//! # Ok(()) }
//! ```
//!
//! A node, concretely (`<t>` is a [`unique_token`]):
//! - its directory `$TMPDIR/fbnode-<t>/` holds everything: PKI, configs, containerd's root,
//!   state and sockets, runc's root, shim sockets, the NRI socket (`nri/nri.sock`, plugins
//!   dir `nri/plugins` empty), CNI config and IPAM data, kubelet's root dir, pod logs;
//! - a mount namespace of its own (held by a `sleep` started with `unshare --mount
//!   --propagation slave`), where containerd, kubelet and kube-proxy, and so the shims, runc
//!   and every container run: `/` is rshared inside (pod netns files and volume mounts reach
//!   `HostToContainer` volumes) but a slave of the machine's (nothing propagates back);
//!   `/run` (= `/var/run`), `/var/lib` and `/var/log` are tmpfs of its own; `<dir>/nri` is
//!   bound onto `/run/nri`. So the fixed hostPaths of charts (`/var/run/nri` with
//!   [`NODE_NRI_SOCKET`], `/var/lib/<app>`, `/var/run/netns` with the pods' `cni-*` netns
//!   files, which containerd puts there) and what kubelet and libcni write at fixed paths
//!   (`/var/log/containers`, `/var/lib/cni/results`, `/var/lib/kubelet/device-plugins`) are
//!   per node, and two nodes on one machine never share them. [`Node::host_path`] reads the
//!   node's view from the test (`/proc/<holder>/root/...`). Everything else (`/tmp`, `/etc`,
//!   `/dev`, `/sys`, the tools' cache) is the machine's;
//! - the cgroup `/fbnode-<t>` in every hierarchy (`runtime/` containerd and the mount
//!   namespace's holder, `kubelet/` kubelet and kube-proxy, `kubepods/` made by kubelet);
//! - the network namespace `fb-node-<t'>` with `eth0` on the cluster's underlay, a default
//!   route to the control-plane namespace (so kubelet has a node IP; nothing is forwarded
//!   there), `ip_forward=1`, and routes to the other nodes' podCIDRs;
//! - kubelet (client certificate `O=system:nodes, CN=system:node:<name>`, webhook
//!   authn/authz, `clusterDNS` = [`crate::kube::CLUSTER_DNS_IP`], an empty `resolvConf` so pods never use
//!   the machine's resolver), kube-proxy (iptables, `--masquerade-all`, no conntrack sysctls).
//!
//! Drop (also while a test panics) kills every process (by pid, by the node's socket path on
//! a command line, by its cgroups, by its mount namespace, in rounds), so that the mount
//! namespace vanishes with all the node's mounts; unmounts anything still under the directory
//! in the machine's view (normally nothing), removes the cgroups deepest first, the network
//! namespace and finally the directory. [`NodeTraces::leftovers`] checks that nothing is left
//! (the holder too, and nothing of the node in the machine's `/var/lib/cni/results` or
//! `/var/log/containers`).

mod cgroups;
mod cleanup;
mod cni;
mod containerd;
mod dns;
mod images;
mod kubelet;
mod mounts;
mod proxy;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node as KubeNode, Taint};
use kube::api::Api;

pub use cleanup::NodeTraces;
pub use dns::install_cluster_dns;
pub use images::{Image, ImageSet};

use crate::kube::{Cluster, NodeRoute, eventually};
use crate::netns::{Netns, unique_token};
use crate::process::ChildGuard;

/// containerd's NRI socket in the node's own view (what a DaemonSet's hostPath `/var/run/nri`
/// holds); the machine's view of it is [`Node::nri_socket`].
pub const NODE_NRI_SOCKET: &str = "/var/run/nri/nri.sock";

/// How long a node may take to turn Ready (1–4 s on an idle machine; generous for a busy
/// 2-core one starting several nodes at once).
const READY_DEADLINE: Duration = Duration::from_secs(240);

/// What [`Node::start`] makes.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The Kubernetes node name (unique within its cluster).
    pub name: String,
    /// Its underlay address; `None`: the next free one of the cluster's underlay.
    pub address: Option<Ipv4Addr>,
    /// Node labels (kubelet `--node-labels`; NodeRestriction refuses most
    /// `kubernetes.io`-prefixed ones).
    pub labels: BTreeMap<String, String>,
    /// Taints the node registers with.
    pub taints: Vec<Taint>,
    /// OCI archives imported into containerd's `k8s.io` namespace before kubelet starts.
    pub images: Vec<PathBuf>,
    /// The pod sandbox image (must be among `images`).
    pub pause_image: String,
    /// Run kube-proxy (iptables mode) on the node.
    pub kube_proxy: bool,
}

impl NodeOptions {
    /// Node `name` with every archive of `images`, its `pause` image as sandbox image, and
    /// kube-proxy.
    pub fn new(name: &str, images: &ImageSet) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_string(),
            address: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            images: images.archives(),
            pause_image: images.get("pause")?.reference.clone(),
            kube_proxy: true,
        })
    }
}

/// The processes of a node, killed in this order (the mount namespace's holder last).
#[derive(Default)]
struct Procs {
    kube_proxy: Option<ChildGuard>,
    kubelet: Option<ChildGuard>,
    containerd: Option<ChildGuard>,
    mounts: Option<mounts::MountNs>,
}

impl Procs {
    /// Each process by name, in kill order.
    fn each(&mut self) -> [(&'static str, Option<&mut ChildGuard>); 4] {
        [
            ("kube-proxy", self.kube_proxy.as_mut()),
            ("kubelet", self.kubelet.as_mut()),
            ("containerd", self.containerd.as_mut()),
            (
                "mount namespace holder",
                self.mounts.as_mut().map(mounts::MountNs::holder),
            ),
        ]
    }
}

/// One running node. Dropping it removes every trace of it (see the module docs).
pub struct Node {
    name: String,
    token: String,
    dir: PathBuf,
    address: Ipv4Addr,
    pod_cidr: String,
    ready_in: Duration,
    procs: Procs,
    routes: Option<Arc<Mutex<Vec<NodeRoute>>>>,
    netns: Option<Netns>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("pod_cidr", &self.pod_cidr)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Inotify limits a machine running several kubelets beside other tests needs (each kubelet's
/// cAdvisor, containerd, kube-apiserver and the others take inotify instances; at the kernel's
/// default of 128 instances per user a kubelet fails at start with "Failed to start cAdvisor:
/// inotify_init: too many open files"). Raised, never lowered, to what kind's documentation
/// asks for. These two sysctls are global to the machine.
fn raise_inotify_limits() -> anyhow::Result<()> {
    for (key, want) in [
        ("max_user_instances", 1024u64),
        ("max_user_watches", 524_288),
    ] {
        let path = format!("/proc/sys/fs/inotify/{key}");
        let now: u64 = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {path}"))?;
        if now < want {
            std::fs::write(&path, want.to_string())
                .with_context(|| format!("raising {path} from {now} to {want}"))?;
        }
    }
    Ok(())
}

impl Node {
    /// Starts a node of `cluster` (which must have been started with
    /// [`crate::kube::ClusterOptions::with_nodes`]) and waits until it is Ready, its podCIDR
    /// is routed from the other nodes and (with kube-proxy) kube-proxy has synced.
    pub async fn start(cluster: &Cluster, opts: NodeOptions) -> anyhow::Result<Self> {
        let began = Instant::now();
        raise_inotify_limits()?;
        let net = cluster.node_network().context(
            "the cluster has no node network: start it with ClusterOptions::with_nodes()",
        )?;
        let token = unique_token();
        let dir = std::env::temp_dir().join(format!("fbnode-{token}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let address = match opts.address {
            Some(a) => a,
            None => net.allocate_address()?,
        };
        // From here on, Drop cleans up whatever exists.
        let mut node = Node {
            name: opts.name.clone(),
            token,
            dir,
            address,
            pod_cidr: String::new(),
            ready_in: Duration::ZERO,
            procs: Procs::default(),
            routes: None,
            netns: None,
        };
        let ns = Netns::new("node")?;
        net.underlay()
            .attach(&ns, "eth0", &[&format!("{address}/{}", net.prefix_len())])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &net.apiserver_ip().to_string(),
        ])?;
        ns.sysctl("net.ipv4.ip_forward=1")?;
        node.netns = Some(ns);
        cgroups::create(&node.cgroup())?;
        node.procs.mounts = Some(
            mounts::MountNs::start(
                node.in_cgroup("runtime")?,
                &node.cgroup(),
                &node.dir.join("nri"),
                &node.dir.join("mounts.log"),
            )
            .await?,
        );

        let cni_template = cni::write_template(&node.dir, &node.cni_network())?;
        let containerd = containerd::start(&node, &opts, &cni_template)?;
        node.procs.containerd = Some(containerd);
        let socket = node.containerd_socket();
        containerd::wait_ready(&socket, node.procs.containerd.as_mut().expect("containerd"))
            .await?;
        containerd::import_images(&node, &opts.images).await?;

        let kubelet = kubelet::start(cluster, &node, &opts)?;
        node.procs.kubelet = Some(kubelet);
        if opts.kube_proxy {
            node.procs.kube_proxy = Some(proxy::start(cluster, &node, net.cluster_cidr())?);
        }
        let pod_cidr = node.wait_ready(cluster).await?;
        net.add_node_route(NodeRoute {
            netns: node.netns().name().to_string(),
            addr: address,
            pod_cidr: pod_cidr.clone(),
        })?;
        node.routes = Some(net.routes());
        node.pod_cidr = pod_cidr;
        if opts.kube_proxy {
            node.wait_kube_proxy().await?;
        }
        node.ready_in = began.elapsed();
        eprintln!(
            "node {} ready in {:.1?} (address {address}, podCIDR {}, dir {})",
            node.name,
            node.ready_in,
            node.pod_cidr,
            node.dir.display()
        );
        Ok(node)
    }

    /// The Kubernetes node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's underlay address (its InternalIP).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The podCIDR kube-controller-manager allocated.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("a started node has its namespace")
    }

    /// The node's directory (configs, logs, runtime state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's NRI socket as the machine sees it (`<dir>/nri/nri.sock`): run an NRI plugin
    /// against it (plugin index of your choice). Inside the node (so in its pods) the same
    /// socket is [`NODE_NRI_SOCKET`].
    pub fn nri_socket(&self) -> PathBuf {
        self.dir.join("nri/nri.sock")
    }

    /// Path `p` of the node's own view of the filesystem (its mount namespace, see the module
    /// docs), reachable from the test: `/proc/<holder>/root/<p>`, with `p`'s symlinks
    /// resolved inside the node (e.g. `host_path("/var/lib/fleetboard/nri-ipam.json")`, or
    /// `host_path(NODE_NRI_SOCKET)`, the same socket as [`Node::nri_socket`]).
    pub fn host_path(&self, p: &Path) -> PathBuf {
        self.procs
            .mounts
            .as_ref()
            .expect("a started node has its mount namespace")
            .host_path(p)
    }

    /// containerd's API socket (for `ctr --address`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// How long [`Node::start`] took until the node was Ready (and kube-proxy synced).
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// The logs of kubelet, containerd and kube-proxy so far, last `lines` of each.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (name, p) in [
            ("containerd", self.procs.containerd.as_ref()),
            ("kubelet", self.procs.kubelet.as_ref()),
            ("kube-proxy", self.procs.kube_proxy.as_ref()),
        ] {
            if let Some(p) = p {
                let log = p.log();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                out.push_str(&format!(
                    "--- {name} ({}):\n{tail}\n",
                    p.log_path().display()
                ));
            }
        }
        out
    }

    /// SIGKILLs the processes named `comm` (as `/proc/<pid>/comm` shows them) in the pod
    /// with uid `pod_uid` on this node, as a crash would; the kubelet restarts the container.
    /// Returns how many were killed.
    pub fn kill_in_pod(&self, pod_uid: &str, comm: &str) -> anyhow::Result<usize> {
        let pod_dir = format!("pod{pod_uid}");
        // The same pid shows in every hierarchy of a cgroup v1 machine.
        let mut pids = std::collections::BTreeSet::new();
        for dir in cgroups::dirs_deepest_first(&self.cgroup()) {
            if !dir.components().any(|c| c.as_os_str() == pod_dir.as_str()) {
                continue;
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        let mut killed = 0;
        for pid in pids {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if name.trim_end() != comm {
                continue;
            }
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety concerns.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        anyhow::ensure!(
            killed > 0,
            "no process {comm:?} in pod {pod_uid} on node {}",
            self.name()
        );
        Ok(killed)
    }

    /// Takes the node down as a power cut would, while its objects stay in the API: kills
    /// kubelet, containerd, kube-proxy and every container (shims and pod processes), and
    /// takes its underlay link down, so nothing answers at its address any more. The node's
    /// namespaces, mounts and files stay until it is dropped.
    pub fn power_off(&self) -> anyhow::Result<()> {
        // kubelet, containerd and kube-proxy run in the node's cgroup too.
        let holder = self.procs.mounts.as_ref().map(mounts::MountNs::pid);
        cleanup::kill_all_but(&self.cgroup(), &self.dir, holder);
        crate::netns::run(Command::new("ip").args([
            "-n",
            self.netns().name(),
            "link",
            "set",
            "eth0",
            "down",
        ]))?;
        Ok(())
    }

    /// What identifies this node's processes, mounts, cgroups, namespace and files: keep it
    /// to check [`NodeTraces::leftovers`] after the node is dropped.
    pub fn traces(&self) -> NodeTraces {
        NodeTraces {
            dir: self.dir.clone(),
            cgroup: self.cgroup(),
            netns: self.netns.as_ref().map(|n| n.name().to_string()),
            cni_network: self.cni_network(),
            mount_ns: self.procs.mounts.as_ref().map(mounts::MountNs::identity),
        }
    }

    /// The cgroup (in every hierarchy) the node's processes live in.
    fn cgroup(&self) -> String {
        format!("fbnode-{}", self.token)
    }

    /// The CNI network name (libcni names its result cache files after it).
    fn cni_network(&self) -> String {
        format!("fbnode-{}", self.token)
    }

    /// A command running `program` in the node's network and mount namespaces (`nsenter
    /// --net --mount`, which opens both namespace files before entering either; not `ip netns
    /// exec`, which would remount /sys and hide the cgroup hierarchies), moved first into the
    /// node's cgroup `sub` in every hierarchy. Every path it is given must be the same in the
    /// node's view: under the node directory, or the tools' and images' caches.
    fn command(&self, program: &Path, sub: &str) -> anyhow::Result<Command> {
        let holder = self
            .procs
            .mounts
            .as_ref()
            .context("the node's mount namespace is not set up")?
            .pid();
        let mut c = self.in_cgroup(sub)?;
        c.arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns().name()))
            .arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg(program);
        Ok(c)
    }

    /// `sh` that writes its pid into the node's cgroup `sub` in every hierarchy and then execs
    /// its arguments (add them).
    fn in_cgroup(&self, sub: &str) -> anyhow::Result<Command> {
        let procs = cgroups::procs_files(&self.cgroup(), sub)?;
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"for f in $FB_CGROUP_PROCS; do echo $$ > "$f" || exit 1; done; exec "$@""#)
            .arg("sh")
            .env("FB_CGROUP_PROCS", procs.join(" "));
        Ok(c)
    }

    /// Waits until the Node object says Ready and has a podCIDR (which it returns).
    async fn wait_ready(&mut self, cluster: &Cluster) -> anyhow::Result<String> {
        let api: Api<KubeNode> = Api::all(cluster.client());
        let name = self.name.clone();
        let procs = &mut self.procs;
        let result = eventually(
            &format!("node {name} Ready with a podCIDR"),
            READY_DEADLINE,
            Duration::from_millis(500),
            || {
                let exited = dead_process(procs);
                let api = api.clone();
                let name = name.clone();
                async move {
                    if let Some(e) = exited {
                        return Err(anyhow::anyhow!("{e}"));
                    }
                    let Some(n) = api.get_opt(&name).await? else {
                        anyhow::bail!("not registered yet");
                    };
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| (c.status == "True", c.message.clone().unwrap_or_default()));
                    let cidr = n.spec.and_then(|s| s.pod_cidr);
                    match (ready, cidr) {
                        (Some((true, _)), Some(cidr)) => Ok(Some(cidr)),
                        (r, cidr) => anyhow::bail!("ready {r:?}, podCIDR {cidr:?}"),
                    }
                }
            },
        )
        .await;
        result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tails(25)))
    }

    /// Waits until kube-proxy's healthz (inside the node namespace) says it has synced.
    async fn wait_kube_proxy(&mut self) -> anyhow::Result<()> {
        let ns = self.netns().name().to_string();
        let res = eventually(
            "kube-proxy healthz 200",
            READY_DEADLINE,
            Duration::from_millis(500),
            || {
                let ns = ns.clone();
                async move {
                    let status = tokio::task::spawn_blocking(move || {
                        crate::netns::run(Command::new("ip").args([
                            "netns", "exec", &ns, "bash", "-c",
                            "exec 3<>/dev/tcp/127.0.0.1/10256 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
                        ]))
                        .unwrap_or_default()
                    })
                    .await?;
                    Ok(crate::process::http_status_line(&status)
                        .filter(|s| *s == 200)
                        .map(|_| ()))
                }
            },
        )
        .await;
        if let Some(e) = dead_process(&mut self.procs) {
            anyhow::bail!("{e}\n{}", self.log_tails(25));
        }
        res.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tails(25)))
    }
}

/// The first of the node's processes that has exited, as an error message.
fn dead_process(procs: &mut Procs) -> Option<String> {
    for (name, p) in procs.each() {
        if let Some(p) = p
            && let Some(status) = p.try_wait()
        {
            return Some(format!(
                "{name} exited ({status}), log {}",
                p.log_path().display()
            ));
        }
    }
    None
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node {} logs:\n{}", self.name, self.log_tails(30));
        }
        cleanup::teardown(self);
    }
}
