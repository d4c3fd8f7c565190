//! Command-line arguments of `fleetboard nri` and the validated plugin configuration.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

/// Arguments of the NRI plugin (`fleetboard nri ...`). Every flag can also come from the
/// environment variable shown in `--help`.
#[derive(clap::Args, Debug, Clone)]
pub struct NriArgs {
    /// The runtime's NRI socket.
    #[arg(
        long,
        env = "FLEETBOARD_NRI_SOCKET",
        default_value = "/var/run/nri/nri.sock"
    )]
    pub socket: PathBuf,
    /// Name the plugin registers under.
    #[arg(long, env = "FLEETBOARD_NRI_PLUGIN_NAME", default_value = "fleetboard")]
    pub plugin_name: String,
    /// Two-digit plugin index; the runtime calls plugins in ascending index order.
    #[arg(long, env = "FLEETBOARD_NRI_PLUGIN_INDEX", default_value = "10")]
    pub plugin_index: String,
    /// This node's sub-block: pods get their `eth-fleet` address from it. Without it,
    /// `--node-name` says which Node's `fleetboard.io/node-cidr` annotation (written by the
    /// member agent) to wait for.
    #[arg(
        long,
        env = "FLEETBOARD_POD_CIDR",
        required_unless_present = "node_name"
    )]
    pub pod_cidr: Option<Ipv4Net>,
    /// This node's name, to read its sub-block from the Node object when `--pod-cidr` is not
    /// given (the member chart runs the plugin beside the agent this way).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Node-side address every pod routes through (default: first address of --pod-cidr). It
    /// is never given to a pod.
    #[arg(long, env = "FLEETBOARD_POD_GATEWAY")]
    pub gateway: Option<Ipv4Addr>,
    /// The tunnel CIDR (every cluster's pods), routed through `eth-fleet`. Without it,
    /// `--node-name` says which Node's `fleetboard.io/tunnel-cidr` annotation (the hub's
    /// tunnel CIDR, written by the member agent) to wait for; given, it must equal that.
    #[arg(long, env = "FLEETBOARD_TUNNEL_CIDR")]
    pub tunnel_cidr: Option<Ipv4Net>,
    /// The ClusterSet service block (virtual IPs), routed through `eth-fleet`.
    #[arg(long, env = "FLEETBOARD_SERVICE_CIDR")]
    pub service_cidr: Option<Ipv4Net>,
    /// Network namespace (a path such as /run/netns/fleetboard) where the node side of every
    /// pod's veth goes: where the dataplane receives the pods' traffic. Default: the plugin's
    /// own namespace.
    #[arg(long, env = "FLEETBOARD_NODE_NETNS")]
    pub node_netns: Option<PathBuf>,
    /// Name of the interface inside the pod.
    #[arg(long, env = "FLEETBOARD_POD_INTERFACE", default_value = "eth-fleet")]
    pub pod_interface: String,
    /// MTU of the pod interface (leave room for the tunnel's overhead).
    #[arg(long, env = "FLEETBOARD_POD_MTU", default_value_t = 1400)]
    pub mtu: u32,
    /// Where the IPAM state is kept (written crash-safely).
    #[arg(
        long,
        env = "FLEETBOARD_IPAM_STATE",
        default_value = "/var/lib/fleetboard/nri-ipam.json"
    )]
    pub state_file: PathBuf,
    /// Pods in this Kubernetes namespace are FleetBoard's own and get no interface.
    #[arg(
        long,
        env = "FLEETBOARD_OWN_NAMESPACE",
        default_value = "fleetboard-system"
    )]
    pub own_namespace: String,
    /// Address of the HTTP server with /metrics, /live and /ready (none if unset).
    #[arg(long, env = "FLEETBOARD_NRI_METRICS_ADDRESS", value_parser = parse_listen_address)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Kubeconfig for publishing pods' parallel addresses as the annotation
    /// `router.fleetboard.io/parallel_ip` (default: the in-cluster service account when running
    /// in a pod; no annotations otherwise).
    #[arg(long, env = "FLEETBOARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not publish the `router.fleetboard.io/parallel_ip` annotation on pods.
    #[arg(long, env = "FLEETBOARD_NO_POD_ANNOTATIONS")]
    pub no_pod_annotations: bool,
    /// Delay between attempts to (re)connect to the runtime, in milliseconds.
    #[arg(long, env = "FLEETBOARD_NRI_RECONNECT_MS", default_value_t = 1000)]
    pub reconnect_ms: u64,
}

/// A configuration problem, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    /// The flag at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// The validated configuration the plugin runs with.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The runtime's NRI socket.
    pub socket: PathBuf,
    /// Registered plugin name.
    pub plugin_name: String,
    /// Registered two-digit index.
    pub plugin_index: String,
    /// The node's sub-block.
    pub pod_cidr: Ipv4Net,
    /// Node-side gateway address.
    pub gateway: Ipv4Addr,
    /// Destinations routed through the pod interface (tunnel CIDR, service block).
    pub routes: Vec<Ipv4Net>,
    /// Namespace of the node side of the veth pairs (None: the plugin's own).
    pub node_netns: Option<PathBuf>,
    /// Interface name inside the pod.
    pub pod_interface: String,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// IPAM state file.
    pub state_file: PathBuf,
    /// FleetBoard's own Kubernetes namespace.
    pub own_namespace: String,
    /// Reconnect delay.
    pub reconnect: Duration,
    /// Where /metrics, /live and /ready are served.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Kubeconfig for the pod annotations (None: in-cluster when available).
    pub kubeconfig: Option<PathBuf>,
    /// Publish pods' parallel addresses as annotations.
    pub annotate_pods: bool,
}

