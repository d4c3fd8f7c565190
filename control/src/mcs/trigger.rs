//! Watch caches that wake one reconcile loop on any change.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// Starts a reflector for `api` (optionally filtered by a label selector) whose events notify
/// `wake`; returns its cache. The watch task ends when `wake` has no other holder.
pub(crate) fn cache<K>(api: Api<K>, labels: Option<&str>, wake: &Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let mut cfg = watcher::Config::default();
    if let Some(l) = labels {
        cfg = cfg.labels(l);
    }
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    let wake = Arc::downgrade(wake);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let Some(w) = wake.upgrade() else { break };
            match ev {
                Ok(_) => w.notify_one(),
                Err(e) => tracing::debug!(error = %e, "watch error (retrying)"),
            }
        }
    });
    reader
}

/// Waits until every cache listed once.
pub(crate) async fn ready<K>(store: &Store<K>) -> Result<(), crate::mcs::McsError>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    store
        .wait_until_ready()
        .await
        .map_err(|e| crate::mcs::McsError::Watch(e.to_string()))
}

/// Waits for a change (then lets more changes gather for [`crate::mcs::DEBOUNCE`]) or the
/// periodic resync.
pub(crate) async fn next_pass(wake: &Notify) {
    let _ = tokio::time::timeout(crate::mcs::RESYNC, wake.notified()).await;
    tokio::time::sleep(crate::mcs::DEBOUNCE).await;
}
