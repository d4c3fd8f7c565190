//! `fleetboard hub`: leader-elected replicas; the leader runs the hub dataplane, publishes the
//! hub's `Peer`, allocates every member a block of each tunnel CIDR (persisted in the Peer's
//! status), serves every valid member in its dataplane and keeps the Peer status live.
//!
//! Every replica watches the Peers (a warm cache); only the leader writes. One reconcile pass
//! ([`Leader::pass`]) observes (cache + dataplane status), plans ([`plan::plan`], pure),
//! writes what changed (status subresource, merge patch), then applies the dataplane config.
//! A pass runs on every Peer event and every [`PASS_EVERY`] (the status refresh).
//!
//! Here the configuration and the replica's loop (election, standby, terms); the leader's
//! term in `reconcile`.

pub mod failover;
pub mod plan;
mod reconcile;
pub mod role;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::crd::peer::{Peer, Transport};
use crate::embedded::admin_socket;
use crate::fence::{Fence, fenced_client};
use crate::health::Health;
use crate::ipam::BlockAllocator;
use crate::leader::{LeaderElection, Leadership};
use reconcile::Leader;
use role::{PodRole, Role};

/// Field manager of everything the hub writes.
pub const FIELD_MANAGER: &str = "fleetboard.io/hub";
/// Default Lease name.
pub const LEASE_NAME: &str = "fleetboard-hub";
/// Default keys Secret name.
pub const KEYS_SECRET: &str = "fleetboard-hub-keys";
/// A reconcile pass runs at least this often: it refreshes `Connected` from the dataplane.
pub const PASS_EVERY: Duration = Duration::from_secs(2);
/// Retry delay after a failure to load keys or start the dataplane.
const RETRY: Duration = Duration::from_secs(2);
/// `/ready` of a replica that is not (yet) leading, without `--label-pod`: live, not ready,
/// so that a Service selecting every replica only sends members to the leader.
const STANDBY: &str = "standby: not leading (only the leader serves the tunnel)";
/// `/ready` of a standby replica with `--label-pod`: ready (the Service selects the leader by
/// its Pod label, see [`role`]), so rolling updates of the replicas proceed.
const STANDBY_LABELLED: &str =
    "standby: ready to take over (the Service selects the leader's pod by label)";
/// `/ready` of the leader until its dataplane serves the tunnel.
const LEADER_STARTING: &str = "leader: starting the tunnel";
/// `/ready` of the leader while it serves the tunnel.
const LEADER_SERVING: &str = "leader: serving the tunnel";
/// `/ready` of a leader that cannot renew its Lease because the hub API does not answer:
/// still ready (the Service must keep sending members here), nothing written meanwhile.
const LEADER_API_UNREACHABLE: &str = "leader: hub API unreachable, serving the tunnel on the last known state (no writes until the Lease is renewed)";
/// Resolved endpoint names are kept this long.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Settings of `fleetboard hub` (one per replica; the CLI fills it).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Shared namespace of the Peers, the Lease and the keys Secret.
    pub namespace: String,
    /// The hub's cluster id (its Peer's name).
    pub cluster_id: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Tunnel CIDRs (v4 and/or v6) blocks are allocated from.
    pub tunnel_cidrs: Vec<IpNet>,
    /// Ranges never handed out as a cluster block (`--reserved-cidr`; default the MCS
    /// ClusterSetIP block 100.127.0.0/16).
    pub reserved_cidrs: Vec<IpNet>,
    /// Block prefix length for IPv4 pools.
    pub block_prefix: u8,
    /// Block prefix length for IPv6 pools.
    pub block_prefix_v6: u8,
    /// Public endpoint (host name or address) published in the hub's Peer.
    pub endpoint: Option<String>,
    /// WireGuard UDP port (QUIC on the next port).
    pub listen_port: u16,
    /// Port published in the hub's Peer (members dial it, QUIC on the next one): a NodePort
    /// or NAT in front of the listener; `None` publishes `listen_port`.
    pub advertise_port: Option<u16>,
    /// The hub's default transport.
    pub transport: Transport,
    /// TUN device name.
    pub tun_name: String,
    /// State folder (admin socket, QUIC key files).
    pub state_dir: PathBuf,
    /// `/metrics` `/live` `/ready` address, served by every replica from its start
    /// ([`crate::health`]): live always, ready while leading with the dataplane up.
    pub metrics_address: Option<SocketAddr>,
    /// Lease name.
    pub lease_name: String,
    /// Keys Secret name.
    pub keys_secret: String,
    /// Lease duration (a standby takes over this long after the leader's last renewal).
    pub lease_duration: Duration,
    /// Lease renewal interval.
    pub renew_interval: Duration,
    /// This replica's own Pod (in `namespace`), labelled with its role
    /// ([`role::ROLE_LABEL`]) so that the Service selects the leader; a standby is then
    /// ready. `None`: no label, and only the leader is ready.
    pub label_pod: Option<String>,
}

