//! The node's private mount namespace, held by a `sleep` in the node's `runtime` cgroup:
//! containerd, kubelet and kube-proxy enter it (so do the shims, runc and every container),
//! and the machine's fixed paths that charts use as hostPath volumes (`/var/run/nri`,
//! `/var/lib/<app>`, `/var/run/netns`) and kubelet/libcni write (`/var/log/containers`,
//! `/var/lib/cni`, `/var/lib/kubelet/device-plugins`) are the node's own.
//!
//! Inside (set up once by [`MountNs::start`]):
//! - the namespace is a **slave** of the machine's (`unshare --propagation slave`), then
//!   `mount --make-rshared /`: mounts made in the node (pod netns files, kubelet's volume
//!   mounts) propagate to containers' `HostToContainer` volumes, never back to the machine;
//! - the node's copy of the machine's `/run/netns` is detached first (`umount -l`): it would
//!   pin every network namespace that exists on the machine at that moment;
//! - fresh tmpfs on `/run` (= `/var/run`), `/var/lib` and `/var/log` (nothing of the node's
//!   lives there: binaries are in the tools cache, every config and state dir in the node
//!   directory, which stays the machine's `/tmp/...` in both views);
//! - the node directory's `nri/` bound onto `/run/nri`, so containerd's NRI socket is
//!   `/var/run/nri/nri.sock` for the node and `<dir>/nri/nri.sock` for the machine;
//! - an empty `/run/netns`, where containerd puts the pods' netns files (it would create it
//!   only with the node's first pod: a hostPath of type `Directory` there would keep a first
//!   DaemonSet pod from starting).
//!
//! The namespace and all its mounts vanish with its last process; nothing of it is ever
//! visible in the machine's mount table.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::kube::eventually;
use crate::process::ChildGuard;

/// How long the holder may take to set the namespace up (milliseconds when idle).
const UP_DEADLINE: Duration = Duration::from_secs(60);

/// The holder's script: `$1` names the tmpfs mounts (`<name>-run`, …), `$2` is the node
/// directory's `nri/`. It prints `ready` once every mount is in place.
const SCRIPT: &str = r#"set -e
if mountpoint -q /run/netns; then umount -l /run/netns; fi
mount --make-rshared /
mount -t tmpfs -o mode=0755,size=256m "$1-run" /run
mount -t tmpfs -o mode=0755,size=256m "$1-var-lib" /var/lib
mount -t tmpfs -o mode=0755,size=256m "$1-var-log" /var/log
mkdir /run/nri /run/netns
mount --bind "$2" /run/nri
echo ready
exec sleep infinity
"#;

/// A running node mount namespace and the process that holds it.
pub(super) struct MountNs {
    holder: ChildGuard,
    id: String,
    started: u64,
    /// `/proc/<holder>/ns/mnt`, open: the namespace (and so its id) outlives its processes
    /// until [`MountNs::release`], so cleanup can kill by namespace without ever matching a
    /// new namespace that reuses the id.
    pin: Option<File>,
}

impl MountNs {
    /// Spawns `cmd` (a command that moves itself into the node's cgroup and then execs its
    /// arguments) with `unshare` and the holder script, and waits until the namespace is set up.
    pub(super) async fn start(
        mut cmd: Command,
        name: &str,
        nri_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(nri_dir)
            .with_context(|| format!("creating {}", nri_dir.display()))?;
        cmd.args(["unshare", "--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", SCRIPT, "sh", name])
            .arg(nri_dir);
        let mut holder = ChildGuard::spawn("mount namespace holder", cmd, log)?;
        let waited = eventually(
            "the node's mount namespace set up",
            UP_DEADLINE,
            Duration::from_millis(50),
            || {
                let exited = holder.try_wait();
                let log = holder.log();
                async move {
                    if let Some(st) = exited {
                        return Ok(Some(Err(anyhow::anyhow!("holder exited ({st}): {log}"))));
                    }
                    if log.lines().any(|l| l == "ready") {
                        return Ok(Some(Ok(())));
                    }
                    Ok(None)
                }
            },
        )
        .await;
        waited
            .and_then(|r| r)
            .with_context(|| format!("log {}", log.display()))?;
        let pid = holder.id();
        let id = ns_id(pid).context("the holder has no mount namespace")?;
        anyhow::ensure!(
            Some(&id) != ns_id_of("self").as_ref(),
            "the holder {pid} is still in the machine's mount namespace"
        );
        let pin = File::open(format!("/proc/{pid}/ns/mnt"))
            .with_context(|| format!("opening /proc/{pid}/ns/mnt"))?;
        let started = start_time(pid).context("the holder's start time")?;
        Ok(Self {
            holder,
            id,
            started,
            pin: Some(pin),
        })
    }

