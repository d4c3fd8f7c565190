//! The `Peer` status the hub writes, computed (purely) from its plan and the dataplane's
//! view of the peer. Volatile figures (bytes, RTT) are refreshed only every
//! [`VOLATILE_EVERY`], so an idle hub writes nothing and a busy one writes little.

use std::time::Duration;

use fleetboard_dataplane::core::{PeerStatus as DpPeerStatus, Transport as DpTransport};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::plan::MemberPlan;
use crate::crd::peer::PeerStatus;

/// Condition type: the Peer has its blocks and is valid.
pub const READY: &str = "Ready";
/// Condition type: the tunnel to the hub is up.
pub const CONNECTED: &str = "Connected";
/// How often bytes and RTT are refreshed in the status (a write per peer at most this often
/// while traffic flows: cheap for the apiserver, fresh enough for `kubectl peers`).
pub const VOLATILE_EVERY: Duration = Duration::from_secs(10);
/// A WireGuard session without a handshake for this long is dead (WireGuard's
/// REJECT_AFTER_TIME: no packet is accepted on it any more).
pub const HANDSHAKE_STALE: Duration = Duration::from_secs(180);
/// Wall-clock jitter tolerated on `lastHandshake` (it is derived from "seconds ago").
const HANDSHAKE_JITTER: SignedDuration = SignedDuration::from_secs(3);

/// The `Connected` condition and live figures of one peer, from the dataplane.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Whether the tunnel is up.
    pub connected: bool,
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message.
    pub message: String,
    /// Last completed handshake (wall clock).
    pub last_handshake: Option<Timestamp>,
    /// RTT in microseconds.
    pub rtt_micros: Option<u64>,
    /// Median data-path probe RTT in microseconds.
    pub probe_rtt_micros: Option<u64>,
    /// Data-path probe loss, percent.
    pub probe_loss_percent: Option<u64>,
    /// Bytes from the peer.
    pub rx_bytes: u64,
    /// Bytes to the peer.
    pub tx_bytes: u64,
}

/// What the dataplane says about a peer (none: the hub does not serve it).
pub fn observe(dp: Option<&DpPeerStatus>, now: Timestamp) -> Observed {
    let Some(p) = dp else {
        return Observed {
            connected: false,
            reason: "NotConfigured",
            message: "the hub does not serve this peer (see the Ready condition)".into(),
            last_handshake: None,
            rtt_micros: None,
            probe_rtt_micros: None,
            probe_loss_percent: None,
            rx_bytes: 0,
            tx_bytes: 0,
        };
    };
    let last_handshake = p
        .last_handshake_secs_ago
        .and_then(|s| now.checked_sub(SignedDuration::from_secs(s as i64)).ok());
    let (connected, reason, message) = match p.transport {
        DpTransport::Quic if p.rtt_micros.is_some() => (
            true,
            "QuicConnected",
            format!("QUIC connection up from {}", endpoint(p)),
        ),
        DpTransport::Quic => (false, "NotConnected", "no QUIC connection".to_string()),
        DpTransport::Wg => match p.last_handshake_secs_ago {
            Some(s) if s < HANDSHAKE_STALE.as_secs() => (
                true,
                "HandshakeCompleted",
                // No ages in messages: they would change (and be written) every pass.
                format!("WireGuard session with {}", endpoint(p)),
            ),
            Some(_) => (
                false,
                "HandshakeStale",
                format!("no handshake for over {}s", HANDSHAKE_STALE.as_secs()),
            ),
            None => (false, "NoHandshake", "no handshake yet".to_string()),
        },
    };
    Observed {
        connected,
        reason,
        message,
        last_handshake,
        rtt_micros: p.rtt_micros,
        probe_rtt_micros: p.probe_rtt_p50_micros,
        probe_loss_percent: p
            .probe_loss
            .map(|l| (l * 100.0).round().clamp(0.0, 100.0) as u64),
        rx_bytes: p.counters.rx_bytes,
        tx_bytes: p.counters.tx_bytes,
    }
}

fn endpoint(p: &DpPeerStatus) -> String {
    p.endpoint
        .map(|e| e.to_string())
        .unwrap_or_else(|| "an unknown endpoint".into())
}

