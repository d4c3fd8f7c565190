//! containerd v2 of a node: its config (every path under the node's directory, NRI on, CRI
//! with the CNI template), the process, and the image imports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::{Node, NodeOptions};
use crate::kube::{Tool, eventually};
use crate::process::ChildGuard;

/// How long containerd may take to answer on its socket (under a second when idle).
const UP_DEADLINE: Duration = Duration::from_secs(90);

/// The containerd config (`version = 4`, containerd v2.4; `containerd config default` shows
/// every key). Paths are the node's view: the node directory (the same in both views) and, for
/// the NRI socket and pod netns files, the node's private `/var/run`.
fn config(dir: &Path, pause_image: &str, cni_template: &Path) -> anyhow::Result<String> {
    let d = dir.display();
    let runc = std::env::var("RUNC").unwrap_or_else(|_| "/usr/sbin/runc".to_string());
    let cni_bin = super::cni::plugins_dir()?;
    Ok(format!(
        r#"version = 4
root = "{d}/containerd/root"
state = "{d}/containerd/state"
temp = "{d}/containerd/tmp"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs", "io.containerd.server.v1.grpc-tcp"]

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.server.v1.grpc"]
    address = "{d}/containerd.sock"
  [plugins."io.containerd.server.v1.ttrpc"]
    address = "{d}/containerd.sock.ttrpc"
  [plugins."io.containerd.server.v1.debug"]
    address = ""
  [plugins."io.containerd.server.v1.metrics"]
    address = ""
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/containerd/opt"
  [plugins."io.containerd.image-verifier.v1.bindir"]
    bin_dir = "{d}/containerd/image-verifier"
  [plugins."io.containerd.shim.v1.manager"]
    socket_dir = "{d}/s"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{pause_image}"

  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    disable_apparmor = true
    # Machines without CAP_SYS_RESOURCE cannot lower oom_score_adj (pause asks for -998):
    # clamp every container's to at least containerd's own.
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    # Pod netns bind mounts in /var/run/netns of the node's own mount namespace (what NRI
    # reports and a hostPath /var/run/netns shows).
    netns_mounts_under_state_dir = false
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{d}/runc"
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{d}/cni/net.d"
      max_conf_num = 1
      conf_template = "{template}"

  [plugins."io.containerd.nri.v1.nri"]
    disable = false
    socket_path = "{nri_socket}"
    plugin_path = "{d}/nri/plugins"
    plugin_config_path = "{d}/nri/conf.d"
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "2s"
"#,
        cni_bin = cni_bin.display(),
        template = cni_template.display(),
        nri_socket = super::NODE_NRI_SOCKET,
    ))
}

/// Writes the config and starts containerd in the node's namespaces and `runtime` cgroup.
pub(super) fn start(
    node: &Node,
    opts: &NodeOptions,
    cni_template: &Path,
) -> anyhow::Result<ChildGuard> {
    let dir = &node.dir;
    for d in [
        "containerd/root",
        "containerd/state",
        "containerd/tmp",
        "s",
        "nri/plugins",
        "nri/conf.d",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let path = dir.join("containerd.toml");
    std::fs::write(&path, config(dir, &opts.pause_image, cni_template)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let shim = Tool::ContainerdShim.path()?;
    let shim_dir = shim.parent().context("shim path has no parent")?;
    let mut cmd = node.command(&Tool::Containerd.path()?, "runtime")?;
    cmd.arg("--config").arg(&path).env(
        "PATH",
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            shim_dir.display()
        ),
    );
    ChildGuard::spawn("containerd", cmd, &dir.join("containerd.log"))
}

/// `ctr --address <node's socket> -n k8s.io <args>`.
fn ctr(socket: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(Tool::Ctr.path()?);
    c.arg("--address").arg(socket).args(["-n", "k8s.io"]);
    Ok(c)
}

/// Waits until containerd answers on its socket.
pub(super) async fn wait_ready(socket: &Path, containerd: &mut ChildGuard) -> anyhow::Result<()> {
    let socket = socket.to_path_buf();
    let log = containerd.log_path().to_path_buf();
    let pid_alive = move |c: &mut ChildGuard| c.try_wait();
    let mut exited = None;
    let res = eventually(
        "containerd up",
        UP_DEADLINE,
        Duration::from_millis(200),
        || {
            exited = exited.or_else(|| pid_alive(containerd));
            let socket = socket.clone();
            async move {
                if let Some(st) = exited {
                    anyhow::bail!("containerd exited ({st})");
                }
                let mut c = ctr(&socket)?;
                c.arg("version");
                let ok = tokio::task::spawn_blocking(move || crate::netns::run(&mut c)).await?;
                Ok(ok.ok().map(|_| ()))
            }
        },
    )
    .await;
    res.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; log {}:\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}

/// Imports the OCI archives into the `k8s.io` namespace (what CRI uses), concurrently.
pub(super) async fn import_images(node: &Node, archives: &[PathBuf]) -> anyhow::Result<()> {
    let socket = node.containerd_socket();
    let jobs = archives.iter().map(|a| {
        let socket = socket.clone();
        let a = a.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut c = ctr(&socket)?;
            c.args(["images", "import"]).arg(&a);
            crate::netns::run(&mut c).with_context(|| format!("importing {}", a.display()))?;
            Ok(())
        })
    });
    for r in futures::future::join_all(jobs).await {
        r??;
    }
    Ok(())
}
