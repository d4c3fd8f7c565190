//! Removing every trace of a node (docs/REAL-NODES.md, errors 8 and 9), and checking that
//! nothing is left. The node's mounts all live in its own mount namespace ([`super::mounts`]):
//! killing every process in it (and closing the harness' handle on it) removes them all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Node, cgroups, mounts};

/// Rounds of killing (shims and pod processes outlive containerd and kubelet, and a shim may
/// start a process while we kill).
const KILL_ROUNDS: usize = 40;
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// libcni's result cache (go-cni's default; containerd's CRI has no setting for it): the
/// node's own `/var/lib` is a tmpfs of its mount namespace, so nothing of it may be here.
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// kubelet's fixed directory of container log links (the node's own `/var/log` likewise).
const CONTAINER_LOGS: &str = "/var/log/containers";

/// Kills, unmounts and removes everything of `node`.
pub(super) fn teardown(node: &mut Node) {
    for (_, p) in node.procs.each() {
        if let Some(p) = p {
            p.kill();
        }
    }
    if let (Some(routes), Some(ns)) = (&node.routes, &node.netns) {
        crate::kube::remove_node_route(routes, ns.name());
    }
    let cgroup = node.cgroup();
    let dir = node.dir.clone();
    let mount_ns = node.procs.mounts.as_ref().and_then(|m| m.pinned_id());
    kill_all(&cgroup, Some(&dir), mount_ns);
    if let Some(m) = node.procs.mounts.as_mut() {
        // Nothing runs in the namespace any more: unpinned, it goes with all its mounts.
        m.release();
    }
    unmount_under(&dir);
    remove_cgroups(&cgroup);
    node.netns.take();
    if std::env::var_os("FLEETBOARD_KEEP_KUBE").is_some() {
        return;
    }
    if mounts_under(&dir).is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // Never delete across a mount: a hostPath volume would take host files with it.
        eprintln!(
            "node dir {} still has mounts: not removing it",
            dir.display()
        );
    }
}

/// Kills, in rounds, every process in the node's cgroups, every process whose command line
/// names the node's directory (containerd shims: `-address <dir>/containerd.sock`) and every
/// process in the node's mount namespace `mount_ns` (only while it is pinned: an unpinned id
/// may be reused by any new namespace).
fn kill_all(cgroup: &str, dir: Option<&Path>, mount_ns: Option<&str>) {
    let me = std::process::id();
    for _ in 0..KILL_ROUNDS {
        let mut pids = cgroups::pids(cgroup);
        if let Some(dir) = dir {
            pids.extend(pids_naming(dir));
        }
        if let Some(id) = mount_ns {
            pids.extend(mounts::pids_in(id));
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| *p != me);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety concerns.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// Kills, in rounds, every process in the node's cgroups and every process naming its
/// directory, except `spare` (the mount namespace holder of a node that is only powered off).
pub(super) fn kill_all_but(cgroup: &str, dir: &Path, spare: Option<u32>) {
    let me = std::process::id();
    for _ in 0..KILL_ROUNDS {
        let mut pids = cgroups::pids(cgroup);
        pids.extend(pids_naming(dir));
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| *p != me && Some(*p) != spare);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety concerns.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// Pids whose command line contains a path under `dir` (`<dir>/`: another node's directory
/// may start with the same characters).
fn pids_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmounts (lazily) everything under `dir`, deepest first, in rounds (mounts stack).
fn unmount_under(dir: &Path) {
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let Ok(c) = std::ffi::CString::new(m.to_string_lossy().as_bytes()) else {
                continue;
            };
            // SAFETY: a valid NUL-terminated path; umount2 does not keep the pointer.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Removes the node's cgroups deepest first, in every hierarchy (a cgroup whose last process
/// is still exiting is busy for a moment: rounds).
fn remove_cgroups(cgroup: &str) {
    for _ in 0..KILL_ROUNDS {
        let dirs = cgroups::dirs_deepest_first(cgroup);
        if dirs.is_empty() {
            return;
        }
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        if cgroups::dirs_deepest_first(cgroup).is_empty() {
            return;
        }
        kill_all(cgroup, None, None);
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// The node's entries in the machine's libcni result cache (named
/// `<network>-<container>-<ifname>`): those of its own network, and those of containerd's
/// built-in `cni-loopback` network whose pod netns is under the node's directory.
fn cni_results(cni_network: &str, dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{cni_network}-");
    let netns = format!("\"netns\":\"{}/", dir.display());
    std::fs::read_dir(CNI_RESULTS)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_string_lossy().starts_with(&prefix)
                        || std::fs::read_to_string(e.path())
                            .map(|t| t.contains(&netns))
                            .unwrap_or(false)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The machine's `/var/log/containers` links into the node's directory.
fn container_log_links(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(CONTAINER_LOGS)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.starts_with(dir))
                        .unwrap_or(false)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// What identifies a node on the machine (from [`Node::traces`]), to check after drop.
#[derive(Debug, Clone)]
pub struct NodeTraces {
    /// The node's directory.
    pub dir: PathBuf,
    /// Its cgroup name (under every hierarchy).
    pub cgroup: String,
    /// Its network namespace.
    pub netns: Option<String>,
    /// Its CNI network name.
    pub cni_network: String,
    /// Its mount namespace: the holder's pid and start time (clock ticks after boot), and the
    /// namespace id `mnt:[<inode>]`.
    pub mount_ns: Option<(u32, u64, String)>,
}

impl NodeTraces {
    /// Everything of the node still on the machine (empty once it is gone): processes naming
    /// its directory or in its cgroups, the holder of its mount namespace, mounts under its
    /// directory, cgroups, the network namespace, CNI result cache entries and container log
    /// links on the machine, the directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((pid, started, id)) = &self.mount_ns
            && mounts::start_time(*pid) == Some(*started)
        {
            out.push(format!("mount namespace holder {pid} ({id})"));
        }
        for pid in pids_naming(&self.dir) {
            if pid != std::process::id() {
                out.push(format!("process {pid} names {}", self.dir.display()));
            }
        }
        for pid in cgroups::pids(&self.cgroup) {
            out.push(format!("process {pid} in cgroup {}", self.cgroup));
        }
        for m in mounts_under(&self.dir) {
            out.push(format!("mount {}", m.display()));
        }
        for d in cgroups::dirs_deepest_first(&self.cgroup) {
            out.push(format!("cgroup {}", d.display()));
        }
        if let Some(ns) = &self.netns
            && Path::new("/run/netns").join(ns).exists()
        {
            out.push(format!("netns {ns}"));
        }
        for f in cni_results(&self.cni_network, &self.dir) {
            out.push(format!("cni result {}", f.display()));
        }
        for f in container_log_links(&self.dir) {
            out.push(format!("container log link {}", f.display()));
        }
        if self.dir.exists() {
            out.push(format!("directory {}", self.dir.display()));
        }
        out
    }
}
