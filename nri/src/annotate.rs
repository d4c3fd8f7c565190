//! Publishes every pod's parallel address on the Pod object, as the annotation
//! [`PARALLEL_IP_ANNOTATION`](crate::plugin::PARALLEL_IP_ANNOTATION): the parallel
//! EndpointSlice controller reads it from there.
//!
//! The runtime must never wait on the Kubernetes API: the plugin queues `(pod, address)` and a
//! background task patches the Pod, retrying with backoff. A Pod not (yet) known to the
//! apiserver is retried for [`NOT_FOUND_GIVE_UP`], then dropped with a warning; other errors
//! are retried until they succeed. The latest address per pod wins.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::plugin::PARALLEL_IP_ANNOTATION;

/// How long a Pod the apiserver does not know is retried before its annotation is dropped.
pub const NOT_FOUND_GIVE_UP: Duration = Duration::from_secs(120);
/// First retry delay; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why no Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// The kubeconfig file cannot be read or used.
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The in-cluster service account cannot be used.
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A pod whose annotation should say `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
}

/// Handle the plugin queues annotations on; cheap to clone.
#[derive(Debug, Clone)]
pub struct Annotator {
    tx: mpsc::UnboundedSender<Job>,
}

impl Annotator {
    /// Starts the background task patching Pods through `client`.
    pub fn spawn(client: kube::Client, metrics: Arc<AnnotateMetrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx, metrics));
        Self { tx }
    }

    /// Queues "pod `namespace/name` has parallel address `ip`" (never blocks).
    pub fn publish(&self, namespace: &str, name: &str, ip: Ipv4Addr) {
        let _ = self.tx.send(Job {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ip,
        });
    }
}

/// Counters of the annotation task.
#[derive(Debug, Default)]
pub struct AnnotateMetrics {
    /// Pods annotated.
    pub written: std::sync::atomic::AtomicU64,
    /// Failed patch attempts (each retried, or dropped when the Pod never appeared).
    pub failures: std::sync::atomic::AtomicU64,
}

/// A client from `kubeconfig`, or the in-cluster service account when running in a pod;
/// `None` when neither is available (annotations are then not published).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Option<kube::Client>, AnnotateError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |e: Box<dyn std::error::Error + Send + Sync>| AnnotateError::Kubeconfig {
                path: path.display().to_string(),
                source: e,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| err(e.into()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.into()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(|e| AnnotateError::InCluster(e.into()))?
        }
        None => return Ok(None),
    };
    kube::Client::try_from(config)
        .map(Some)
        .map_err(|e| AnnotateError::InCluster(e.into()))
}

/// A queued annotation waiting for its next attempt.
struct Pending {
    ip: Ipv4Addr,
    due: Instant,
    backoff: Duration,
    /// When the apiserver first said the Pod does not exist.
    missing_since: Option<Instant>,
}

async fn run(
    client: kube::Client,
    mut rx: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<AnnotateMetrics>,
) {
    let mut pending: HashMap<(String, String), Pending> = HashMap::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => {
                    pending.insert((job.namespace, job.name), Pending {
                        ip: job.ip,
                        due: Instant::now(),
                        backoff: FIRST_BACKOFF,
                        missing_since: None,
                    });
                }
                None => return,
            },
            () = sleep_until(next_due) => {}
        }
        let now = Instant::now();
        let due: Vec<_> = pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, p)| (k.clone(), p.ip))
            .collect();
        for ((ns, name), ip) in due {
            let result = patch(&client, &ns, &name, ip).await;
            let key = (ns, name);
            let Some(p) = pending.get_mut(&key) else {
                continue;
            };
            if p.ip != ip {
                continue; // a newer address arrived meanwhile; try that one
            }
            match result {
                Ok(()) => {
                    Metrics::inc(&metrics.written);
                    tracing::debug!(namespace = %key.0, pod = %key.1, %ip, "pod annotated");
                    pending.remove(&key);
                }
                Err(e) => {
                    Metrics::inc(&metrics.failures);
                    let not_found = matches!(&e, kube::Error::Api(s) if s.code == 404);
                    let since = if not_found {
                        *p.missing_since.get_or_insert(now)
                    } else {
                        p.missing_since = None;
                        now
                    };
                    if not_found && now.duration_since(since) >= NOT_FOUND_GIVE_UP {
                        tracing::warn!(namespace = %key.0, pod = %key.1, %ip,
                            "pod not found in the apiserver; its parallel_ip annotation is dropped");
                        pending.remove(&key);
                        continue;
                    }
                    tracing::debug!(namespace = %key.0, pod = %key.1, error = %e,
                        retry_in = ?p.backoff, "annotating pod failed");
                    p.due = now + p.backoff;
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn patch(client: &kube::Client, ns: &str, name: &str, ip: Ipv4Addr) -> kube::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "metadata": { "annotations": { PARALLEL_IP_ANNOTATION: ip.to_string() } }
    });
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}
