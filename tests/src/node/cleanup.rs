//! Removing every trace of a node (docs/REAL-NODES.md, errors 8 and 9), and checking that
//! nothing is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Node, cgroups};

/// Rounds of killing (shims and pod processes outlive containerd and kubelet, and a shim may
/// start a process while we kill).
const KILL_ROUNDS: usize = 40;
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// libcni's result cache (go-cni's default; containerd's CRI has no setting for it).
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// kubelet's fixed directory of container log links.
const CONTAINER_LOGS: &str = "/var/log/containers";

/// Kills, unmounts and removes everything of `node`.
pub(super) fn teardown(node: &mut Node) {
    let procs = &mut node.procs;
    for p in [
        &mut procs.kube_proxy,
        &mut procs.kubelet,
        &mut procs.containerd,
    ]
    .into_iter()
    .flatten()
    {
        p.kill();
    }
    if let (Some(routes), Some(ns)) = (&node.routes, &node.netns) {
        crate::kube::remove_node_route(routes, ns.name());
    }
    let cgroup = node.cgroup();
    let dir = node.dir.clone();
    kill_all(&cgroup, &dir);
    unmount_under(&dir);
    remove_cgroups(&cgroup);
    remove_host_files(&node.cni_network(), &dir);
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

/// Kills, in rounds, every process in the node's cgroups and every process whose command line
/// names the node's directory (containerd shims: `-address <dir>/containerd.sock`).
fn kill_all(cgroup: &str, dir: &Path) {
    let me = std::process::id();
    for _ in 0..KILL_ROUNDS {
        let mut pids = cgroups::pids(cgroup);
        pids.extend(pids_naming(dir));
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
        kill_all(cgroup, Path::new("/nonexistent-fleetboard-node"));
        std::thread::sleep(ROUND_PAUSE);
    }
}

/// The node's files outside its directory: libcni result cache entries (named
/// `<network>-<container>-<ifname>`) and kubelet's `/var/log/containers` links into `dir`.
fn remove_host_files(cni_network: &str, dir: &Path) {
    for f in cni_results(cni_network, dir) {
        let _ = std::fs::remove_file(f);
    }
    for f in container_log_links(dir) {
        let _ = std::fs::remove_file(f);
    }
}

/// The node's entries in libcni's result cache: those of its own network, and those of
/// containerd's built-in `cni-loopback` network whose pod netns is under the node's directory.
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
}

impl NodeTraces {
    /// Everything of the node still on the machine (empty once it is gone): processes naming
    /// its directory or in its cgroups, mounts under its directory, cgroups, the namespace,
    /// CNI result cache entries, container log links, the directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
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
