//! API server outages: stop a cluster's kube-apiserver (SIGKILL, like a crash or a node
//! going away) and start it again on the same address, port and etcd data, so clients see
//! refused connections for the outage and the same API afterwards.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Cluster, READY_POLL};
use crate::process::ChildGuard;

/// How long a restarted apiserver may take to say ready (a busy 2-core machine).
const RESTART_DEADLINE: Duration = Duration::from_secs(120);

/// The program, arguments and log of a cluster's apiserver.
pub(super) struct ApiserverCommand {
    program: OsString,
    args: Vec<OsString>,
    log: PathBuf,
}

impl ApiserverCommand {
    /// What `cmd` runs, logging to `log`.
    pub(super) fn of(cmd: &Command, log: &Path) -> Self {
        Self {
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(|a| a.to_owned()).collect(),
            log: log.to_path_buf(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

impl Cluster {
    /// Kills the kube-apiserver (etcd keeps running): from now on every request is refused.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// True while the kube-apiserver process runs.
    pub fn apiserver_running(&mut self) -> bool {
        self.apiserver.id() != 0 && self.apiserver.try_wait().is_none()
    }

    /// Starts the kube-apiserver again as it was first started (same port, certificates and
    /// etcd data; its log appended) and waits until `/readyz` says ok. Returns how long it
    /// took to be ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.apiserver.kill();
        let cmd = &self.apiserver_cmd;
        self.apiserver = ChildGuard::spawn("kube-apiserver", cmd.command(), &cmd.log)?;
        let deadline = began + RESTART_DEADLINE;
        loop {
            if let Some(status) = self.apiserver.try_wait() {
                anyhow::bail!(
                    "restarted kube-apiserver exited ({status}); log {}:\n{}",
                    cmd.log.display(),
                    super::tail(&self.apiserver.log(), 40)
                );
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let last = match self.client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(began.elapsed()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "restarted kube-apiserver not ready after {RESTART_DEADLINE:?}: {last}"
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}
