//! Fast gateway failover from the data path (issue 18 item 2).
//!
//! An ordinary node probes its gateway's tunnel address through the tunnel every
//! [`GATEWAY_PROBE_INTERVAL_MS`] (its dataplane's probes, [`fleetboard_dataplane::core`]).
//! When the gateway answered before and has not answered for [`DEAD_AFTER`], this node's
//! agent names the Lease holder dead to its [`crate::leader::LeaderElection`], which then takes
//! the Lease at once instead of waiting for it to expire (a replace with the Lease's
//! `resourceVersion`: of several nodes that saw the same, one wins, the others re-read and
//! follow). A gateway that was only cut off from this node, not dead, loses the Lease at its
//! next renewal (it reads the new holder) and steps down: its fence closes, so it writes
//! nothing after that; for up to one renew interval both may carry traffic, with the same
//! cluster key, and the hub follows the newest handshake.
//!
//! A node that never got an answer from its gateway (just started, or the gateway changed and
//! the probe window was reset with the new address) names nobody: failover needs evidence
//! that a working gateway stopped.
//!
//! The gateway watches the hub the same way ([`watch_hub`]): when the leading hub replica
//! answered its probes and then went silent for [`DEAD_AFTER`], the gateway names that replica
//! in its Peer's `fleetboard.io/hub-silent` annotation; standby hub replicas act on a majority
//! of such reports ([`crate::hub::failover`]).

use std::path::PathBuf;
use std::time::Duration;

use fleetboard_dataplane::AdminClient;
use fleetboard_dataplane::core::{DataplaneConfig, DataplaneStatus};
use tokio::sync::watch;

/// Probe interval of an ordinary node's dataplane (its one peer is the gateway): five probes
/// a second, so [`DEAD_AFTER`] spans five unanswered ones.
pub const GATEWAY_PROBE_INTERVAL_MS: u32 = 200;
/// How long a gateway that answered before may stay silent before it is named dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(1);
/// The name of the gateway peer in an ordinary node's dataplane config.
pub const GATEWAY_PEER: &str = "gateway";

/// Probe settings of every agent's dataplane: five probes a second, a peer silent for
/// [`DEAD_AFTER`] is dead (its status says so, and a WireGuard peer gets a new handshake).
pub fn fast_probes(c: &mut DataplaneConfig) {
    c.probe.interval_ms = GATEWAY_PROBE_INTERVAL_MS;
    c.probe.dead_after_ms = u32::try_from(DEAD_AFTER.as_millis()).unwrap_or(u32::MAX);
}

/// Whether `status` (an ordinary node's dataplane) says its gateway stopped answering: it
/// answered once, and its last answer is at least `dead_after` old.
pub fn gateway_silent(status: &DataplaneStatus, dead_after: Duration) -> bool {
    last_reply(status, GATEWAY_PEER).is_some_and(|ago| ago >= dead_after)
}

/// How long ago the probes of the peer named `peer` last answered (none: never).
fn last_reply(status: &DataplaneStatus, peer: &str) -> Option<Duration> {
    status
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(peer))
        .and_then(|p| p.probe_last_reply_millis_ago)
        .map(Duration::from_millis)
}

/// The hub as this cluster's gateway sees it: its peer in the dataplane config and the
/// replica that leads it (the hub Peer's `fleetboard.io/hub-leader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubLeader {
    /// Name of the hub's peer in this gateway's dataplane config (the hub's cluster id).
    pub peer: String,
    /// Identity of the leading hub replica.
    pub leader: String,
}

/// Tracks one gateway's evidence about the hub leader, probe status by probe status.
#[derive(Debug, Default)]
pub struct HubSilence {
    /// The leader that answered this gateway's probes last (none: none since we watch).
    answered: Option<String>,
}

impl HubSilence {
    /// The leader to name silent after seeing `last_reply` (how long ago the hub's probes
    /// answered) while `hub` leads: only a leader that answered before and has been silent for
    /// `dead_after` since; a new leader that has not answered yet is not evidence.
    pub fn observe(
        &mut self,
        hub: Option<&HubLeader>,
        last_reply: Option<Duration>,
        dead_after: Duration,
    ) -> Option<String> {
        let Some(hub) = hub else {
            self.answered = None;
            return None;
        };
        let ago = last_reply?;
        if ago < dead_after {
            self.answered = Some(hub.leader.clone());
            return None;
        }
        (self.answered.as_deref() == Some(hub.leader.as_str())).then(|| hub.leader.clone())
    }
}

