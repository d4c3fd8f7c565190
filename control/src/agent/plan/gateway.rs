//! The gateway's dataplane configuration: the hub, direct peers, members reached end to end
//! through the hub, and one inner peer per other node of the cluster.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use fleetboard_dataplane::core::config::{DataplaneConfig, PeerConfig, Transport as DpTransport};
use fleetboard_dataplane::core::{PublicKey, SecretKey};
use ipnet::IpNet;

use super::{
    KEEPALIVE_SECS, LocalSettings, NodeBlock, NodeInfo, PeerInfo, QuicFiles, base_config,
    dp_transport, hub_cidrs, peer_endpoint, push_peer, tun_address,
};
use crate::agent::failover;
use crate::crd::peer::Transport;

/// Inputs of [`gateway_config`].
#[derive(Debug, Clone)]
pub struct GatewayInputs<'a> {
    /// Node-local settings.
    pub local: &'a LocalSettings,
    /// The cluster's private key.
    pub cluster_key: SecretKey,
    /// The cluster QUIC identity files.
    pub quic: Option<QuicFiles>,
    /// Every Peer in the hub.
    pub peers: &'a [PeerInfo],
    /// Every node with its planned block.
    pub nodes: &'a [NodeInfo],
    /// The planned blocks.
    pub blocks: &'a [NodeBlock],
    /// Resolved endpoint host names.
    pub resolve: &'a HashMap<String, IpAddr>,
}

/// The gateway's dataplane: the hub, direct peers (both sides public), and one inner peer per
/// other node. `None` until this node has a block and the hub has published its Peer.
pub fn gateway_config(i: &GatewayInputs<'_>) -> Option<DataplaneConfig> {
    let local = i.local;
    let tunnel = hub_cidrs(i.peers);
    let hub = i.peers.iter().find(|p| p.spec.is_hub)?;
    let own_block = i.blocks.iter().find(|b| b.node == local.node_name)?.cidr;
    let mut c = base_config(
        local,
        i.cluster_key.clone(),
        tun_address(own_block, &tunnel),
    );
    // Five probes a second to the hub (and the other peers): a dead hub leader is reported
    // within a second (failover::watch_hub), and the dataplane handshakes again with a peer
    // dead that long (a standby hub replica behind the same load balancer).
    failover::fast_probes(&mut c);
    if local.transport == Transport::Quic {
        let q = i.quic.as_ref()?;
        c.quic.certificate = Some(q.certificate.clone());
        c.quic.private_key = Some(q.private_key.clone());
    }
    let own_key = i.cluster_key.public_key();
    let mut keys = HashSet::from([own_key]);
    let mut cidrs = HashSet::new();
    let hub_key = hub.spec.public_key.as_deref()?;
    let hub_key = PublicKey::from_base64(hub_key).ok()?;
    push_peer(
        &mut c,
        &mut keys,
        &mut cidrs,
        PeerConfig {
            public_key: hub_key,
            name: Some(hub.name.clone()),
            endpoint: peer_endpoint(&hub.spec, i.resolve, local.transport),
            allowed_ips: tunnel.clone(),
            persistent_keepalive: Some(KEEPALIVE_SECS),
            transport: Some(dp_transport(local.transport)),
            fingerprint: hub.spec.cert_fingerprint.clone(),
            via: None,
            // The hub answers probes on its tunnel address, the first host of its block.
            probe_address: hub
                .allocated
                .iter()
                .find(|b| b.addr().is_ipv4())
                .map(|b| tun_address(*b, &tunnel).addr()),
        },
    );
    for n in i.nodes {
        if n.name == local.node_name {
            continue;
        }
        let (Some(key), Some(ip)) = (n.public_key, n.tunnel_ip) else {
            continue;
        };
        let Some(block) = i.blocks.iter().find(|b| b.node == n.name) else {
            continue;
        };
        push_peer(
            &mut c,
            &mut keys,
            &mut cidrs,
            PeerConfig {
                public_key: key,
                name: Some(format!("node-{}", n.name)),
                endpoint: Some(SocketAddr::new(ip, local.listen_port)),
                allowed_ips: vec![block.cidr],
                persistent_keepalive: Some(KEEPALIVE_SECS),
                transport: Some(DpTransport::Wg),
                fingerprint: None,
                via: None,
                probe_address: Some(tun_address(block.cidr, &tunnel).addr()),
            },
        );
    }
    c.local = vec![own_block];
    if local.is_public {
        for p in i.peers {
            if !p.spec.is_public || p.spec.transport != local.transport {
                continue;
            }
            let Some(key) = other_member_key(p, &local.cluster_id) else {
                continue;
            };
            if local.transport == Transport::Quic && p.spec.cert_fingerprint.is_none() {
                continue;
            }
            let Some(endpoint) = peer_endpoint(&p.spec, i.resolve, local.transport) else {
                continue;
            };
            push_peer(
                &mut c,
                &mut keys,
                &mut cidrs,
                PeerConfig {
                    public_key: key,
                    name: Some(p.name.clone()),
                    endpoint: Some(endpoint),
                    allowed_ips: p.allocated.clone(),
                    persistent_keepalive: Some(KEEPALIVE_SECS),
                    transport: Some(dp_transport(local.transport)),
                    fingerprint: p.spec.cert_fingerprint.clone(),
                    via: None,
                    // Its gateway's tunnel address is not published: learned from its probes.
                    probe_address: None,
                },
            );
        }
    }
    if local.transport == Transport::Wg {
        push_relayed_members(
            &mut c,
            &mut keys,
            &mut cidrs,
            i.peers,
            &local.cluster_id,
            hub_key,
        );
    }
    Some(c)
}

/// The public key of `p` when it is another member with a block (not the hub, not this
/// cluster, not yet allocated, or without a valid key: `None`).
fn other_member_key(p: &PeerInfo, own_cluster: &str) -> Option<PublicKey> {
    if p.spec.is_hub || p.name == own_cluster || p.allocated.is_empty() {
        return None;
    }
    PublicKey::from_base64(p.spec.public_key.as_deref()?).ok()
}

/// Every other wg member that is not a direct peer, reached end to end through the hub: this
/// gateway keeps its own WireGuard session with the member's gateway, and the hub only
/// forwards the ciphertext (`PeerConfig::via`, see `fleetboard_dataplane::core::relay`).
fn push_relayed_members(
    c: &mut DataplaneConfig,
    keys: &mut HashSet<PublicKey>,
    cidrs: &mut HashSet<IpNet>,
    peers: &[PeerInfo],
    own_cluster: &str,
    hub_key: PublicKey,
) {
    for p in peers {
        if p.spec.transport != Transport::Wg {
            continue;
        }
        let Some(key) = other_member_key(p, own_cluster) else {
            continue;
        };
        if keys.contains(&key) {
            continue; // a direct peer already
        }
        push_peer(
            c,
            keys,
            cidrs,
            PeerConfig {
                public_key: key,
                name: Some(p.name.clone()),
                endpoint: None,
                allowed_ips: p.allocated.clone(),
                persistent_keepalive: Some(KEEPALIVE_SECS),
                transport: Some(DpTransport::Wg),
                fingerprint: None,
                via: Some(hub_key),
                probe_address: None,
            },
        );
    }
}
