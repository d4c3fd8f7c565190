//! The node's cgroup, `/<name>` in every hierarchy of the machine (cgroup v1 hybrid: each v1
//! hierarchy plus the unified one; a pure v2 machine has just the one).

use std::path::PathBuf;

use anyhow::Context;

const ROOT: &str = "/sys/fs/cgroup";

/// The mounted hierarchies: `/sys/fs/cgroup` itself on a v2-only machine, else each
/// directory under it that is a hierarchy (symlinked co-mounts such as `cpu` -> `cpu,cpuacct`
/// counted once).
pub(super) fn hierarchies() -> Vec<PathBuf> {
    let root = PathBuf::from(ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(real) = std::fs::canonicalize(e.path()) else {
            continue;
        };
        if real.join("cgroup.procs").exists() && !out.contains(&real) {
            out.push(real);
        }
    }
    out.sort();
    out
}

/// Creates `/<name>`, `/<name>/runtime` and `/<name>/kubelet` everywhere (v1 cpuset children
/// start without cpus and mems: copied down from the root).
pub(super) fn create(name: &str) -> anyhow::Result<()> {
    for h in hierarchies() {
        for sub in ["runtime", "kubelet"] {
            let d = h.join(name).join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        if h.join("cpuset.cpus").exists() && !h.join("cgroup.controllers").exists() {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(h.join(file))?;
                for d in [
                    h.join(name),
                    h.join(name).join("runtime"),
                    h.join(name).join("kubelet"),
                ] {
                    std::fs::write(d.join(file), v.trim())
                        .with_context(|| format!("writing {}", d.join(file).display()))?;
                }
            }
        }
    }
    Ok(())
}

/// The `cgroup.procs` files of `/<name>/<sub>` in every hierarchy (a process writes its pid
/// into each to move itself there).
pub(super) fn procs_files(name: &str, sub: &str) -> anyhow::Result<Vec<String>> {
    hierarchies()
        .into_iter()
        .map(|h| {
            let f = h.join(name).join(sub).join("cgroup.procs");
            f.to_str()
                .map(str::to_string)
                .context("cgroup path is not UTF-8")
        })
        .collect()
}

/// Every directory of `/<name>` in every hierarchy, deepest first.
pub(super) fn dirs_deepest_first(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in hierarchies() {
        collect_dirs(&h.join(name), &mut out);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn collect_dirs(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Pids in `/<name>` (any depth, any hierarchy).
pub(super) fn pids(name: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = dirs_deepest_first(name)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}
