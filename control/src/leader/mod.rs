//! Leader election with a `coordination.k8s.io/v1` Lease (the hub's replicas, a member
//! cluster's gateway).
//!
//! The decision is a pure function ([`decide`]): given the Lease as read, the wall-clock time
//! and our identity, it says whether to create, take over, renew, or follow. The I/O loop
//! ([`LeaderElection::run`]) reads the Lease, writes it with optimistic concurrency (the
//! `resourceVersion` it read: a racing replica gets a 409 and re-reads), publishes whether
//! we lead on a `watch` channel, steps down as soon as renewing fails for longer than the
//! renew deadline, and on shutdown releases the Lease (empty holder) so a standby takes over
//! at once instead of waiting for the lease to expire. A standby watches the Lease (a watch
//! on that one object) besides re-reading it every renew interval, so it takes a released
//! Lease within a round trip: a deleted leader pod hands over to another candidate before its
//! replacement starts.
//!
//! Expiry is judged on the Lease's `renewTime` against the local clock: replicas are expected
//! to have synchronised clocks (NTP); a skew eats into the lease duration.
//!
//! API outages ([`Leadership`]): a holder that cannot renew because the API server does not
//! answer closes its fence (no writes) but is [`Leadership::Unsure`], not following: nobody
//! else can have taken a Lease nobody can write, so it keeps serving the data path on its last
//! state, and renews as soon as the API answers (its own Lease, even expired, is renewed). A
//! candidate that itself lost contact with the API waits one lease duration after contact
//! returns before it takes over an expired Lease that someone holds: the holder gets that long
//! to renew, so an outage does not end in a needless change of leader.
//!
//! Failover on evidence ([`LeaderElection::dead_holder`]): a candidate told that the holder
//! is dead (its data path stopped answering, [`crate::agent::failover`]) takes the Lease at
//! once, without waiting for it to expire ([`preempt_dead_holder`]).

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::fence::Fence;
use crate::outage::Outage;

/// Errors that stop the election loop.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timings cannot work.
    #[error("lease timing: {0}")]
    Timing(String),
}

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No Lease exists: create it with us as holder.
    Create,
    /// The Lease is free or expired: take it (a new term: `leaseTransitions` + 1).
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until `expires` (wall clock).
    Follow {
        /// The current holder.
        holder: String,
        /// When it expires unless renewed.
        expires: Timestamp,
    },
}

