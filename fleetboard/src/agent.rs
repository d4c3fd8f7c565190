//! `fleetboard agent`: the member agent, one per node (see `fleetboard_control::agent`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use fleetboard_control::agent::{AgentConfig, HubAccess, run, token};
use fleetboard_control::crd::peer::Transport;
use ipnet::IpNet;

use crate::common::{LocalArgs, init_tracing, runtime, shutdown_signal};

/// Tunnel transport (flag value).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TransportArg {
    /// WireGuard over UDP.
    Wg,
    /// QUIC datagrams.
    Quic,
}

/// `--hub-token`'s value: shown redacted by `Debug`.
#[derive(Clone)]
struct InlineToken(String);

impl std::fmt::Debug for InlineToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for InlineToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(InlineToken(s.to_string()))
    }
}

/// `fleetboard agent` flags (every flag also from `FLEETBOARD_<FLAG>`).
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Member namespace holding the keys and the gateway Lease.
    #[arg(
        long,
        env = "FLEETBOARD_NAMESPACE",
        default_value = "fleetboard-system"
    )]
    namespace: String,
    /// This cluster's id (its Peer's name in the hub; a DNS label).
    #[arg(long, env = "FLEETBOARD_CLUSTER_ID")]
    cluster_id: String,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This node's underlay address (inner tunnels, and the default gateway endpoint).
    #[arg(long, env = "FLEETBOARD_NODE_IP")]
    node_ip: IpAddr,
    /// Public address (host or IP) announced when this node is the gateway (default: --node-ip).
    #[arg(long, env = "FLEETBOARD_ENDPOINT")]
    endpoint: Option<String>,
    /// WireGuard UDP port (QUIC listens on the next one).
    #[arg(long, env = "FLEETBOARD_LISTEN_PORT", default_value_t = 31820)]
    listen_port: u16,
    /// Transport towards the hub and other members.
    #[arg(long, env = "FLEETBOARD_TRANSPORT", value_enum, default_value = "wg")]
    transport: TransportArg,
    /// Other members can reach this cluster's gateway directly (direct tunnels between public members).
    #[arg(long, env = "FLEETBOARD_PUBLIC")]
    public: bool,
    /// Extra CIDR the cluster announces (repeatable).
    #[arg(long = "cidr", env = "FLEETBOARD_CIDR", value_delimiter = ',')]
    cidrs: Vec<IpNet>,
    /// Prefix length of each node's sub-block of the cluster block.
    #[arg(long, env = "FLEETBOARD_NODE_BLOCK_PREFIX", default_value_t = 24)]
    node_block_prefix: u8,
    /// Hub apiserver URL (with --hub-token-secret or --hub-token).
    #[arg(long, env = "FLEETBOARD_HUB_URL")]
    hub_url: Option<String>,
    /// The member's hub token itself (what `kubectl peers join` prints), never renewed: for
    /// processes and tests (instead of --hub-token-secret).
    #[arg(long, env = "FLEETBOARD_HUB_TOKEN", hide_env_values = true)]
    hub_token: Option<InlineToken>,
    /// Secret of --namespace whose key `token` holds the member's hub token: every agent
    /// follows it, the gateway renews it before it expires (instead of --hub-token).
    #[arg(long, env = "FLEETBOARD_HUB_TOKEN_SECRET")]
    hub_token_secret: Option<String>,
    /// Lifetime in seconds of the tokens the gateway requests when it renews the hub token
    /// (600 at least).
    #[arg(
        long,
        env = "FLEETBOARD_HUB_TOKEN_LIFETIME",
        default_value_t = token::DEFAULT_TOKEN_LIFETIME.as_secs()
    )]
    hub_token_lifetime: u64,
    /// For tests: renew the hub token once it is this many seconds old instead of at half
    /// its life.
    #[arg(long, env = "FLEETBOARD_HUB_TOKEN_RENEW_AFTER")]
    hub_token_renew_after: Option<u64>,
    /// CA certificate (PEM) of the hub apiserver.
    #[arg(long, env = "FLEETBOARD_HUB_CA_FILE")]
    hub_ca_file: Option<PathBuf>,
    /// Kubeconfig for the hub (instead of --hub-url and its token).
    #[arg(long, env = "FLEETBOARD_HUB_KUBECONFIG")]
    hub_kubeconfig: Option<PathBuf>,
    /// Shared namespace in the hub.
    #[arg(
        long,
        env = "FLEETBOARD_HUB_NAMESPACE",
        default_value = "fleetboard-system"
    )]
    hub_namespace: String,
    #[command(flatten)]
    local: LocalArgs,
    /// Seconds a gateway Lease holds without renewal (a dead gateway is replaced after this).
    #[arg(long, env = "FLEETBOARD_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between gateway Lease renewals.
    #[arg(long, env = "FLEETBOARD_RENEW_INTERVAL", default_value_t = 5)]
    renew_interval: u64,
    /// Do not run the multi-cluster-service controllers nor program service VIPs.
    #[arg(long, env = "FLEETBOARD_NO_MCS")]
    no_mcs: bool,
    /// Block of this cluster's ClusterSetIPs (repeatable: one IPv4 and one IPv6 at most; the
    /// hub must reserve it with `--reserved-cidr`).
    #[arg(
        long = "service-cidr",
        env = "FLEETBOARD_SERVICE_CIDR",
        value_delimiter = ',',
        default_value = "100.127.0.0/16"
    )]
    service_cidr: Vec<IpNet>,
}

impl AgentArgs {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let hub = HubAccess::from_flags(
            self.hub_url,
            self.hub_token.map(|t| t.0),
            self.hub_token_secret,
            self.hub_ca_file,
            self.hub_kubeconfig,
        )?;
        Ok(AgentConfig {
            namespace: self.namespace,
            cluster_id: self.cluster_id,
            node_name: self.node_name,
            node_ip: self.node_ip,
            endpoint: self.endpoint,
            listen_port: self.listen_port,
            transport: match self.transport {
                TransportArg::Wg => Transport::Wg,
                TransportArg::Quic => Transport::Quic,
            },
            public: self.public,
            cidrs: self.cidrs,
            node_block_prefix: self.node_block_prefix,
            hub,
            hub_namespace: self.hub_namespace,
            hub_token_lifetime: Duration::from_secs(self.hub_token_lifetime),
            hub_token_renew_after: self.hub_token_renew_after.map(Duration::from_secs),
            tun_name: self.local.tun_name,
            state_dir: self.local.state_dir,
            metrics_address: self.local.metrics_address,
            kubeconfig: self.local.kubeconfig,
            lease_duration: Duration::from_secs(self.lease_duration),
            renew_interval: Duration::from_secs(self.renew_interval),
            mcs: !self.no_mcs,
            service_cidrs: self.service_cidr,
        })
    }
}

/// Entry point of the subcommand.
pub fn main(args: AgentArgs) -> anyhow::Result<()> {
    init_tracing("info");
    let config = args.into_config()?;
    runtime()?.block_on(run(config, shutdown_signal()))?;
    Ok(())
}
