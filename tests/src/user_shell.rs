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

    /// Joins member `cluster_id` as the hub's `notes` say (`kubectl peers join`, with the
    /// hub's kubeconfig), then runs the `helm install` that join printed, as printed, with the
    /// member's. Returns helm's output (the agent chart's NOTES).
    pub fn install_member_from_notes(
        &self,
        notes: &str,
        hub_kubeconfig: &Path,
        member_kubeconfig: &Path,
        cluster_id: &str,
    ) -> anyhow::Result<String> {
        let join = notes_join_command(notes, cluster_id)?;
        let install = self
            .run(hub_kubeconfig, &join)
            .with_context(|| format!("joining {cluster_id} as the hub NOTES say"))?;
        anyhow::ensure!(
            install
                .trim_start()
                .starts_with("helm install fleetboard-agent"),
            "{join} printed no helm install:\n{install}"
        );
        let script = format!("set -euo pipefail\n{install}\n");
        run(self.command(member_kubeconfig).arg("-c").arg(&script))
            .with_context(|| format!("the member install join printed for {cluster_id}"))
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

/// The join command of the hub chart's NOTES (`kubectl peers join <member-cluster-id> ...`),
/// `<member-cluster-id>` replaced by `cluster_id`. Nothing else is changed.
pub fn notes_join_command(notes: &str, cluster_id: &str) -> anyhow::Result<String> {
    notes
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kubectl peers join <member-cluster-id>"))
        .map(|l| l.replace("<member-cluster-id>", cluster_id))
        .with_context(|| format!("NOTES: no `kubectl peers join` line:\n{notes}"))
}
