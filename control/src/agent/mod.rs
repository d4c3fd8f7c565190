//! `fleetboard agent`: the member side of the control plane, one per node.
//!
//! Every agent publishes its Node's inner-tunnel key and underlay address (annotations
//! `fleetboard.io/public-key`, `fleetboard.io/tunnel-ip`) and runs for the Lease
//! `fleetboard-gateway`. The winner is the **gateway**: it registers the cluster's `Peer` in
//! the hub, learns the block the hub allocates, gives every Node a sub-block
//! (`fleetboard.io/node-cidr`), and runs the dataplane with the cluster keys (the hub, direct
//! peers when both sides are public, one inner tunnel per other node). Every other node runs
//! a dataplane with its own key and one peer, the gateway. Nodes, the Lease and the hub's
//! Peers are watched; any change re-plans ([`plan`]) and re-applies.
//!
//! Multi-cluster services (unless `mcs` is off): the gateway also runs the parallel
//! EndpointSlice controller and the MCS-Syncer ([`crate::mcs`]) while it holds the Lease, and
//! every node's dataplane gets the ClusterSetIPs of the cluster's ServiceImports as `services`.

pub mod failover;
pub mod hub_client;
mod mcs;
pub mod plan;
mod reconcile;
mod saved;
mod startup;
pub mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use hub_client::{HubAccess, HubError, TokenSource};
pub use reconcile::run;

use crate::crd::peer::Transport;

/// Node annotation: the node's sub-block of the cluster block (written by the gateway).
pub const NODE_CIDR_ANNOTATION: &str = "fleetboard.io/node-cidr";
/// Node annotation: the hub's IPv4 tunnel CIDR, from the hub's Peer (written by each node's
/// agent on its own Node): the NRI plugin routes it through the pods' `eth-fleet`, so members
/// always agree with the hub, whatever `--tunnel-cidr` the hub was given.
pub const TUNNEL_CIDR_ANNOTATION: &str = "fleetboard.io/tunnel-cidr";
/// Node annotation: the node's inner-tunnel public key (written by its agent).
pub const PUBLIC_KEY_ANNOTATION: &str = "fleetboard.io/public-key";
/// Node annotation: the node's underlay address (written by its agent).
pub const TUNNEL_IP_ANNOTATION: &str = "fleetboard.io/tunnel-ip";
/// Secret with the cluster keys (the same whichever node is gateway).
pub const CLUSTER_KEYS_SECRET: &str = "fleetboard-cluster-keys";
/// Lease electing the gateway.
pub const GATEWAY_LEASE: &str = "fleetboard-gateway";
/// Field manager of the agent's server-side applies.
pub const FIELD_MANAGER: &str = "fleetboard.io/agent";

