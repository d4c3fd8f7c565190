//! `kubectl peers remove <cluster-id>`: revokes a member ([`membership::remove`]) and waits
//! until its namespace on the hub is gone (namespace deletion finishes asynchronously).

use std::io::Write;
use std::time::{Duration, Instant};

use fleetboard_control::membership;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use crate::cli::{RemoveArgs, format_duration};
use crate::fetch::{self, Target};

/// First pause between two looks at the namespace; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(100);
/// Longest pause between two looks at the namespace.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Runs `remove`: the deleted objects and the time revocation took to stdout.
pub async fn run(target: &Target, args: &RemoveArgs) -> anyhow::Result<()> {
    let hub = fetch::connect(target).await?;
    let id = &args.cluster_id;
    let started = Instant::now();
    let removed = membership::remove(&hub.client, &target.namespace, id)
        .await
        .map_err(|e| fetch::explain_membership(e, &hub.url))?;
    let revoked = started.elapsed();
    let ns = membership::member_namespace(id);
    let mut out = std::io::stdout().lock();
    for object in &removed.deleted {
        writeln!(out, "deleted {object}")?;
    }
    if removed.deleted.is_empty() {
        writeln!(
            out,
            "member {id} has no identity on the hub (nothing to delete; hub namespace {})",
            target.namespace
        )?;
    } else {
        writeln!(
            out,
            "member {id} revoked in {}: the hub's API server refuses its tokens",
            seconds(revoked)
        )?;
    }
    out.flush()?;
    if args.wait_timeout.is_zero() {
        writeln!(
            out,
            "not waiting for namespace {ns} to be gone (--wait-timeout 0)"
        )?;
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(hub.client.clone());
    match wait_gone(&api, &ns, args.wait_timeout, &hub.url).await? {
        Wait::Absent if removed.deleted.is_empty() => Ok(()),
        Wait::Absent | Wait::Gone => {
            writeln!(
                out,
                "namespace {ns} gone {} after remove began",
                seconds(started.elapsed())
            )?;
            Ok(())
        }
        Wait::Stuck(left) => Err(anyhow::anyhow!("{}", stuck(&ns, &left, args.wait_timeout))),
    }
}

/// How waiting for a namespace to be gone ended.
enum Wait {
    /// It was not there at the first look.
    Absent,
    /// It went away while we looked.
    Gone,
    /// Still there at the deadline (the last seen).
    Stuck(Box<Namespace>),
}

/// Polls until namespace `name` is gone or `timeout` passed.
async fn wait_gone(
    api: &Api<Namespace>,
    name: &str,
    timeout: Duration,
    url: &str,
) -> anyhow::Result<Wait> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    let mut seen_once = false;
    loop {
        let seen = api.get_opt(name).await.map_err(|source| {
            fetch::explain_membership(
                membership::MembershipError::Api {
                    what: format!("reading namespace {name}"),
                    source,
                },
                url,
            )
        })?;
        let Some(ns) = seen else {
            return Ok(if seen_once { Wait::Gone } else { Wait::Absent });
        };
        seen_once = true;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Wait::Stuck(Box::new(ns)));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Why the namespace is still there after `timeout`, and what to do.
fn stuck(name: &str, ns: &Namespace, timeout: Duration) -> String {
    let status = ns.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "unknown".into());
    let problems: Vec<String> = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.status == "True")
        .map(|c| format!("{}: {}", c.type_, c.message.clone().unwrap_or_default()))
        .collect();
    let mut text = format!(
        "namespace {name} still exists after {} (phase {phase}): the member's tokens are \
         already refused, but its namespace has not finished deleting",
        format_duration(timeout)
    );
    if ns.metadata.deletion_timestamp.is_none() {
        text.push_str("; it is not being deleted: run `kubectl peers remove` again");
    } else if problems.is_empty() {
        text.push_str(
            "; nothing has reported on it (is kube-controller-manager, the namespace \
             controller, running on the hub?)",
        );
    } else {
        text.push_str(&format!("; {}", problems.join("; ")));
    }
    text.push_str(&format!(
        ". Look with `kubectl get namespace {name} -o yaml`, or wait longer (--wait-timeout)"
    ));
    text
}

/// `0.42 s`.
fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn namespace(v: serde_json::Value) -> Namespace {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_stuck_namespace_is_explained() {
        let timeout = Duration::from_secs(60);
        let terminating = namespace(json!({
            "metadata": {"name": "fleetboard-member-a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Terminating", "conditions": [
                {"type": "NamespaceDeletionContentFailure", "status": "True",
                 "message": "failed to delete exportedservices"},
                {"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "message": "ok"},
            ]},
        }));
        let text = stuck("fleetboard-member-a", &terminating, timeout);
        assert!(
            text.starts_with(
                "namespace fleetboard-member-a still exists after 1m (phase Terminating)"
            ),
            "{text}"
        );
        assert!(
            text.contains("NamespaceDeletionContentFailure: failed to delete exportedservices"),
            "{text}"
        );
        assert!(!text.contains("DiscoveryFailure"), "{text}");
        assert!(text.contains("--wait-timeout"), "{text}");

        let no_controller = namespace(json!({
            "metadata": {"name": "x", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Terminating"},
        }));
        assert!(stuck("x", &no_controller, timeout).contains("kube-controller-manager"));

        let not_deleted =
            namespace(json!({"metadata": {"name": "x"}, "status": {"phase": "Active"}}));
        assert!(stuck("x", &not_deleted, timeout).contains("not being deleted"));
    }

    #[test]
    fn seconds_are_printed_with_two_decimals() {
        assert_eq!(seconds(Duration::from_millis(1234)), "1.23 s");
    }
}
