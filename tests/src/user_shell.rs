//! The shell of a user who installs FleetBoard: one Helm configuration (the chart repository
//! is added once, as on a laptop), `kubectl` and `helm` on `PATH`, and a kubeconfig per
//! cluster. Commands printed by the charts' NOTES run here as printed. The shell runs in the
//! host namespace, or on a laptop of the test internet ([`UserShell::in_netns`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

#[cfg(doc)]
use crate::kube::Cluster;
use crate::kube::Tool;
use crate::netns::run;

/// A user's shell environment (files under `home`).
pub struct UserShell {
    home: PathBuf,
    path: String,
    netns: Option<String>,
}

impl UserShell {
    /// Helm's config, cache and data under `home`; the test tools first on `PATH`.
    pub fn new(home: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(home)?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for t in [Tool::Helm, Tool::Kubectl] {
            let p = t.path()?;
            dirs.push(p.parent().context("tool path")?.to_path_buf());
        }
        // kubectl plugins (`kubectl peers`) sit next to the test binaries.
        dirs.push(
            crate::binaries::bin("kubectl-peers")
                .parent()
                .context("bin")?
                .to_path_buf(),
        );
        let mut path = std::env::join_paths(dirs)?
            .into_string()
            .ok()
            .context("PATH")?;
        if let Ok(p) = std::env::var("PATH") {
            path = format!("{path}:{p}");
        }
        Ok(Self {
            home: home.to_path_buf(),
            path,
            netns: None,
        })
    }

    /// The same shell, run inside network namespace `netns` (`ip netns` name).
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_string());
        self
    }

    /// `bash -c script` with `kubeconfig` as `KUBECONFIG` (e.g. [`Cluster::kubeconfig`]);
    /// stdout on success, an error with the script's stderr otherwise.
    pub fn run(&self, kubeconfig: &Path, script: &str) -> anyhow::Result<String> {
        run(self.command(kubeconfig).arg("-c").arg(script))
            .with_context(|| format!("in the user's shell: {script}"))
    }

    /// Runs the member install the hub's `notes` print, as printed: the collecting lines with
    /// the hub's kubeconfig, then `helm install` with the member's (see
    /// [`notes_member_install`]). Returns helm's output (the agent chart's NOTES).
    pub fn install_member_from_notes(
        &self,
        notes: &str,
        hub_kubeconfig: &Path,
        member_kubeconfig: &Path,
        cluster_id: &str,
    ) -> anyhow::Result<String> {
        let (collect, install) = notes_member_install(notes, cluster_id)?;
        let script = format!(
            "set -euo pipefail\nexport KUBECONFIG='{}'\n{collect}\nexport KUBECONFIG='{}'\n{install}\n",
            hub_kubeconfig.display(),
            member_kubeconfig.display()
        );
        run(self.command(member_kubeconfig).arg("-c").arg(&script))
            .with_context(|| format!("the NOTES' member install for {cluster_id}:\n{script}"))
    }

    /// The bare command (`bash`), with the user's environment and `kubeconfig`.
    pub fn command(&self, kubeconfig: &Path) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("bash");
                c
            }
            None => Command::new("bash"),
        };
        c.env("PATH", &self.path)
            .env("HOME", &self.home)
            .env("HELM_CACHE_HOME", self.home.join(".cache/helm"))
            .env("HELM_CONFIG_HOME", self.home.join(".config/helm"))
            .env("HELM_DATA_HOME", self.home.join(".local/share/helm"))
            .env("KUBECONFIG", kubeconfig)
            .env_remove("HELM_KUBECONTEXT");
        c
    }
}

/// The member install of the hub chart's NOTES, ready to run: the lines that collect the hub's
/// URL, token and CA (run against the hub), then the `helm install` command with its
/// continuation lines (run against the member), `<member-cluster-id>` replaced by `cluster_id`.
/// Nothing else is changed.
pub fn notes_member_install(notes: &str, cluster_id: &str) -> anyhow::Result<(String, String)> {
    let collect: Vec<&str> = notes
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["HUB_URL=", "HUB_TOKEN=", "HUB_CA="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    anyhow::ensure!(
        collect.len() == 3,
        "NOTES: expected the HUB_URL, HUB_TOKEN and HUB_CA lines:\n{notes}"
    );
    let mut install = Vec::new();
    let mut lines = notes.lines().map(str::trim);
    for l in lines.by_ref() {
        if l.starts_with("helm install fleetboard-agent") {
            install.push(l);
            break;
        }
    }
    anyhow::ensure!(!install.is_empty(), "NOTES: no helm install line:\n{notes}");
    while install.last().is_some_and(|l| l.ends_with('\\')) {
        install.push(
            lines
                .next()
                .context("NOTES: the helm install command is cut")?,
        );
    }
    let install = install
        .join("\n")
        .replace("<member-cluster-id>", cluster_id);
    Ok((collect.join("\n"), install))
}
