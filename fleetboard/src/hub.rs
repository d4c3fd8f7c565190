//! `fleetboard hub`: the hub controller (leader-elected replicas; the leader runs the hub
//! dataplane). Every flag can also come from `FLEETBOARD_<FLAG>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fleetboard_control::crd::peer::Transport;
use fleetboard_control::hub::{self, HubConfig};
use ipnet::IpNet;

use crate::common::{LocalArgs, init_tracing, runtime, shutdown_signal};

/// Tunnel transport flag values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    /// WireGuard.
    Wg,
    /// QUIC datagrams.
    Quic,
}

/// `fleetboard hub` flags.
#[derive(Args, Debug)]
#[command(
    mut_arg("state_dir", |a| a.help("State folder: admin socket (`dataplane.sock`), QUIC key files")),
    mut_arg("metrics_address", |a| a.help("Address of `/metrics`, `/live`, `/ready` (every replica from its start: live always, ready while leading)")),
    mut_arg("kubeconfig", |a| a.help("Kubeconfig of the hub cluster (default: in-cluster, else $KUBECONFIG / ~/.kube/config)")),
)]
pub struct HubArgs {
    /// Shared namespace of the Peers, the Lease and the keys Secret.
    #[arg(
        long,
        env = "FLEETBOARD_NAMESPACE",
        default_value = "fleetboard-system"
    )]
    namespace: String,
    /// The hub's cluster id (name of its Peer).
    #[arg(long, env = "FLEETBOARD_CLUSTER_ID", default_value = "hub")]
    cluster_id: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "FLEETBOARD_IDENTITY")]
    identity: Option<String>,
    /// Tunnel CIDR blocks are allocated from (repeatable: IPv4 and IPv6).
    #[arg(
        long = "tunnel-cidr",
        env = "FLEETBOARD_TUNNEL_CIDR",
        value_delimiter = ',',
        default_value = "100.64.0.0/10"
    )]
    tunnel_cidr: Vec<IpNet>,
    /// Range never handed out as a cluster block (repeatable; default: the MCS ClusterSetIP
    /// block every member allocates service VIPs from).
    #[arg(
        long = "reserved-cidr",
        env = "FLEETBOARD_RESERVED_CIDR",
        value_delimiter = ',',
        default_value = "100.127.0.0/16"
    )]
    reserved_cidr: Vec<IpNet>,
    /// Prefix length of the block each cluster gets from an IPv4 tunnel CIDR.
    #[arg(long, env = "FLEETBOARD_BLOCK_PREFIX", default_value_t = 16)]
    block_prefix: u8,
    /// Prefix length of the block each cluster gets from an IPv6 tunnel CIDR.
    #[arg(long, env = "FLEETBOARD_BLOCK_PREFIX_V6", default_value_t = 64)]
    block_prefix_v6: u8,
    /// Public host name or address members reach the hub at (published in the hub's Peer).
    #[arg(long, env = "FLEETBOARD_ENDPOINT")]
    endpoint: Option<String>,
    /// WireGuard UDP port (QUIC listens on the next port).
    #[arg(long, env = "FLEETBOARD_LISTEN_PORT", default_value_t = 31820)]
    listen_port: u16,
    /// Port published in the hub's Peer, the one members dial (QUIC: the next one); default
    /// --listen-port. Set it when a NAT or a NodePort Service maps another port to the
    /// listener.
    #[arg(long, env = "FLEETBOARD_ADVERTISE_PORT")]
    advertise_port: Option<u16>,
    /// The hub's default transport (each member uses its own Peer's transport).
    #[arg(long, env = "FLEETBOARD_TRANSPORT", value_enum, default_value = "wg")]
    transport: TransportArg,
    #[command(flatten)]
    local: LocalArgs,
    /// Name of the Lease the replicas elect a leader with.
    #[arg(long, env = "FLEETBOARD_LEASE_NAME", default_value = hub::LEASE_NAME)]
    lease_name: String,
    /// Name of the Secret holding the hub's WireGuard key and QUIC identity.
    #[arg(long, env = "FLEETBOARD_KEYS_SECRET", default_value = hub::KEYS_SECRET)]
    keys_secret: String,
    /// Seconds a Lease holds without renewal (a standby takes over after that).
    #[arg(long, env = "FLEETBOARD_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between Lease renewals (below two thirds of the lease duration).
    #[arg(long, env = "FLEETBOARD_RENEW_INTERVAL", default_value_t = 2)]
    renew_interval: u64,
    /// This replica's own Pod (in --namespace): labelled fleetboard.io/hub-role=leader or
    /// standby, so that a Service selecting the label reaches the leader only; standby
    /// replicas are then ready too (the chart sets it to the Pod's name).
    #[arg(long, env = "FLEETBOARD_LABEL_POD")]
    label_pod: Option<String>,
}

fn identity(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(i) = flag.filter(|s| !s.is_empty()) {
        return Ok(i);
    }
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return Ok(p);
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("--identity: not given, no $POD_NAME, and no host name")?;
    Ok(h.trim().to_string())
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig found (--kubeconfig)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Entry point of `fleetboard hub`.
pub fn main(args: HubArgs) -> anyhow::Result<()> {
    init_tracing("info");
    let config = HubConfig {
        namespace: args.namespace,
        cluster_id: args.cluster_id,
        identity: identity(args.identity)?,
        tunnel_cidrs: args.tunnel_cidr,
        reserved_cidrs: args.reserved_cidr,
        block_prefix: args.block_prefix,
        block_prefix_v6: args.block_prefix_v6,
        endpoint: args.endpoint,
        listen_port: args.listen_port,
        advertise_port: args.advertise_port,
        transport: match args.transport {
            TransportArg::Wg => Transport::Wg,
            TransportArg::Quic => Transport::Quic,
        },
        tun_name: args.local.tun_name,
        state_dir: args.local.state_dir,
        metrics_address: args.local.metrics_address,
        lease_name: args.lease_name,
        keys_secret: args.keys_secret,
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_interval: Duration::from_secs(args.renew_interval),
        label_pod: args.label_pod.filter(|p| !p.is_empty()),
    };
    // Bad flags exit before anything is bound or written.
    config.pools()?;
    runtime()?.block_on(async move {
        let client = client(args.local.kubeconfig).await?;
        let shutdown = async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        };
        hub::run(config, client, shutdown).await?;
        Ok(())
    })
}
