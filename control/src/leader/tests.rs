//! Unit tests of the Lease decisions: create, take over, renew, follow, hold off after an
//! outage, preempt a dead holder, release.

use super::*;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn held(by: &str, renewed: i64, dur: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(by.into()),
        renew_time: Some(MicroTime(t(renewed))),
        lease_duration_seconds: Some(dur),
        lease_transitions: Some(3),
        ..Default::default()
    }
}

#[test]
fn a_live_lease_of_a_dead_holder_is_taken_at_once() {
    let follow = decide(Some(&held("b", 0, 15)), t(1), "a");
    assert!(matches!(follow, Action::Follow { .. }));
    assert_eq!(
        preempt_dead_holder(follow.clone(), Some("b")),
        Action::Acquire
    );
    // Another node named dead, or nobody: the holder is followed.
    assert_eq!(preempt_dead_holder(follow.clone(), Some("c")), follow);
    assert_eq!(preempt_dead_holder(follow.clone(), None), follow);
    // Our own renewal and a free Lease are untouched.
    assert_eq!(preempt_dead_holder(Action::Renew, Some("b")), Action::Renew);
    assert_eq!(
        preempt_dead_holder(Action::Acquire, Some("b")),
        Action::Acquire
    );
}

#[test]
fn no_lease_means_create() {
    assert_eq!(decide(None, t(0), "a"), Action::Create);
}

#[test]
fn free_or_expired_lease_is_acquired() {
    let mut free = held("b", 0, 15);
    free.holder_identity = Some(String::new());
    assert_eq!(decide(Some(&free), t(1), "a"), Action::Acquire);
    assert_eq!(decide(Some(&held("b", 0, 15)), t(16), "a"), Action::Acquire);
    let mut never = held("b", 0, 15);
    never.renew_time = None;
    assert_eq!(decide(Some(&never), t(1), "a"), Action::Acquire);
}

#[test]
fn live_lease_of_another_is_followed_until_it_expires() {
    assert_eq!(
        decide(Some(&held("b", 0, 15)), t(14), "a"),
        Action::Follow {
            holder: "b".into(),
            expires: t(15)
        }
    );
}

#[test]
fn after_an_outage_an_expired_holder_gets_time_to_renew() {
    let expired = held("b", 0, 15);
    let act = decide(Some(&expired), t(100), "a");
    assert_eq!(act, Action::Acquire);
    assert_eq!(
        hold_off_takeover(
            act.clone(),
            Some(&expired),
            t(100),
            Some(Duration::from_secs(4))
        ),
        Action::Follow {
            holder: "b".into(),
            expires: t(104)
        },
        "a candidate that just regained contact waits"
    );
    assert_eq!(
        hold_off_takeover(act.clone(), Some(&expired), t(100), None),
        Action::Acquire,
        "one that never lost contact takes over as before"
    );
    let mut free = expired.clone();
    free.holder_identity = None;
    assert_eq!(
        hold_off_takeover(
            Action::Acquire,
            Some(&free),
            t(100),
            Some(Duration::from_secs(4))
        ),
        Action::Acquire,
        "a released Lease is taken at once"
    );
    assert_eq!(
        hold_off_takeover(
            Action::Renew,
            Some(&held("a", 0, 15)),
            t(100),
            Some(Duration::from_secs(4))
        ),
        Action::Renew,
        "the holder itself renews at once"
    );
}

#[test]
fn own_lease_is_renewed_even_when_expired() {
    assert_eq!(decide(Some(&held("a", 0, 15)), t(100), "a"), Action::Renew);
}

#[test]
fn acquiring_counts_a_transition_and_release_frees() {
    let cur = held("b", 0, 15);
    let next = next_spec(
        Some(&cur),
        &Action::Acquire,
        t(20),
        "a",
        Duration::from_secs(9),
    );
    assert_eq!(next.holder_identity.as_deref(), Some("a"));
    assert_eq!(next.lease_transitions, Some(4));
    assert_eq!(next.lease_duration_seconds, Some(9));
    assert_eq!(next.acquire_time, Some(MicroTime(t(20))));
    let renewed = next_spec(
        Some(&next),
        &Action::Renew,
        t(22),
        "a",
        Duration::from_secs(9),
    );
    assert_eq!(renewed.lease_transitions, Some(4));
    assert_eq!(renewed.acquire_time, Some(MicroTime(t(20))));
    assert_eq!(renewed.renew_time, Some(MicroTime(t(22))));
    let released = released_spec(&renewed, t(23));
    assert_eq!(decide(Some(&released), t(23), "b"), Action::Acquire);
}
