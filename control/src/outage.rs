//! Riding out API server outages: how control loops retry and how they say so.
//!
//! An API server that does not answer (restarted, overloaded, unreachable) is not a reason
//! for any FleetBoard process to exit or to touch traffic: loops keep their last known state,
//! retry with backoff and jitter, and converge when the API answers again. [`Outage`] logs
//! the start of an outage once at warn (with the error), retries at debug, and the recovery
//! at info with its length; [`watch_backoff`] is the watchers' backoff, capped low enough
//! that a watch is back within seconds of the API's return.

use std::fmt::Display;
use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use tokio::time::Instant;

/// First delay of a watcher's retry after an error.
const WATCH_MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between a watcher's retries (kube-runtime's default is 30 s: a watch could
/// stay down that long after the API is back).
const WATCH_MAX_DELAY: Duration = Duration::from_secs(2);
/// A watch that has run this long without an error starts its backoff from the beginning.
const WATCH_RESET_AFTER: Duration = Duration::from_secs(60);

/// The backoff of the watchers (`WatchStreamExt::backoff`): exponential from 0.5 s to 2 s,
/// with jitter, reset after a minute without errors.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(WATCH_MIN_DELAY)
        .with_max_delay(WATCH_MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(builder), WATCH_RESET_AFTER)
}

/// True when `e` is the API server's answer that the request is wrong (a 4xx other than
/// timeouts and throttling: RBAC, a missing object or CRD): retrying will not help. Anything
/// else (no connection, a timeout, a 5xx of a starting or overloaded API server) is an outage.
pub fn is_refusal(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 408 && s.code != 429)
}

/// The state of one API dependency as a loop sees it: logs the first failure of an outage at
/// warn, later ones at debug, and the recovery at info.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    since: Option<Instant>,
}

impl Outage {
    /// For the API called `what` (e.g. "hub API", "member API").
    pub fn new(what: &'static str) -> Self {
        Self { what, since: None }
    }

    /// A call failed with `error`: true when this starts an outage (logged at warn).
    pub fn failed(&mut self, error: &dyn Display) -> bool {
        match self.since {
            None => {
                self.since = Some(Instant::now());
                tracing::warn!(api = self.what, %error, "API call failed: keeping the last known state and retrying");
                true
            }
            Some(since) => {
                tracing::debug!(api = self.what, %error, down_secs = since.elapsed().as_secs(), "API still failing");
                false
            }
        }
    }

    /// A call succeeded: true when this ends an outage (logged at info).
    pub fn ok(&mut self) -> bool {
        match self.since.take() {
            Some(since) => {
                tracing::info!(
                    api = self.what,
                    down_secs = format!("{:.1}", since.elapsed().as_secs_f64()),
                    "API answers again"
                );
                true
            }
            None => false,
        }
    }

    /// How long the current outage has lasted (none while the API answers).
    pub fn down_for(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_backoff_stays_within_its_bounds_and_resets() {
        let mut b = watch_backoff();
        let delays: Vec<Duration> = (&mut b).take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        for d in &delays {
            // Jitter adds up to one more delay on top.
            assert!(*d <= WATCH_MAX_DELAY * 2, "{d:?}");
        }
        assert!(delays[0] <= WATCH_MIN_DELAY * 2, "{:?}", delays[0]);
        b.reset();
        let first = b.next().unwrap();
        assert!(first <= WATCH_MIN_DELAY * 2, "{first:?}");
    }

    #[test]
    fn an_outage_is_reported_once_and_ends_once() {
        let mut o = Outage::new("test API");
        assert!(o.down_for().is_none());
        assert!(o.failed(&"refused"), "first failure starts it");
        assert!(!o.failed(&"refused"), "later ones do not");
        assert!(o.down_for().is_some());
        assert!(o.ok(), "the first success ends it");
        assert!(!o.ok());
        assert!(o.down_for().is_none());
    }
}