impl NriArgs {
    /// Checks every field and builds the configuration; the error names the first bad flag.
    pub fn validate(&self) -> Result<PluginConfig, ConfigError> {
        let bad = |field, reason: String| Err(ConfigError { field, reason });
        if self.plugin_name.is_empty()
            || !self
                .plugin_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "--plugin-name",
                format!("{:?}: use letters, digits, '-' or '_'", self.plugin_name),
            );
        }
        if self.plugin_index.len() != 2 || !self.plugin_index.chars().all(|c| c.is_ascii_digit()) {
            return bad(
                "--plugin-index",
                format!("{:?}: must be two digits, e.g. 10", self.plugin_index),
            );
        }
        let Some(pod_cidr) = self.pod_cidr else {
            return bad(
                "--pod-cidr",
                "required (or --node-name, to read it from the node's fleetboard.io/node-cidr annotation)".into(),
            );
        };
        if pod_cidr.prefix_len() > 30 {
            return bad(
                "--pod-cidr",
                format!("{pod_cidr} is too small (at most /30)"),
            );
        }
        let pod_cidr = pod_cidr.trunc();
        let gateway = self.gateway.unwrap_or_else(|| {
            pod_cidr
                .hosts()
                .next()
                .expect("a /30 or larger block has hosts")
        });
        if !pod_cidr.contains(&gateway)
            || gateway == pod_cidr.network()
            || gateway == pod_cidr.broadcast()
        {
            return bad(
                "--gateway",
                format!("{gateway} is not a host address of --pod-cidr {pod_cidr}"),
            );
        }
        let Some(tunnel_cidr) = self.tunnel_cidr else {
            return bad(
                "--tunnel-cidr",
                "required with --pod-cidr (beside the agent, leave both out: they come from the Node's annotations)".into(),
            );
        };
        if !tunnel_cidr.contains(&pod_cidr) {
            return bad(
                "--tunnel-cidr",
                format!("{tunnel_cidr} does not contain --pod-cidr {pod_cidr}"),
            );
        }
        let ifname = &self.pod_interface;
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname.contains(['/', ' ', ':'])
            || ifname == "lo"
        {
            return bad(
                "--pod-interface",
                format!(
                    "{ifname:?} is not a valid interface name (1-15 bytes, no '/', ':' or space)"
                ),
            );
        }
        if !(576..=9000).contains(&self.mtu) {
            return bad("--mtu", format!("{} is outside 576..=9000", self.mtu));
        }
        if let Some(ns) = &self.node_netns
            && !ns.is_absolute()
        {
            return bad(
                "--node-netns",
                format!("{} must be an absolute path", ns.display()),
            );
        }
        if self.reconnect_ms == 0 {
            return bad("--reconnect-ms", "must be at least 1".into());
        }
        let mut routes = vec![tunnel_cidr.trunc()];
        if let Some(svc) = self.service_cidr {
            routes.push(svc.trunc());
        }
        Ok(PluginConfig {
            socket: self.socket.clone(),
            plugin_name: self.plugin_name.clone(),
            plugin_index: self.plugin_index.clone(),
            pod_cidr,
            gateway,
            routes,
            node_netns: self.node_netns.clone(),
            pod_interface: ifname.clone(),
            mtu: self.mtu,
            state_file: self.state_file.clone(),
            own_namespace: self.own_namespace.clone(),
            reconnect: Duration::from_millis(self.reconnect_ms),
            metrics_address: self.metrics_address,
            kubeconfig: self.kubeconfig.clone(),
            annotate_pods: !self.no_pod_annotations,
        })
    }
}

/// Parses `--metrics-address`: `IP:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` unbracketed (the
/// last colon separates the port), so the chart can pass `$(POD_IP):PORT` for either family.
pub fn parse_listen_address(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("{s:?}: expected IP:PORT (e.g. 127.0.0.1:9092 or [::1]:9092)");
    let (ip, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nri: NriArgs,
    }

    fn parse(extra: &[&str]) -> Result<PluginConfig, ConfigError> {
        let mut argv = vec![
            "x",
            "--pod-cidr",
            "100.64.1.0/24",
            "--tunnel-cidr",
            "100.64.0.0/10",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).nri.validate()
    }

    #[test]
    fn defaults_and_errors_name_the_flag() {
        let cfg = parse(&["--service-cidr", "100.96.0.0/16"]).unwrap();
        assert_eq!(cfg.gateway, "100.64.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(cfg.routes.len(), 2);
        assert_eq!(cfg.pod_interface, "eth-fleet");
        for (args, field) in [
            (&["--plugin-index", "1"][..], "--plugin-index"),
            (&["--gateway", "100.64.2.1"][..], "--gateway"),
            (&["--mtu", "100"][..], "--mtu"),
            (&["--pod-interface", "a/b"][..], "--pod-interface"),
            (&["--node-netns", "rel"][..], "--node-netns"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn node_name_stands_in_for_the_pod_cidr_until_it_is_known() {
        let argv = ["x", "--node-name", "n1", "--tunnel-cidr", "100.64.0.0/10"];
        let args = Cli::try_parse_from(argv).unwrap().nri;
        assert_eq!(args.node_name.as_deref(), Some("n1"));
        // Not resolved yet: validation names the flag.
        assert_eq!(args.validate().unwrap_err().field, "--pod-cidr");
        // Neither flag: clap refuses.
        assert!(Cli::try_parse_from(["x", "--tunnel-cidr", "100.64.0.0/10"]).is_err());
    }
}
