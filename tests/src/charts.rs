//! The Helm charts of this checkout (`charts/fleetboard`, `charts/fleetboard-agent`), the values
//! files the chart tests use (`tests/charts-values/`), and helpers to install their CRDs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde::Deserialize as _;

use crate::kube::{Tool, eventually};

/// The hub chart's name (folder `charts/fleetboard`).
pub const HUB_CHART: &str = "fleetboard";
/// The member chart's name (folder `charts/fleetboard-agent`).
pub const AGENT_CHART: &str = "fleetboard-agent";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `charts/<name>` in this checkout.
pub fn chart_dir(name: &str) -> PathBuf {
    workspace_root().join("charts").join(name)
}

/// One file of `tests/charts-values/{valid,invalid}/`.
#[derive(Debug, Clone)]
pub struct ValuesFile {
    /// Its path.
    pub path: PathBuf,
    /// The chart it is for: [`HUB_CHART`] (`hub-*.yaml`) or [`AGENT_CHART`] (`agent-*.yaml`).
    pub chart: &'static str,
    /// True in `valid/`.
    pub valid: bool,
    /// The `# expect: <text>` lines: what the error must contain.
    pub expect: Vec<String>,
}

/// Every values file, sorted by path.
pub fn values_files() -> anyhow::Result<Vec<ValuesFile>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts-values");
    let mut files = Vec::new();
    for (sub, valid) in [("valid", true), ("invalid", false)] {
        let dir = root.join(sub);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if !name.ends_with(".yaml") {
                continue;
            }
            let chart = if name.starts_with("hub-") {
                HUB_CHART
            } else if name.starts_with("agent-") {
                AGENT_CHART
            } else {
                anyhow::bail!("{}: name must start with hub- or agent-", path.display());
            };
            let text = std::fs::read_to_string(&path)?;
            let expect = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect:"))
                .map(|s| s.trim().to_string())
                .collect();
            files.push(ValuesFile {
                path,
                chart,
                valid,
                expect,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// `helm` for commands that need no cluster (`lint`, `template`), with its cache, config and
/// data folders under `home` (never the user's).
pub fn helm_offline(home: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(Tool::Helm.path()?);
    c.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", home.join("no-kubeconfig"));
    Ok(c)
}

/// The CRDs in `charts/<chart>/crds/` (every YAML document of every file).
pub fn chart_crds(chart: &str) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let dir = chart_dir(chart).join("crds");
    let mut crds = Vec::new();
    if !dir.exists() {
        return Ok(crds);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("parsing {}", path.display()))?;
            if value.is_null() {
                continue;
            }
            crds.push(
                serde_yaml::from_value(value)
                    .with_context(|| format!("{} is not a CRD", path.display()))?,
            );
        }
    }
    Ok(crds)
}

/// Waits until the CRD `name` is Established.
pub async fn wait_established(
    client: &kube::Client,
    name: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(
        &format!("CRD {name} Established"),
        deadline,
        Duration::from_millis(200),
        || async {
            let crd = crds.get(name).await?;
            let ok = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(ok.then_some(()))
        },
    )
    .await
}

/// Creates the CRDs of `charts/<chart>/crds/` (what `helm install` does first) and waits until
/// each is Established.
pub async fn install_chart_crds(client: &kube::Client, chart: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in chart_crds(chart)? {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("creating CRD {name}"))?;
        wait_established(client, &name, Duration::from_secs(60)).await?;
    }
    Ok(())
}
