//! Crash-safe address management for the node's sub-block.
//!
//! Every change is written to disk before the caller acts on it: the whole state goes to
//! `<file>.tmp`, is fsync'ed, renamed over `<file>` and the folder is fsync'ed. A crash leaves
//! either the old or the new state, never a torn one, so a restarted plugin never hands out an
//! address twice. Addresses are chosen next-fit from a persisted cursor, so a freed address is
//! reused as late as possible (stale conntrack entries and caches elsewhere age out first).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Version of the on-disk format.
const STATE_VERSION: u32 = 1;

/// Errors of the address manager.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the block is taken.
    #[error("no free address left in {block} ({used} in use)")]
    Exhausted {
        /// The node's sub-block.
        block: Ipv4Net,
        /// Addresses in use.
        used: usize,
    },
    /// The state file exists but cannot be understood; it is left untouched.
    #[error(
        "IPAM state {path} is unreadable ({reason}); fix or remove it (pods keep their interfaces)"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the state failed.
    #[error("IPAM state {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One pod's allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod's address on `eth-fleet`.
    pub ip: Ipv4Addr,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Kubernetes name of the pod.
    pub name: String,
}

/// Reads the allocations recorded in a state file (pod sandbox id -> record), for readers
/// such as the agent that publishes `router.fleetboard.io/parallel_ip` on the pods. A missing
/// file means no allocations.
pub fn read_allocations(path: &Path) -> Result<BTreeMap<String, PodRecord>, IpamError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(IpamError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let s: IpamState = serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(s.pods)
}

/// What is persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IpamState {
    version: u32,
    /// Offset in the block where the next search starts.
    cursor: u32,
    /// Allocations by pod sandbox id.
    pods: BTreeMap<String, PodRecord>,
}

/// The address manager of one node's sub-block, backed by a state file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    block: Ipv4Net,
    gateway: Ipv4Addr,
    state: IpamState,
    used: HashSet<Ipv4Addr>,
}

impl Ipam {
    /// Opens (or starts) the state at `path` for `block`, never handing out `gateway`.
    ///
    /// Records outside `block` (the block changed) are kept until their pods go away.
    pub fn open(path: &Path, block: Ipv4Net, gateway: Ipv4Addr) -> Result<Self, IpamError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let s: IpamState =
                    serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                if s.version != STATE_VERSION {
                    return Err(IpamError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("unknown version {}", s.version),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState {
                version: STATE_VERSION,
                ..Default::default()
            },
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut used = HashSet::new();
        for (id, rec) in &state.pods {
            if !used.insert(rec.ip) {
                return Err(IpamError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("address {} recorded twice (pod {id})", rec.ip),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            block,
            gateway,
            state,
            used,
        })
    }

    /// The allocation of `pod_id`, if any.
    pub fn get(&self, pod_id: &str) -> Option<&PodRecord> {
        self.state.pods.get(pod_id)
    }

    /// All allocations by pod sandbox id.
    pub fn pods(&self) -> impl Iterator<Item = (&String, &PodRecord)> {
        self.state.pods.iter()
    }

    /// Number of allocations.
    pub fn len(&self) -> usize {
        self.state.pods.len()
    }

    /// True when nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.state.pods.is_empty()
    }

    /// Allocates an address for `pod_id` (or returns the one it has) and persists it before
    /// returning.
    pub fn allocate(
        &mut self,
        pod_id: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(rec) = self.state.pods.get(pod_id) {
            return Ok(rec.ip);
        }
        let base = u32::from(self.block.network());
        let size: u64 = 1u64 << (32 - self.block.prefix_len());
        let start = u64::from(self.state.cursor) % size;
        let mut found = None;
        for step in 0..size {
            let off = ((start + step) % size) as u32;
            let ip = Ipv4Addr::from(base.wrapping_add(off));
            if self.usable(ip) && !self.used.contains(&ip) {
                found = Some((off, ip));
                break;
            }
        }
        let (off, ip) = found.ok_or(IpamError::Exhausted {
            block: self.block,
            used: self.used.len(),
        })?;
        self.state.cursor = off.wrapping_add(1);
        self.state.pods.insert(
            pod_id.to_string(),
            PodRecord {
                ip,
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        );
        self.used.insert(ip);
        if let Err(e) = self.persist() {
            self.state.pods.remove(pod_id);
            self.used.remove(&ip);
            return Err(e);
        }
        Ok(ip)
    }

    /// Frees the address of `pod_id` (no-op when it has none) and persists the change.
    pub fn release(&mut self, pod_id: &str) -> Result<Option<PodRecord>, IpamError> {
        let Some(rec) = self.state.pods.remove(pod_id) else {
            return Ok(None);
        };
        self.used.remove(&rec.ip);
        self.persist()?;
        Ok(Some(rec))
    }

    /// Frees every allocation whose pod id fails `keep`; returns what was freed.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<Vec<(String, PodRecord)>, IpamError> {
        let gone: Vec<String> = self
            .state
            .pods
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        let mut freed = Vec::with_capacity(gone.len());
        for id in gone {
            if let Some(rec) = self.state.pods.remove(&id) {
                self.used.remove(&rec.ip);
                freed.push((id, rec));
            }
        }
        if !freed.is_empty() {
            self.persist()?;
        }
        Ok(freed)
    }

    /// Whether `ip` may be handed to a pod: inside the block, not its network or broadcast
    /// address (for blocks larger than /31), not the gateway.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        if !self.block.contains(&ip) || ip == self.gateway {
            return false;
        }
        self.block.prefix_len() >= 31
            || (ip != self.block.network() && ip != self.block.broadcast())
    }

    /// Write-and-rename with fsync of the file and its folder.
    fn persist(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test's state file, removed when the test ends (pass or fail).
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("fb-ipam-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn state(&self) -> PathBuf {
            self.0.join("state.json")
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn allocations_survive_reopen_and_never_repeat() {
        let dir = Tmp::new("reopen");
        let path = dir.state();
        let block: Ipv4Net = "100.64.7.0/29".parse().unwrap();
        let gw: Ipv4Addr = "100.64.7.1".parse().unwrap();
        let mut ipam = Ipam::open(&path, block, gw).unwrap();
        let a = ipam.allocate("a", "ns", "a").unwrap();
        let b = ipam.allocate("b", "ns", "b").unwrap();
        assert_eq!(ipam.allocate("a", "ns", "a").unwrap(), a, "idempotent");
        drop(ipam);
        let mut ipam = Ipam::open(&path, block, gw).unwrap();
        assert_eq!(ipam.get("a").unwrap().ip, a);
        let mut all = vec![a, b];
        // 8 addresses - network - broadcast - gateway = 5 usable.
        for id in ["c", "d", "e"] {
            all.push(ipam.allocate(id, "ns", id).unwrap());
        }
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), 5);
        assert!(!set.contains(&gw));
        assert!(matches!(
            ipam.allocate("f", "ns", "f"),
            Err(IpamError::Exhausted { .. })
        ));
        ipam.release("c").unwrap();
        assert_eq!(ipam.release("c").unwrap(), None, "idempotent release");
        let freed = ipam.retain(|id| id != "d").unwrap();
        assert_eq!(freed.len(), 1);
        assert_eq!(ipam.len(), 3);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = Tmp::new("corrupt");
        let path = dir.state();
        std::fs::write(&path, b"{not json").unwrap();
        let err = Ipam::open(
            &path,
            "100.64.8.0/24".parse().unwrap(),
            "100.64.8.1".parse().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