/// A condition, keeping `current`'s transition time when its status did not change.
pub fn condition(
    current: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The status to write for a member; `refresh_volatile` says whether bytes and RTT may be
/// updated now (otherwise the current values stay, unless there were none).
pub fn member_status(
    current: &PeerStatus,
    plan: &MemberPlan,
    obs: &Observed,
    generation: Option<i64>,
    now: Timestamp,
    refresh_volatile: bool,
) -> PeerStatus {
    let (ok, reason, message) = plan.ready();
    let conditions = vec![
        condition(
            &current.conditions,
            READY,
            ok,
            reason,
            message,
            generation,
            now,
        ),
        condition(
            &current.conditions,
            CONNECTED,
            obs.connected,
            obs.reason,
            obs.message.clone(),
            generation,
            now,
        ),
    ];
    let last_handshake = match (&current.last_handshake, obs.last_handshake) {
        (Some(cur), Some(new)) if (new.duration_since(cur.0)).abs() <= HANDSHAKE_JITTER => {
            Some(cur.clone())
        }
        (_, Some(new)) => Some(Time(new)),
        // QUIC has no handshake figure: the moment it was first seen connected.
        (cur, None) if obs.connected => cur.clone().or(Some(Time(now))),
        (cur, None) => cur.clone(),
    };
    let volatile = |cur: Option<u64>, new: Option<u64>| {
        if refresh_volatile || cur.is_none() {
            new
        } else {
            cur
        }
    };
    PeerStatus {
        conditions,
        allocated_cidrs: plan.allocated.iter().map(|b| b.to_string()).collect(),
        last_handshake,
        rtt_micros: volatile(current.rtt_micros, obs.rtt_micros),
        probe_rtt_micros: volatile(current.probe_rtt_micros, obs.probe_rtt_micros),
        probe_loss_percent: volatile(current.probe_loss_percent, obs.probe_loss_percent),
        rx_bytes: volatile(current.rx_bytes, Some(obs.rx_bytes)),
        tx_bytes: volatile(current.tx_bytes, Some(obs.tx_bytes)),
        observed_generation: generation,
    }
}

/// The hub's own status: its blocks, Ready and Connected (it is the hub).
pub fn hub_status(
    current: &PeerStatus,
    blocks: &[ipnet::IpNet],
    generation: Option<i64>,
    leader: &str,
    now: Timestamp,
) -> PeerStatus {
    let list: Vec<String> = blocks.iter().map(|b| b.to_string()).collect();
    PeerStatus {
        conditions: vec![
            condition(
                &current.conditions,
                READY,
                !list.is_empty(),
                if list.is_empty() {
                    "NoBlock"
                } else {
                    "Allocated"
                },
                format!("hub block {}", list.join(", ")),
                generation,
                now,
            ),
            condition(
                &current.conditions,
                CONNECTED,
                true,
                "Leading",
                format!("served by hub replica {leader}"),
                generation,
                now,
            ),
        ],
        allocated_cidrs: list,
        observed_generation: generation,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetboard_dataplane::core::SecretKey;

    fn dp(transport: DpTransport, hs: Option<u64>, rtt: Option<u64>) -> DpPeerStatus {
        DpPeerStatus {
            public_key: SecretKey::from_random_bytes([3; 32]).public_key(),
            name: Some("a".into()),
            transport,
            endpoint: Some("198.18.0.2:31820".parse().unwrap()),
            via: None,
            allowed_ips: vec![],
            last_handshake_secs_ago: hs,
            rtt_micros: rtt,
            persistent_keepalive: None,
            max_packet: None,
            counters: Default::default(),
            probe_address: None,
            probe_rtt_p50_micros: rtt.map(|r| r + 100),
            probe_loss: rtt.map(|_| 0.25),
            probe_last_reply_millis_ago: None,
            probe_alive: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap()
    }

    #[test]
    fn connected_follows_handshakes_and_quic_connections() {
        // WireGuard RTTs come from the dataplane's handshake timing, in microseconds.
        let o = observe(Some(&dp(DpTransport::Wg, Some(5), Some(850))), now());
        assert!(o.connected);
        assert_eq!(o.reason, "HandshakeCompleted");
        assert_eq!(o.rtt_micros, Some(850));
        // Probe figures pass through, the loss as a percentage.
        assert_eq!(o.probe_rtt_micros, Some(950));
        assert_eq!(o.probe_loss_percent, Some(25));
        assert_eq!(
            o.last_handshake,
            Some(now().checked_sub(SignedDuration::from_secs(5)).unwrap())
        );
        assert_eq!(
            observe(Some(&dp(DpTransport::Wg, None, None)), now()).reason,
            "NoHandshake"
        );
        assert_eq!(
            observe(Some(&dp(DpTransport::Wg, Some(500), None)), now()).reason,
            "HandshakeStale"
        );
        assert!(observe(Some(&dp(DpTransport::Quic, None, Some(2_000))), now()).connected);
        assert!(!observe(Some(&dp(DpTransport::Quic, None, None)), now()).connected);
        assert_eq!(observe(None, now()).reason, "NotConfigured");
    }

    #[test]
    fn unchanged_state_gives_an_identical_status() {
        let plan = MemberPlan {
            name: "a".into(),
            allocated: vec!["100.65.0.0/16".parse().unwrap()],
            exhausted: vec![],
            invalid: None,
            peer: None,
        };
        let o = observe(Some(&dp(DpTransport::Wg, Some(5), Some(1))), now());
        let first = member_status(&PeerStatus::default(), &plan, &o, Some(1), now(), true);
        let later = now().checked_add(SignedDuration::from_secs(1)).unwrap();
        let mut o2 = observe(Some(&dp(DpTransport::Wg, Some(6), Some(2))), later);
        o2.rx_bytes = 99;
        let second = member_status(&first, &plan, &o2, Some(1), later, false);
        assert_eq!(
            first, second,
            "jitter and volatile figures alone write nothing"
        );
        let third = member_status(&first, &plan, &o2, Some(1), later, true);
        assert_eq!(third.rx_bytes, Some(99));
        assert_eq!(third.conditions, first.conditions);
    }
}