/// Decides what `me` does with `lease` (none = no Lease object) at wall-clock `now`. A Lease
/// with no holder, an empty holder, or a `renewTime + leaseDurationSeconds` in the past is
/// free; one without a renew time counts as renewed at its acquire time.
pub fn decide(lease: Option<&LeaseSpec>, now: Timestamp, me: &str) -> Action {
    let Some(spec) = lease else {
        return Action::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Action::Acquire;
    }
    if holder == me {
        return Action::Renew;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.and_then(|r| r.checked_add(duration).ok()) {
        Some(expires) if expires > now => Action::Follow {
            holder: holder.to_string(),
            expires,
        },
        _ => Action::Acquire,
    }
}

/// The spec to write for `action` (Create/Acquire/Renew) on top of `current`.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    action: &Action,
    now: Timestamp,
    me: &str,
    lease_duration: Duration,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let secs = i32::try_from(lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    match action {
        Action::Create => {
            spec.holder_identity = Some(me.to_string());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Action::Acquire => {
            spec.holder_identity = Some(me.to_string());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        Action::Renew | Action::Follow { .. } => {}
    }
    spec
}

/// `action` for a candidate that regained contact with the API server `hold_off` ago less
/// than a lease duration (none: it never lost contact): instead of taking over an expired
/// Lease that someone holds, it follows for `hold_off` more, giving the holder, cut off by the
/// same outage, time to renew. A free Lease is taken at once.
pub fn hold_off_takeover(
    action: Action,
    current: Option<&LeaseSpec>,
    now: Timestamp,
    hold_off: Option<Duration>,
) -> Action {
    let holder = current
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match (action, holder, hold_off) {
        (Action::Acquire, Some(holder), Some(wait)) => {
            let wait = SignedDuration::try_from(wait).unwrap_or_default();
            Action::Follow {
                holder: holder.to_string(),
                expires: now.checked_add(wait).unwrap_or(now),
            }
        }
        (action, _, _) => action,
    }
}

/// Resolves when the dead-holder signal changes; never without one (or once its sender is
/// gone).
async fn dead_changed(rx: &mut Option<watch::Receiver<Option<String>>>) {
    let changed = match rx {
        Some(r) => r.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// `action` for a candidate told that `dead` holds the Lease and is dead: instead of following
/// that holder until its Lease expires, take the Lease now (a new term). Any other holder is
/// followed as before.
pub fn preempt_dead_holder(action: Action, dead: Option<&str>) -> Action {
    match action {
        Action::Follow { holder, .. } if dead == Some(holder.as_str()) => Action::Acquire,
        action => action,
    }
}

/// The spec that gives the Lease up: no holder, expired at once.
pub fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    let mut spec = current.clone();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// One candidate in a Lease election.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Our identity (pod name, node name): the Lease's `holderIdentity`.
    pub identity: String,
    /// How long a Lease holds without renewal (a standby takes over after that).
    pub lease_duration: Duration,
    /// How often the leader renews (and a standby re-reads at most this long apart).
    pub renew_interval: Duration,
    /// Open while we may act as the holder ([`crate::fence`]): give its clones to the
    /// [`crate::fence::fenced_client`]s the holder writes with.
    pub fence: Fence,
    /// A holder known to be dead (none: no such knowledge): when it holds the Lease, take it
    /// at once ([`preempt_dead_holder`]). Changes wake a standby.
    pub dead_holder: Option<watch::Receiver<Option<String>>>,
}

/// Where this candidate stands, as published by [`LeaderElection::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// We hold the Lease (renewed within the renew deadline): the fence is open, writes pass.
    Leading,
    /// We held the Lease and could not renew it in time (the API server does not answer):
    /// the fence is closed, so nothing is written, but no other holder is known. Keep the
    /// data path running on the last state; leading again once a renewal goes through.
    Unsure,
    /// Someone else holds the Lease, or we never held it.
    Following,
}

impl Leadership {
    /// True only while [`Leadership::Leading`] (writes are allowed).
    pub fn is_leading(self) -> bool {
        self == Leadership::Leading
    }
}

fn set(leading: &watch::Sender<Leadership>, v: Leadership) {
    leading.send_if_modified(|cur| {
        let changed = *cur != v;
        *cur = v;
        changed
    });
}

/// Result of one attempt to read and write the Lease.
enum Step {
    /// We hold it (just written).
    Leading,
    /// Someone else holds it until then.
    Following(Timestamp),
    /// A racing writer won (409) or it was created under us: read again soon.
    Raced,
}

impl LeaderElection {
    /// Renewing may fail for this long after the last successful renewal before we step
    /// down: two thirds of the lease, so we stop leading well before a standby may take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Runs the election until `shutdown` completes, publishing where we stand on `leading`
    /// ([`Leadership`]). On shutdown a held Lease is released.
    pub async fn run(
        self,
        client: kube::Client,
        leading: watch::Sender<Leadership>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LeaderError> {
        if self.renew_interval.is_zero() || self.renew_interval >= self.renew_deadline() {
            return Err(LeaderError::Timing(format!(
                "renew interval {:?} must be above zero and below two thirds of the lease duration {:?}",
                self.renew_interval, self.lease_duration
            )));
        }
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let changed = std::sync::Arc::new(Notify::new());
        let _watch = AbortOnDrop(tokio::spawn(watch_lease(
            api.clone(),
            self.name.clone(),
            changed.clone(),
        )));
        tokio::pin!(shutdown);
        // When the last successful renewal was *sent*: the Lease runs from about then.
        let mut last_renew: Option<Instant> = None;
        // We held the Lease and could not renew it: [`Leadership::Unsure`].
        let mut unsure = false;
        let mut outage = Outage::new("lease");
        let mut dead_holder = self.dead_holder.clone();
        // When reads of the Lease went through again after failing (see the module docs).
        let mut contact_since: Option<Instant> = None;
        loop {
            let sent = Instant::now();
            let hold_off = contact_since
                .map(|t| self.lease_duration.saturating_sub(t.elapsed()))
                .filter(|d| !d.is_zero());
            // Every read and write of the Lease is bounded: a hung request must not keep the
            // loop from stepping down in time.
            let result =
                match tokio::time::timeout(self.renew_interval, self.step(&api, hold_off)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", self.renew_interval)),
                };
            if result.is_ok() && outage.ok() {
                contact_since = Some(Instant::now());
            }
            let wait = match result {
                Ok(Step::Leading) => {
                    if last_renew.is_none() {
                        if unsure {
                            tracing::info!(lease = %self.name, identity = %self.identity, "renewed the lease again: leading");
                        } else {
                            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                        }
                    }
                    last_renew = Some(sent);
                    unsure = false;
                    self.fence.extend(sent + self.renew_deadline());
                    set(&leading, Leadership::Leading);
                    self.renew_interval
                }
                Ok(Step::Following(expires)) => {
                    self.fence.close();
                    if last_renew.take().is_some() || unsure {
                        tracing::warn!(lease = %self.name, "lost the lease to another holder");
                    }
                    unsure = false;
                    set(&leading, Leadership::Following);
                    // Re-read when it expires (plus a little), or every interval meanwhile.
                    let left = expires.duration_since(Timestamp::now());
                    let left = Duration::try_from(left).unwrap_or_default();
                    (left + Duration::from_millis(50)).min(self.renew_interval)
                }
                Ok(Step::Raced) => Duration::from_millis(100),
                Err(e) => {
                    outage.failed(&e);
                    contact_since = None;
                    self.renew_interval / 2
                }
            };
            if let Some(t) = last_renew
                && t.elapsed() > self.renew_deadline()
            {
                tracing::warn!(lease = %self.name, "could not renew the lease in time: no writes until it is renewed; the data path keeps its last state");
                self.fence.close();
                last_renew = None;
                unsure = true;
                set(&leading, Leadership::Unsure);
            }
            // A standby wakes on any change of the Lease; the leader only on its timer (its
            // own renewals change the Lease too).
            let standby = last_renew.is_none();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified(), if standby => {}
                _ = dead_changed(&mut dead_holder), if standby => {}
            }
        }
        self.fence.close();
        if last_renew.is_some() || unsure {
            set(&leading, Leadership::Following);
            match self.release(&api).await {
                Ok(()) => tracing::info!(lease = %self.name, "released the lease"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed")
                }
            }
        }
        Ok(())
    }

    /// One read (and write) of the Lease. `hold_off`: we regained contact with the API this
    /// recently; an expired Lease that someone holds is left to its holder that much longer.
    async fn step(
        &self,
        api: &Api<Lease>,
        hold_off: Option<Duration>,
    ) -> Result<Step, kube::Error> {
        let current = api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let action = match (&current, decide(spec, now, &self.identity)) {
            // A Lease object without a spec: take it.
            (Some(_), Action::Create) => Action::Acquire,
            (_, a) => a,
        };
        let action = hold_off_takeover(action, spec, now, hold_off);
        let dead = self.dead_holder.as_ref().and_then(|d| d.borrow().clone());
        let action = match preempt_dead_holder(action.clone(), dead.as_deref()) {
            Action::Acquire if matches!(action, Action::Follow { .. }) => {
                tracing::warn!(lease = %self.name, holder = ?dead, "taking over the lease of a holder whose data path does not answer");
                Action::Acquire
            }
            a => a,
        };
        if let Action::Follow { expires, .. } = action {
            return Ok(Step::Following(expires));
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(next_spec(
                spec,
                &action,
                now,
                &self.identity,
                self.lease_duration,
            )),
        };
        let written = match current {
            None => api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                api.replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Step::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Step::Raced),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, api: &Api<Lease>) -> Result<(), kube::Error> {
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released_spec(spec, Timestamp::now()));
        api.replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pokes `changed` on every change of Lease `name` (a watch on that one object, which RBAC
/// allows with `resourceNames`); errors back off and are retried by the watcher.
async fn watch_lease(api: Api<Lease>, name: String, changed: std::sync::Arc<Notify>) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, cfg).backoff(crate::outage::watch_backoff()));
    while let Some(ev) = events.next().await {
        match ev {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(lease = %name, error = %e, "watching the lease"),
        }
    }
}

#[cfg(test)]
mod tests;
