//! Fast hub leader failover from the members' data-path probes (issue 18 item 2).
//!
//! Hub replicas have no data path to each other; the members do: each member's gateway probes
//! the hub's tunnel address through the tunnel five times a second. A gateway whose probes of
//! the leading replica answered and then stayed silent for a second names that replica in the
//! `fleetboard.io/hub-silent` annotation of its own Peer (agent side:
//! [`crate::agent::failover::watch_hub`]). Every replica watches the Peers; when most members
//! that were connected name the replica that published the hub Peer
//! (`fleetboard.io/hub-leader`), a standby takes the hub Lease at once
//! ([`crate::leader::preempt_dead_holder`]) instead of waiting for it to expire.
//!
//! A majority, not one report: one member (hostile, or cut off from the hub by its own
//! network) cannot move the hub. The electorate is the members whose `Connected` condition the
//! leader last wrote as true, or as false less than [`VOTER_GRACE`] ago (a leader that was
//! restarted in place first writes every member disconnected: its new dataplane has no
//! session yet), so members that were already down do not block the others. A
//! leader that was only cut off from the members, not dead, reads the new holder at its next
//! renewal and stops (its fence closes: it writes nothing after that).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::status::CONNECTED;
use crate::crd::peer::{HUB_LEADER_ANNOTATION, HUB_SILENT_ANNOTATION, Peer};

/// A member whose `Connected` condition turned false less than this long ago still votes.
pub const VOTER_GRACE: Duration = Duration::from_secs(60);

/// The hub replica most connected members report silent, if any: the leader named in the
/// hub's Peer (`hub_id`) when more than half of the members connected to it (at `now`, see
/// [`VOTER_GRACE`]) name it in their `fleetboard.io/hub-silent` annotation.
pub fn silent_leader<'a>(
    peers: impl IntoIterator<Item = &'a Peer> + Clone,
    hub_id: &str,
    now: Timestamp,
) -> Option<String> {
    let leader = peers
        .clone()
        .into_iter()
        .find(|p| p.name_any() == hub_id && p.spec.is_hub)?
        .annotation(HUB_LEADER_ANNOTATION)?;
    let (mut electorate, mut reports) = (0usize, 0usize);
    for p in peers {
        if p.spec.is_hub || p.name_any() == hub_id || !voter(p, now) {
            continue;
        }
        electorate += 1;
        if p.annotation(HUB_SILENT_ANNOTATION) == Some(leader) {
            reports += 1;
        }
    }
    (electorate > 0 && 2 * reports > electorate).then(|| leader.to_owned())
}

/// Whether the hub last wrote this member's `Connected` condition as true, or as false less
/// than [`VOTER_GRACE`] before `now`.
fn voter(p: &Peer, now: Timestamp) -> bool {
    let grace = SignedDuration::try_from(VOTER_GRACE).unwrap_or(SignedDuration::MAX);
    p.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == CONNECTED
                && (c.status == "True" || now.duration_since(c.last_transition_time.0) < grace)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::peer::PeerStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    /// When the tests look at the Peers: an hour after their conditions last changed, unless
    /// a test moves a transition closer.
    fn now() -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1)
    }

    fn peer(name: &str, is_hub: bool, connected: bool, annotation: Option<(&str, &str)>) -> Peer {
        let mut p = Peer::new(
            name,
            serde_json::from_value(serde_json::json!({ "clusterId": name, "isHub": is_hub }))
                .unwrap_or_else(|e| panic!("spec: {e}")),
        );
        if let Some((k, v)) = annotation {
            p.metadata.annotations = Some([(k.to_owned(), v.to_owned())].into());
        }
        p.status = Some(PeerStatus {
            conditions: vec![Condition {
                type_: CONNECTED.into(),
                status: if connected { "True" } else { "False" }.into(),
                reason: "Test".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..Default::default()
        });
        p
    }

    fn hub(leader: &str) -> Peer {
        peer("hub", true, false, Some((HUB_LEADER_ANNOTATION, leader)))
    }

    fn member(name: &str, connected: bool, silent: Option<&str>) -> Peer {
        peer(
            name,
            false,
            connected,
            silent.map(|s| (HUB_SILENT_ANNOTATION, s)),
        )
    }

    #[test]
    fn most_connected_members_must_report_the_current_leader() {
        let a_b = |a, b| vec![hub("hub-0"), member("a", true, a), member("b", true, b)];
        assert_eq!(
            silent_leader(&a_b(Some("hub-0"), Some("hub-0")), "hub", now()),
            Some("hub-0".into())
        );
        // One of two is no majority: one member cannot move the hub.
        assert_eq!(silent_leader(&a_b(Some("hub-0"), None), "hub", now()), None);
        // Reports about an earlier leader say nothing about this one.
        assert_eq!(
            silent_leader(&a_b(Some("hub-1"), Some("hub-1")), "hub", now()),
            None
        );
        // Members that were already disconnected do not vote.
        let peers = vec![
            hub("hub-0"),
            member("a", true, Some("hub-0")),
            member("b", false, None),
            member("c", false, None),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), Some("hub-0".into()));
        // Two of three.
        let peers = vec![
            hub("hub-0"),
            member("a", true, Some("hub-0")),
            member("b", true, Some("hub-0")),
            member("c", true, None),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), Some("hub-0".into()));
    }

    #[test]
    fn members_disconnected_moments_ago_still_vote() {
        // A leader restarted in place wrote both members disconnected 10 s ago (its new
        // dataplane had no session yet); both still report it silent.
        let recently = |mut p: Peer| {
            for c in &mut p.status.as_mut().unwrap().conditions {
                c.last_transition_time = Time(now() - SignedDuration::from_secs(10));
            }
            p
        };
        let peers = vec![
            hub("hub-0"),
            recently(member("a", false, Some("hub-0"))),
            recently(member("b", false, Some("hub-0"))),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), Some("hub-0".into()));
        // One of the two reports: no majority.
        let peers = vec![
            hub("hub-0"),
            recently(member("a", false, Some("hub-0"))),
            recently(member("b", false, None)),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), None);
    }

    #[test]
    fn nobody_is_named_without_a_published_leader_or_any_connected_member() {
        let peers = vec![
            peer("hub", true, false, None),
            member("a", true, Some("hub-0")),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), None);
        let peers = vec![hub("hub-0"), member("a", false, Some("hub-0"))];
        assert_eq!(silent_leader(&peers, "hub", now()), None);
        // A member cannot stand in for the hub: only the hub's Peer names the leader.
        let peers = vec![
            peer("hub", false, true, Some((HUB_LEADER_ANNOTATION, "hub-0"))),
            member("a", true, Some("hub-0")),
        ];
        assert_eq!(silent_leader(&peers, "hub", now()), None);
    }
}