    /// The holder's pid (what `nsenter --mount=/proc/<pid>/ns/mnt` enters).
    pub(super) fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// The holder's process.
    pub(super) fn holder(&mut self) -> &mut ChildGuard {
        &mut self.holder
    }

    /// The namespace's id, `mnt:[<inode>]`, while it is pinned (`None` after
    /// [`MountNs::release`]: the id may belong to another namespace then).
    pub(super) fn pinned_id(&self) -> Option<&str> {
        self.pin.as_ref().map(|_| self.id.as_str())
    }

    /// Holder pid, its start time and the namespace id (for [`super::NodeTraces`]).
    pub(super) fn identity(&self) -> (u32, u64, String) {
        (self.pid(), self.started, self.id.clone())
    }

    /// Kills the holder and closes the pin: with no process left in it, the namespace and
    /// all its mounts are gone.
    pub(super) fn release(&mut self) {
        self.holder.kill();
        self.pin.take();
    }

    /// `p` as the node sees it, reachable from the machine: `/proc/<holder>/root/<p>` with
    /// `p`'s symlinks resolved in the node's view (`/var/run` -> `/run`; an absolute link read
    /// through `/proc/<pid>/root` would otherwise lead back to the machine's root).
    pub(super) fn host_path(&self, p: &Path) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root", self.pid()));
        let inside = resolve_in(&root, p);
        root.join(inside.strip_prefix("/").unwrap_or(&inside))
    }
}

/// `p` (relative: from `/`) with every symlink resolved inside `root`, like `realpath -m`
/// (missing components are kept as they are).
fn resolve_in(root: &Path, p: &Path) -> PathBuf {
    let mut pending: Vec<PathBuf> = Vec::new();
    push_components(&mut pending, p);
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == Path::new("..") {
            done.pop();
            continue;
        }
        let next = done.join(&c);
        let on_host = root.join(next.strip_prefix("/").unwrap_or(&next));
        match std::fs::read_link(&on_host) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            }
            _ => done = next,
        }
    }
    done
}

/// Pushes `p`'s components onto the stack `pending` so that the first one is popped first.
fn push_components(pending: &mut Vec<PathBuf>, p: &Path) {
    let parts: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// The mount namespace id (`mnt:[<inode>]`) of process `pid`.
pub(super) fn ns_id(pid: u32) -> Option<String> {
    ns_id_of(&pid.to_string())
}

fn ns_id_of(proc_entry: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{proc_entry}/ns/mnt"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/<pid>/stat`): with
/// the pid, it names one process for good.
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Every pid whose mount namespace is `id`.
pub(super) fn pids_in(id: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns_id(*pid).as_deref() == Some(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let root = std::env::temp_dir().join(format!("fbmounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("run/nri")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../run/nri", root.join("var/nri")).unwrap();
        for (p, want) in [
            ("/var/run/nri/nri.sock", "/run/nri/nri.sock"),
            ("var/nri/x", "/run/nri/x"),
            ("/var/lib/../run/./nri", "/run/nri"),
            ("/../../var/run", "/run"),
            ("/", "/"),
        ] {
            assert_eq!(resolve_in(&root, Path::new(p)), Path::new(want), "{p}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(ns_id(me), ns_id_of("self"));
    }
}