/// Why the hub cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A flag is wrong (the message names it).
    #[error("{0}")]
    Config(String),
    /// Leader election failed.
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
    /// The health endpoint could not be bound.
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
}

impl HubConfig {
    /// One block allocator per tunnel CIDR (checks `--tunnel-cidr` and the block prefixes).
    pub fn pools(&self) -> Result<Vec<BlockAllocator>, HubError> {
        if self.tunnel_cidrs.is_empty() {
            return Err(HubError::Config(
                "--tunnel-cidr: at least one is required".into(),
            ));
        }
        let mut out: Vec<BlockAllocator> = Vec::new();
        for c in &self.tunnel_cidrs {
            let (flag, len) = match c {
                IpNet::V4(_) => ("--block-prefix", self.block_prefix),
                IpNet::V6(_) => ("--block-prefix-v6", self.block_prefix_v6),
            };
            if let Some(o) = out
                .iter()
                .find(|o| o.pool().contains(&c.network()) || c.contains(&o.pool().network()))
            {
                return Err(HubError::Config(format!(
                    "--tunnel-cidr {c} overlaps {}",
                    o.pool()
                )));
            }
            if let Some(r) = self.reserved_cidrs.iter().find(|r| r.contains(c)) {
                return Err(HubError::Config(format!(
                    "--reserved-cidr {r} covers the whole --tunnel-cidr {c}"
                )));
            }
            let a = BlockAllocator::new(*c, len)
                .map_err(|e| HubError::Config(format!("{flag}: {e}")))?;
            out.push(a);
        }
        if self.listen_port == 0 || self.listen_port == u16::MAX {
            return Err(HubError::Config(
                "--listen-port: must be 1..=65534 (QUIC listens on the next port)".into(),
            ));
        }
        Ok(out)
    }
}

