//! Outages as a workload sees them: a probe pod fetches a URL over and over (each try bounded
//! by [`TRY_SECONDS`], a pause of [`PAUSE_MS`] between tries) and logs `ok <uptime>` or
//! `fail <uptime>` per try; the test reads its log through the API. An outage is the longest
//! gap between two successful tries after a mark: what a client retrying every fraction of a
//! second would have lived through.
//!
//! The clock is the node's `/proc/uptime` (one kernel for every pod on this machine: samples
//! of different pods compare), 10 ms resolution; a gap includes one pause and one try, so
//! figures are upper bounds to about `PAUSE_MS + TRY_SECONDS`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};

use super::pods::{APPS, DEADLINE, POLL};
use crate::kube::{Cluster, eventually};

/// The bound on one try.
pub const TRY_SECONDS: u32 = 2;
/// The pause between tries.
pub const PAUSE_MS: u32 = 200;

/// A running probe pod.
pub struct Probe {
    api: Api<Pod>,
    name: String,
    url: String,
}

/// Where the log stood at a moment (see [`Probe::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

/// One try: whether it succeeded, and when (seconds of uptime).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Try {
    ok: bool,
    at: f64,
}

fn parse(log: &str) -> Vec<Try> {
    log.lines()
        .filter_map(|l| {
            let (what, at) = l.split_once(' ')?;
            let at: f64 = at.trim().parse().ok()?;
            match what {
                "ok" => Some(Try { ok: true, at }),
                "fail" => Some(Try { ok: false, at }),
                _ => None,
            }
        })
        .collect()
}

/// The longest time between two successful tries in `tries` (the first of which may be the
/// last success before them: pass it in), and how many tries succeeded.
fn longest_gap(tries: &[Try]) -> (Duration, usize) {
    let mut last_ok: Option<f64> = None;
    let mut gap = 0f64;
    let mut oks = 0;
    for t in tries.iter().filter(|t| t.ok) {
        if let Some(prev) = last_ok {
            gap = gap.max(t.at - prev);
        }
        last_ok = Some(t.at);
        oks += 1;
    }
    (Duration::from_secs_f64(gap.max(0.0)), oks)
}

impl Probe {
    /// Starts probe pod `name` in [`APPS`] on `node` (busybox `image`), fetching `url`; returns
    /// once a try has succeeded.
    pub async fn start(
        cluster: &Cluster,
        name: &str,
        node: &str,
        image: &str,
        url: &str,
    ) -> anyhow::Result<Self> {
        // busybox 1.35's `wget -T` crashes (SIGSEGV): `timeout` bounds each try instead.
        let script = format!(
            "trap 'exit 0' TERM; while true; do \
               if timeout {TRY_SECONDS} wget -q -O /dev/null {url}; then r=ok; else r=fail; fi; \
               echo \"$r $(cut -d' ' -f1 /proc/uptime)\"; usleep {}; \
             done",
            PAUSE_MS * 1000
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": APPS, "labels": { "app": "probe" } },
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "probe",
                    "image": image,
                    "command": ["sh", "-c", script],
                }],
            },
        }))?;
        let api: Api<Pod> = Api::namespaced(cluster.client(), APPS);
        api.create(&PostParams::default(), &pod).await?;
        let probe = Self {
            api,
            name: name.to_string(),
            url: url.to_string(),
        };
        eventually(
            &format!("probe {name} reaches {url}"),
            DEADLINE,
            POLL,
            || async { Ok(probe.tries().await?.iter().any(|t| t.ok).then_some(())) },
        )
        .await?;
        Ok(probe)
    }

    async fn tries(&self) -> anyhow::Result<Vec<Try>> {
        let log = self.api.logs(&self.name, &LogParams::default()).await?;
        Ok(parse(&log))
    }

    /// Marks now: [`Probe::outage_since`] looks at what comes after.
    pub async fn mark(&self) -> anyhow::Result<Mark> {
        Ok(Mark(self.tries().await?.len()))
    }

    /// Waits until `successes` tries after `mark` succeeded in a row (traffic is back), then
    /// returns the longest gap between successes since the last success before `mark`.
    pub async fn outage_since(&self, mark: Mark, successes: usize) -> anyhow::Result<Duration> {
        eventually(
            &format!(
                "probe {}: {successes} successful tries in a row to {} after the mark",
                self.name, self.url
            ),
            DEADLINE,
            POLL,
            || async {
                let tries = self.tries().await?;
                let from = tries[..mark.0.min(tries.len())]
                    .iter()
                    .rposition(|t| t.ok)
                    .unwrap_or(mark.0.min(tries.len()));
                let after = &tries[mark.0.min(tries.len())..];
                let streak = after.iter().rev().take_while(|t| t.ok).count();
                Ok((streak >= successes).then(|| longest_gap(&tries[from..]).0))
            },
        )
        .await
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_longest_gap_between_successes() {
        let tries = parse("ok 10.00\nok 10.40\nfail 12.40\nfail 14.60\nok 15.00\nok 15.30\n");
        let (gap, oks) = longest_gap(&tries);
        assert_eq!(oks, 4);
        assert!((gap.as_secs_f64() - 4.6).abs() < 1e-9, "{gap:?}");
    }

    #[test]
    fn lines_that_are_not_tries_are_ignored() {
        let tries = parse("wget: bad address\nok 1.5\nok x\n");
        assert_eq!(tries, vec![Try { ok: true, at: 1.5 }]);
    }
}
