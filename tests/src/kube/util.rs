//! Small helpers of the cluster fixture: kubeconfig files, clients, create-if-missing,
//! polling with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Creates `obj` unless it already exists.
pub(crate) async fn create_if_missing<K>(api: &Api<K>, obj: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes a one-context kubeconfig for `server` trusting `ca`, with the given `user` entry.
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: serde_json::Value,
) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "fleetboard-test", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{ "name": "fleetboard-test", "context": {
            "cluster": "fleetboard-test",
            "user": "user",
        }}],
        "current-context": "fleetboard-test",
    });
    let text = serde_yaml::to_string(&config)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A kube-rs client configured from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls the async `f` every `every` until it returns `Ok(Some(v))` or `deadline` passes; the
/// error names `what` and the last failure (the async twin of [`crate::process::wait_for`]).
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::from("condition not met");
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// How many `verb` requests (`GET`, `LIST`, `PATCH`, ...) on `resource` (`nodes`, `pods`, ...)
/// the API server behind `client` has answered, any code: the sum of its
/// `apiserver_request_total` series. What a component did against the API, seen from outside.
pub async fn api_requests(
    client: &kube::Client,
    verb: &str,
    resource: &str,
) -> anyhow::Result<u64> {
    let metrics = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let (verb, resource) = (
        format!("verb=\"{verb}\""),
        format!("resource=\"{resource}\""),
    );
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains(&verb) && l.contains(&resource)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