/// Runs a hub replica until `shutdown`: elects, leads (or stands by), releases the Lease.
pub async fn run(
    config: HubConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let pools = config.pools()?;
    let mut role = config
        .label_pod
        .as_deref()
        .map(|pod| PodRole::new(client.clone(), &config.namespace, pod));
    let standby = match role {
        Some(_) => (true, STANDBY_LABELLED),
        None => (false, STANDBY),
    };
    let health = Health::new(STANDBY);
    if let Some(addr) = config.metrics_address {
        crate::health::start(
            "--metrics-address",
            addr,
            health.clone(),
            Some(admin_socket(&config.state_dir)),
        )
        .await?;
    }
    let (lead_tx, mut lead_rx) = watch::channel(Leadership::Following);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (dead_tx, dead_rx) = watch::channel(None::<String>);
    // The leader writes Peers only through a client fenced by the Lease: a leader frozen
    // past its renew deadline cannot write once it runs again ([`crate::fence`]).
    let fence = Fence::new();
    let fenced = fenced_client(
        client.clone(),
        fence.clone(),
        config.lease_duration,
        &config.identity,
    );
    let election = LeaderElection {
        namespace: config.namespace.clone(),
        name: config.lease_name.clone(),
        identity: config.identity.clone(),
        lease_duration: config.lease_duration,
        renew_interval: config.renew_interval,
        fence,
        // Named by most members' probes (see failover): taken at once, not at Lease expiry.
        dead_holder: Some(dead_rx),
    };
    let elect = tokio::spawn(election.run(client.clone(), lead_tx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    let api: Api<Peer> = Api::namespaced(fenced, &config.namespace);
    let changed = Arc::new(Notify::new());
    // Every change wakes the leader's pass and re-counts the members' reports of a silent
    // leader (see failover).
    let reader = {
        let changed = changed.clone();
        let hub_id = config.cluster_id.clone();
        crate::watch::reflect(
            api.clone(),
            watcher::Config::default(),
            "hub API (peer watch)",
            move |peers| {
                // The election (the receiver) ended: so did this replica.
                if dead_tx.is_closed() {
                    return false;
                }
                changed.notify_one();
                let state = peers.state();
                let silent =
                    failover::silent_leader(state.iter().map(|p| &**p), &hub_id, Timestamp::now());
                dead_tx.send_if_modified(|cur| {
                    if *cur == silent {
                        return false;
                    }
                    if let Some(l) = &silent {
                        tracing::warn!(leader = %l, "most connected members report the hub leader's data path silent");
                    }
                    *cur = silent;
                    true
                });
                true
            },
        )
    };

    tracing::info!(identity = %config.identity, namespace = %config.namespace, "hub replica up; standing by for the lease");
    if let Some(r) = role.as_mut() {
        r.set(Role::Standby).await;
    }
    health.set(standby.0, standby.1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = lead_rx.wait_for(|l| l.is_leading()) => if r.is_err() { break },
        }
        let mut leader = Leader::new(
            &config,
            pools.clone(),
            api.clone(),
            reader.clone(),
            changed.clone(),
            health.clone(),
            role.take(),
            lead_rx.clone(),
        );
        // Only another holder ends the term: a leader that cannot renew (the hub API does not
        // answer) keeps the tunnel up and stops writing ([`Leadership::Unsure`]).
        let lost = async {
            let _ = lead_rx.wait_for(|l| *l == Leadership::Following).await;
        };
        let mut stopping = false;
        tokio::select! {
            _ = &mut shutdown => stopping = true,
            _ = lost => tracing::warn!("another replica holds the Lease: stopping the hub dataplane"),
            _ = leader.lead() => {}
        }
        leader.stop_dataplane().await;
        role = leader.role.take();
        if let Some(r) = role.as_mut() {
            r.set(Role::Standby).await;
        }
        health.set(standby.0, standby.1);
        if stopping {
            break;
        }
    }
    let _ = stop_tx.send(true);
    match elect.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "leader election task"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tunnel: &str, reserved: &str) -> HubConfig {
        HubConfig {
            namespace: "fleetboard-system".into(),
            cluster_id: "hub".into(),
            identity: "hub-0".into(),
            tunnel_cidrs: vec![tunnel.parse().unwrap()],
            reserved_cidrs: vec![reserved.parse().unwrap()],
            block_prefix: 16,
            block_prefix_v6: 64,
            endpoint: None,
            listen_port: 31820,
            advertise_port: None,
            transport: Transport::Wg,
            tun_name: "fb0".into(),
            state_dir: "/run/fleetboard".into(),
            metrics_address: None,
            lease_name: LEASE_NAME.into(),
            keys_secret: KEYS_SECRET.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(2),
            label_pod: None,
        }
    }

    #[test]
    fn a_reserved_cidr_may_not_cover_a_whole_tunnel_cidr() {
        assert_eq!(
            config("100.64.0.0/10", "100.127.0.0/16")
                .pools()
                .unwrap()
                .len(),
            1
        );
        let e = config("100.127.0.0/16", "100.64.0.0/10")
            .pools()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--reserved-cidr 100.64.0.0/10"), "{e}");
    }
}