/// While this node is the gateway (`hub` is set), watches its dataplane (admin `socket`) and
/// publishes on `silent` the hub leader whose probes went silent (none otherwise). Ends when
/// `silent` has no receiver left.
pub async fn watch_hub(
    socket: PathBuf,
    hub: watch::Receiver<Option<HubLeader>>,
    silent: watch::Sender<Option<String>>,
) {
    let admin = AdminClient::new(socket.clone());
    let every = Duration::from_millis(u64::from(GATEWAY_PROBE_INTERVAL_MS));
    let mut evidence = HubSilence::default();
    while !silent.is_closed() {
        let current = hub.borrow().clone();
        let last = match &current {
            Some(h) if socket.exists() => admin
                .status()
                .await
                .ok()
                .and_then(|s| last_reply(&s, &h.peer)),
            _ => None,
        };
        let named = evidence.observe(current.as_ref(), last, DEAD_AFTER);
        silent.send_if_modified(|cur| {
            if *cur == named {
                return false;
            }
            match &named {
                Some(l) => {
                    tracing::warn!(leader = %l, after = ?DEAD_AFTER, "the hub leader's data path does not answer: reporting it in our Peer")
                }
                None => tracing::info!("the hub answers again"),
            }
            *cur = named;
            true
        });
        tokio::time::sleep(every).await;
    }
}

/// Watches this node's dataplane (admin `socket`) while someone else (`holder`) is the
/// gateway, and publishes on `dead` the holder whose probes went silent (none otherwise).
/// Ends when `dead` has no receiver left.
pub async fn watch_gateway(
    socket: PathBuf,
    me: String,
    holder: watch::Receiver<Option<String>>,
    dead: watch::Sender<Option<String>>,
) {
    let admin = AdminClient::new(socket.clone());
    let every = Duration::from_millis(u64::from(GATEWAY_PROBE_INTERVAL_MS));
    while !dead.is_closed() {
        let current = holder.borrow().clone().filter(|h| *h != me);
        let silent = match &current {
            Some(_) if socket.exists() => admin
                .status()
                .await
                .is_ok_and(|s| gateway_silent(&s, DEAD_AFTER)),
            _ => false,
        };
        let named = current.filter(|_| silent);
        dead.send_if_modified(|cur| {
            if *cur == named {
                return false;
            }
            if let Some(h) = &named {
                tracing::warn!(gateway = %h, after = ?DEAD_AFTER, "the gateway's data path does not answer: taking over its Lease");
            }
            *cur = named;
            true
        });
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetboard_dataplane::core::{PeerStatus, SecretKey};

    fn status(name: &str, last_reply: Option<u64>) -> DataplaneStatus {
        let mut peer: PeerStatus = serde_json::from_value(serde_json::json!({
            "public_key": SecretKey::from_random_bytes([7; 32]).public_key(),
            "name": name, "transport": "wg", "endpoint": null, "allowed_ips": [],
            "last_handshake_secs_ago": null, "persistent_keepalive": 5,
            "counters": fleetboard_dataplane::core::PeerCounters::default(),
        }))
        .unwrap_or_else(|e| panic!("peer status: {e}"));
        peer.probe_last_reply_millis_ago = last_reply;
        let drops = fleetboard_dataplane::core::DropCounters::default();
        let mut s: DataplaneStatus = serde_json::from_value(serde_json::json!({
            "public_key": SecretKey::from_random_bytes([8; 32]).public_key(),
            "listen_port": 31820, "interface": "fb0", "peers": [],
            "drops": drops, "routes": 0,
        }))
        .unwrap_or_else(|e| panic!("status: {e}"));
        s.peers.push(peer);
        s
    }

    #[test]
    fn only_a_gateway_that_answered_and_went_silent_is_dead() {
        let d = DEAD_AFTER;
        assert!(gateway_silent(&status(GATEWAY_PEER, Some(1000)), d));
        assert!(gateway_silent(&status(GATEWAY_PEER, Some(5000)), d));
        assert!(!gateway_silent(&status(GATEWAY_PEER, Some(999)), d));
        // Never answered (new node, or the window was reset for a new gateway): not evidence.
        assert!(!gateway_silent(&status(GATEWAY_PEER, None), d));
        // Another peer's silence says nothing about the gateway.
        assert!(!gateway_silent(&status("hub", Some(60_000)), d));
    }

    #[test]
    fn only_a_hub_leader_that_answered_and_went_silent_is_named() {
        let d = DEAD_AFTER;
        let ms = |n| Some(Duration::from_millis(n));
        let leader = |l: &str| HubLeader {
            peer: "hub".into(),
            leader: l.into(),
        };
        let (h0, h1) = (leader("hub-0"), leader("hub-1"));
        let mut e = HubSilence::default();
        // Silent from the start (this gateway just started): no evidence.
        assert_eq!(e.observe(Some(&h0), ms(5000), d), None);
        assert_eq!(e.observe(Some(&h0), None, d), None);
        assert_eq!(e.observe(Some(&h0), ms(200), d), None);
        assert_eq!(e.observe(Some(&h0), ms(999), d), None);
        assert_eq!(e.observe(Some(&h0), ms(1000), d), Some("hub-0".into()));
        // hub-1 took over and has not answered yet: not named.
        assert_eq!(e.observe(Some(&h1), ms(3000), d), None);
        assert_eq!(e.observe(Some(&h1), ms(100), d), None);
        assert_eq!(e.observe(Some(&h1), ms(1500), d), Some("hub-1".into()));
        // No longer the gateway: forgets, and names nobody.
        assert_eq!(e.observe(None, ms(5000), d), None);
        assert_eq!(e.observe(Some(&h1), ms(5000), d), None);
    }
}
