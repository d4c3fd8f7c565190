//! Shared pieces of the NRI plugin tests: a "node" (its network namespace, an NRI runtime
//! socket, the plugin process) and pods (network namespaces made by the test).

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleetboard_nri::api::PodSandbox;
use fleetboard_nri::runtime::{NriRuntime, PluginConn, pod_sandbox};
use fleetboard_tests::binaries::bin;
use fleetboard_tests::netns::{Netns, unique_token};
use fleetboard_tests::process::{ChildGuard, wait_for};

/// Generous: CI is a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Polling interval of `wait_for`.
pub const EVERY: Duration = Duration::from_millis(100);
/// Tunnel CIDR of the tests (overlay range).
pub const TUNNEL_CIDR: &str = "100.64.0.0/10";
/// ClusterSet service block of the tests (inside the overlay range).
pub const SERVICE_CIDR: &str = "100.127.0.0/16";

/// A simulated node: its namespace (where the node ends of the veths go), the NRI socket the
/// test plays the runtime on, and the plugin process.
pub struct Node {
    pub ns: Netns,
    pub dir: PathBuf,
    pub runtime: NriRuntime,
    pub plugin: Option<ChildGuard>,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    restarts: u32,
}

impl Node {
    /// A node with sub-block `100.64.<third>.0/24`; the plugin is not started yet.
    pub fn new(third: u8) -> anyhow::Result<Self> {
        let ns = Netns::new("nrinode")?;
        ns.sysctl("net.ipv4.ip_forward=1")?;
        let dir = std::env::temp_dir().join(format!("fb-nri-{}", unique_token()));
        std::fs::create_dir_all(&dir)?;
        let runtime = NriRuntime::bind(&dir.join("nri.sock"))?;
        Ok(Self {
            ns,
            dir,
            runtime,
            plugin: None,
            pod_cidr: format!("100.64.{third}.0/24"),
            gateway: Ipv4Addr::new(100, 64, third, 1),
            restarts: 0,
        })
    }

    /// Path of the node namespace.
    pub fn ns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.ns.name())
    }

    /// The IPAM state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("ipam.json")
    }

    /// Starts (or restarts) the plugin process: `fleetboard nri ...` in the host namespace,
    /// putting the node ends into the node namespace (`--node-netns`).
    pub fn start_plugin(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("fleetboard"));
        cmd.arg("nri").arg("--node-netns").arg(self.ns_path());
        self.spawn_plugin(cmd)
    }

    /// Like [`Node::start_plugin`], with extra flags (e.g. `--kubeconfig`).
    pub fn start_plugin_with(&mut self, extra: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("fleetboard"));
        cmd.arg("nri").arg("--node-netns").arg(self.ns_path());
        cmd.args(extra);
        self.spawn_plugin(cmd)
    }

    /// Starts the plugin inside the node namespace (node ends stay in its own namespace), with
    /// its metrics server on `127.0.0.1:<port>` there.
    pub fn start_plugin_in_node(&mut self, port: u16) -> anyhow::Result<()> {
        let mut cmd = self.ns.command(bin("fleetboard").to_str().unwrap());
        cmd.arg("nri")
            .arg("--metrics-address")
            .arg(format!("127.0.0.1:{port}"));
        self.spawn_plugin(cmd)
    }

    fn spawn_plugin(&mut self, mut cmd: Command) -> anyhow::Result<()> {
        cmd.env("RUST_LOG", "debug")
            .arg("--socket")
            .arg(self.runtime.path())
            .args(["--pod-cidr", &self.pod_cidr])
            .args(["--tunnel-cidr", TUNNEL_CIDR])
            .args(["--service-cidr", SERVICE_CIDR])
            .arg("--state-file")
            .arg(self.state_file())
            .args(["--reconnect-ms", "100"]);
        self.restarts += 1;
        let log = self.dir.join(format!("plugin-{}.log", self.restarts));
        self.plugin = Some(ChildGuard::spawn("fleetboard nri", cmd, &log)?);
        Ok(())
    }

    /// SIGKILLs the plugin.
    pub fn kill_plugin(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            p.kill();
        }
    }

    /// The plugin's logs so far (all runs), for assertion messages.
    pub fn logs(&self) -> String {
        (1..=self.restarts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("plugin-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    /// Accepts the plugin, configures and synchronizes it with `pods` (as containerd does).
    pub async fn connect(&self, pods: Vec<PodSandbox>) -> anyhow::Result<PluginConn> {
        let (conn, events) = self
            .runtime
            .accept_configured(DEADLINE, pods)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\nplugin log:\n{}", self.logs()))?;
        anyhow::ensure!(
            conn.name == "fleetboard" && conn.index == "10",
            "registration"
        );
        anyhow::ensure!(
            events == 0b111,
            "subscribed to {events:#b}, want Run/Stop/RemovePodSandbox"
        );
        Ok(conn)
    }

    /// `GET path` on the plugin's metrics server in the node namespace.
    pub fn http_get(&self, port: u16, path: &str) -> String {
        self.ns.http_get(port, path)
    }

    /// Names of node-side pod interfaces (`fbn*`).
    pub fn node_interfaces(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ns.ip(&["-o", "link", "show", "type", "veth"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("fbn"))
            .collect())
    }

    /// Addresses recorded in the IPAM state file.
    pub fn recorded(&self) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        let text = match std::fs::read_to_string(self.state_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let pods = v["pods"].as_object().cloned().unwrap_or_default();
        Ok(pods
            .into_iter()
            .map(|(id, rec)| (id, rec["ip"].as_str().unwrap_or("").parse().unwrap()))
            .collect())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_plugin();
        // Keep the logs and state of a failing test for inspection.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A pod: its network namespace and its sandbox description.
pub struct Pod {
    pub ns: Netns,
    pub sandbox: PodSandbox,
}

impl Pod {
    /// A pod with its own network namespace in Kubernetes namespace `default`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let ns = Netns::new("pod")?;
        let path = Path::new("/run/netns").join(ns.name());
        let id = format!("{:0>64}", unique_token());
        let sandbox = pod_sandbox(&id, "default", name, Some(&path));
        Ok(Self { ns, sandbox })
    }

    /// The address on `eth-fleet`, if the interface is there.
    pub fn address(&self) -> Option<Ipv4Addr> {
        let out = self
            .ns
            .ip(&["-o", "-4", "addr", "show", "dev", "eth-fleet"])
            .ok()?;
        let inet = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        inet.strip_suffix("/32")?.parse().ok()
    }

    /// Whether `eth-fleet` exists.
    pub fn has_interface(&self) -> bool {
        self.ns.ip(&["link", "show", "dev", "eth-fleet"]).is_ok()
    }
}

/// Waits for the plugin to have given `pod` its interface (used after Synchronize, whose
/// repairs run in the background).
pub fn wait_address(pod: &Pod) -> anyhow::Result<Ipv4Addr> {
    wait_for("eth-fleet with an address", DEADLINE, EVERY, || {
        Ok(pod.address())
    })
}

/// Fails when two addresses are equal.
pub fn assert_unique(ips: &[Ipv4Addr]) {
    let set: HashSet<_> = ips.iter().collect();
    assert_eq!(set.len(), ips.len(), "duplicate addresses in {ips:?}");
}
