//! Reading the Peer objects from the hub's apiserver, with errors a user can act on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fleetboard_control::crd::peer::Peer;
use fleetboard_control::membership::MembershipError;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long connecting to the apiserver may take before the hub counts as unreachable (a
/// healthy apiserver answers in milliseconds; kubectl's own default is 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one answer may take (a list of a few hundred Peers is small).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which apiserver and namespace to read.
#[derive(Debug, Clone)]
pub struct Target {
    /// Kubeconfig file (None: `$KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (None: its current context).
    pub context: Option<String>,
    /// The hub's shared namespace.
    pub namespace: String,
}

/// A client of the hub's apiserver and what the kubeconfig says about it.
pub struct Hub {
    /// The client.
    pub client: kube::Client,
    /// The apiserver's URL, for messages.
    pub url: String,
    /// The kubeconfig's entry for the selected context's cluster (server, CA).
    pub cluster: kube::config::Cluster,
}

/// Connects to the apiserver of the target's kubeconfig and context (no request yet).
pub async fn connect(target: &Target) -> anyhow::Result<Hub> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let (kubeconfig, mut config) = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?;
            (kubeconfig, config)
        }
        None => {
            const HINT: &str =
                "loading the kubeconfig ($KUBECONFIG or ~/.kube/config; or pass --kubeconfig)";
            let kubeconfig = Kubeconfig::read().context(HINT)?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
                .await
                .context(HINT)?;
            (kubeconfig, config)
        }
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Hub {
        client,
        url,
        cluster: selected_cluster(&kubeconfig, target.context.as_deref()).unwrap_or_default(),
    })
}

/// The cluster entry of `context` (else the current context), as kube's loader picks it.
fn selected_cluster(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
) -> Option<kube::config::Cluster> {
    let name = context.or(kubeconfig.current_context.as_deref())?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?;
    kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .clone()
}

/// Every Peer in the target namespace.
pub async fn list_peers(target: &Target) -> anyhow::Result<Vec<Peer>> {
    let hub = connect(target).await?;
    list_peers_of(&hub, &target.namespace).await
}

/// Every Peer in `namespace` of `hub`.
pub async fn list_peers_of(hub: &Hub, namespace: &str) -> anyhow::Result<Vec<Peer>> {
    let peers: Api<Peer> = Api::namespaced(hub.client.clone(), namespace);
    match peers.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(e) => Err(explain(e, &hub.url, namespace)),
    }
}

/// A membership error with what the user needs to act on it (the API's answer explained).
pub fn explain_membership(e: MembershipError, url: &str) -> anyhow::Error {
    let MembershipError::Api { what, source } = e else {
        return e.into();
    };
    match source {
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
            "{what}: the hub's apiserver at {url} refused the credentials (401 Unauthorized): {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "{what}: not allowed (403 Forbidden): {}; join and remove need the hub admin's \
             kubeconfig (they create and delete namespaces, ServiceAccounts and RBAC bindings)",
            s.message
        ),
        kube::Error::Api(s) => anyhow::anyhow!(
            "{what} at {url} failed ({} {}): {}",
            s.code,
            s.reason,
            s.message
        ),
        other => anyhow::anyhow!(
            "the hub is unreachable: cannot reach the Kubernetes API at {url}: {} ({what})",
            chain(&other)
        ),
    }
}

/// Turns a client error into the message a user needs.
fn explain(e: kube::Error, url: &str, namespace: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "the Peer CRD (peers.fleetboard.io) is not installed in this cluster: install the \
             fleetboard hub chart (server {url}: {})",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
            "the hub's apiserver at {url} refused the credentials (401 Unauthorized): {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "not allowed to list peers.fleetboard.io in namespace {namespace} (403 Forbidden): {}",
            s.message
        ),
        kube::Error::Api(s) => anyhow::anyhow!(
            "listing peers.fleetboard.io in namespace {namespace} at {url} failed ({}): {}",
            s.code,
            s.message
        ),
        other => anyhow::anyhow!(
            "the hub is unreachable: cannot reach the Kubernetes API at {url}: {}",
            chain(&other)
        ),
    }
}

/// An error with its causes, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
