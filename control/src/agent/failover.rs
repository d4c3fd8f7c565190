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

use std::path::PathBuf;
use std::time::Duration;

use fleetboard_dataplane::AdminClient;
use fleetboard_dataplane::core::DataplaneStatus;
use tokio::sync::watch;

/// Probe interval of an ordinary node's dataplane (its one peer is the gateway): five probes
/// a second, so [`DEAD_AFTER`] spans five unanswered ones.
pub const GATEWAY_PROBE_INTERVAL_MS: u32 = 200;
/// How long a gateway that answered before may stay silent before it is named dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(1);
/// The name of the gateway peer in an ordinary node's dataplane config.
pub const GATEWAY_PEER: &str = "gateway";

/// Whether `status` (an ordinary node's dataplane) says its gateway stopped answering: it
/// answered once, and its last answer is at least `dead_after` old.
pub fn gateway_silent(status: &DataplaneStatus, dead_after: Duration) -> bool {
    status
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(GATEWAY_PEER))
        .and_then(|p| p.probe_last_reply_millis_ago)
        .is_some_and(|ms| u128::from(ms) >= dead_after.as_millis())
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
}
