//! Watch caches: a reflector per resource whose changes wake a reconcile loop.
//!
//! Every loop of the project (hub, agent, MCS controllers, DNS) reads the API through these:
//! errors back off with [`watch_backoff`] and are logged once per outage ([`Outage`]), the
//! store keeps its last state meanwhile, and the caller's `on_change` runs after each change
//! the store took in.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::outage::{Outage, watch_backoff};

/// Starts a reflector for `api` and returns its store; `on_change` runs after every change
/// the store took in (and after each complete list), until it returns false. `what` names
/// the watch in the outage logs.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    mut on_change: impl FnMut(&Store<K>) -> bool + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).backoff(watch_backoff());
    let view = reader.clone();
    tokio::spawn(async move {
        let mut outage = Outage::new(what);
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                // Emitted before each (re)list, answered or not: no sign of the API.
                Ok(watcher::Event::Init) => {}
                Ok(_) => {
                    outage.ok();
                    if !on_change(&view) {
                        break;
                    }
                }
                Err(e) => {
                    outage.failed(&e);
                }
            }
        }
    });
    reader
}

/// A cache of `api` (optionally only the objects matching the label selector `labels`) whose
/// changes wake `wake`; the watch ends once nobody else holds `wake` (a stopped loop).
pub fn cache<K>(
    api: Api<K>,
    labels: Option<&str>,
    what: &'static str,
    wake: &Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let mut config = watcher::Config::default();
    if let Some(l) = labels {
        config = config.labels(l);
    }
    let wake = Arc::downgrade(wake);
    reflect(api, config, what, move |_| match wake.upgrade() {
        Some(w) => {
            w.notify_one();
            true
        }
        None => false,
    })
}