/// Everything `fleetboard agent` is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Member namespace (keys, Lease).
    pub namespace: String,
    /// This cluster's id (its Peer's name in the hub).
    pub cluster_id: String,
    /// This node's name.
    pub node_name: String,
    /// This node's underlay address (its `tunnel-ip`).
    pub node_ip: IpAddr,
    /// Public address of the gateway (default: `node_ip`).
    pub endpoint: Option<String>,
    /// WireGuard UDP port (QUIC listens on the next one).
    pub listen_port: u16,
    /// Transport towards the hub and other members.
    pub transport: Transport,
    /// True when other members can reach this cluster's gateway directly.
    pub public: bool,
    /// Extra CIDRs the cluster announces.
    pub cidrs: Vec<IpNet>,
    /// Prefix length of a node's sub-block.
    pub node_block_prefix: u8,
    /// How to reach the hub.
    pub hub: HubAccess,
    /// Shared namespace in the hub.
    pub hub_namespace: String,
    /// Lifetime the gateway asks for when it renews the hub token (`--hub-token-lifetime`;
    /// only with [`TokenSource::Secret`]).
    pub hub_token_lifetime: Duration,
    /// Renew once the hub token is this old instead of at half its life
    /// (`--hub-token-renew-after`, for tests).
    pub hub_token_renew_after: Option<Duration>,
    /// TUN device name.
    pub tun_name: String,
    /// Folder for the admin socket, the QUIC identity files, the node keys, the hub token
    /// file and the saved dataplane config (`dataplane.json`).
    pub state_dir: PathBuf,
    /// `/metrics`, `/live`, `/ready`, served from the agent's start ([`crate::health`]): live
    /// always, ready once joined with the node's dataplane up.
    pub metrics_address: Option<SocketAddr>,
    /// Member kubeconfig (none: in-cluster or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Gateway Lease duration (a dead gateway is replaced after this).
    pub lease_duration: Duration,
    /// Gateway Lease renew interval.
    pub renew_interval: Duration,
    /// Run the MCS controllers on the gateway and give dataplanes the service VIPs.
    pub mcs: bool,
    /// Blocks of this cluster's ClusterSetIPs (at most one per IP family).
    pub service_cidrs: Vec<IpNet>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is wrong.
    #[error("{flag}: {problem}")]
    Config {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The hub cannot be used.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The member apiserver cannot be used.
    #[error("member cluster API ({what}): {source}")]
    Member {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeysError),
    /// The gateway election failed.
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
    /// The health endpoint could not be bound.
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
    /// The state dir is not usable.
    #[error("--state-dir {path}: {source}")]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl AgentConfig {
    /// Checks the flags that can be checked without any I/O.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |flag, problem: String| Err(AgentError::Config { flag, problem });
        if self.cluster_id.is_empty() {
            return bad("--cluster-id", "must not be empty".into());
        }
        if self.node_name.is_empty() {
            return bad("--node-name", "must not be empty (or set NODE_NAME)".into());
        }
        if self.node_block_prefix == 0 || self.node_block_prefix > 32 {
            return bad(
                "--node-block-prefix",
                format!("{} is not an IPv4 prefix length", self.node_block_prefix),
            );
        }
        if self.listen_port == 0 || self.listen_port == u16::MAX {
            return bad(
                "--listen-port",
                "must be 1..=65534 (QUIC uses the next port)".into(),
            );
        }
        if self.tun_name.is_empty() || self.tun_name.len() > 15 {
            return bad("--tun-name", "must be 1 to 15 bytes".into());
        }
        if self.hub_token_lifetime < crate::membership::MIN_TOKEN_LIFETIME {
            return bad(
                "--hub-token-lifetime",
                format!(
                    "{} s is below the API server's minimum token lifetime ({} s)",
                    self.hub_token_lifetime.as_secs(),
                    crate::membership::MIN_TOKEN_LIFETIME.as_secs()
                ),
            );
        }
        if self.hub_token_renew_after.is_some_and(|d| d.is_zero()) {
            return bad("--hub-token-renew-after", "must be above zero".into());
        }
        if self.renew_interval.is_zero() || self.renew_interval * 3 >= self.lease_duration * 2 {
            return bad(
                "--renew-interval",
                "must be above zero and below two thirds of --lease-duration".into(),
            );
        }
        if self.mcs {
            if self.service_cidrs.is_empty() {
                return bad(
                    "--service-cidr",
                    "at least one is required (or --no-mcs)".into(),
                );
            }
            for (i, c) in self.service_cidrs.iter().enumerate() {
                if self.service_cidrs[..i]
                    .iter()
                    .any(|o| o.addr().is_ipv6() == c.addr().is_ipv6())
                {
                    return bad(
                        "--service-cidr",
                        format!("{c}: at most one block per IP family"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The endpoint announced in the Peer.
    pub fn public_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| self.node_ip.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig {
            namespace: "fleetboard-system".into(),
            cluster_id: "a".into(),
            node_name: "a1".into(),
            node_ip: "198.18.0.11".parse().unwrap(),
            endpoint: None,
            listen_port: 31820,
            transport: Transport::Wg,
            public: false,
            cidrs: Vec::new(),
            node_block_prefix: 24,
            hub: HubAccess::Kubeconfig("/dev/null".into()),
            hub_namespace: "fleetboard-system".into(),
            hub_token_lifetime: token::DEFAULT_TOKEN_LIFETIME,
            hub_token_renew_after: None,
            tun_name: "fb0".into(),
            state_dir: "/run/fleetboard".into(),
            metrics_address: None,
            kubeconfig: None,
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            mcs: true,
            service_cidrs: vec!["100.127.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn service_cidrs_one_per_family_unless_mcs_is_off() {
        config().validate().unwrap();
        let mut c = config();
        c.service_cidrs.push("fd00:127::/112".parse().unwrap());
        c.validate().unwrap();
        c.service_cidrs.push("100.126.0.0/16".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--service-cidr") && e.contains("100.126.0.0/16"),
            "{e}"
        );
        c.service_cidrs.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--service-cidr"), "{e}");
        c.mcs = false;
        c.validate().unwrap();
    }

    #[test]
    fn hub_token_lifetime_is_ten_minutes_at_least() {
        let mut c = config();
        c.hub_token_lifetime = Duration::from_secs(600);
        c.validate().unwrap();
        c.hub_token_lifetime = Duration::from_secs(599);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("--hub-token-lifetime") && e.contains("599"),
            "{e}"
        );
        c.hub_token_lifetime = token::DEFAULT_TOKEN_LIFETIME;
        c.hub_token_renew_after = Some(Duration::from_secs(5));
        c.validate().unwrap();
        c.hub_token_renew_after = Some(Duration::ZERO);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--hub-token-renew-after"), "{e}");
    }

    #[test]
    fn debug_of_the_config_hides_the_token() {
        let mut c = config();
        c.hub = HubAccess::Token {
            url: "https://198.18.0.1:6443".into(),
            token: TokenSource::Inline("eyJhbGciOiJSUzI1NiJ9.secret.sig".into()),
            ca_file: None,
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("eyJ") && !shown.contains("secret.sig"),
            "{shown}"
        );
    }
}
