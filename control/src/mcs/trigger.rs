//! Waiting on the watch caches ([`crate::watch::cache`]) of one reconcile loop.

use std::hash::Hash;

use kube::Resource;
use kube::runtime::reflector::Store;
use tokio::sync::Notify;

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
