//! The pod's parallel interface: a veth pair with the pod end (`eth-fleet`) in the pod's network
//! namespace and the node end where the dataplane receives traffic.
//!
//! Layout (pod address `P`, gateway `G`, both from the node's sub-block):
//! - pod: `P/32` on `eth-fleet`, `G dev eth-fleet scope link`, then every routed block (tunnel
//!   CIDR, service block) `via G dev eth-fleet`. The pod's default route stays untouched.
//! - node: `G/32` on the node end (the same gateway address on every pod's veth) and
//!   `P/32 dev <node end>`, so the node namespace (and the dataplane's TUN there) reaches the pod.
//!
//! The changes are made with iproute2 (`ip -batch`, entering namespaces with `nsenter`), which
//! stops at the first failing line; a failure undoes the pair, so no pod is left half-configured.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::config::PluginConfig;

/// Prefix of the node-side interface names (`fbn` + 12 hex digits of a hash of the pod id).
pub const NODE_IF_PREFIX: &str = "fbn";

/// A failure to configure or clean up a pod's interface.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct NetError {
    /// The step that failed.
    pub what: String,
    /// The tool's message.
    pub detail: String,
}

/// Name of the node-side veth end of `pod_id` (15 bytes, stable across restarts).
pub fn node_ifname(pod_id: &str) -> String {
    // FNV-1a 64: stable, dependency-free; 48 bits make collisions among a node's pods negligible.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{NODE_IF_PREFIX}{:012x}", h >> 16)
}

/// What the interface setup needs from the configuration.
#[derive(Debug, Clone)]
pub struct PodNet {
    node_netns: Option<PathBuf>,
    pod_if: String,
    gateway: Ipv4Addr,
    routes: Vec<ipnet::Ipv4Net>,
    mtu: u32,
}

impl PodNet {
    /// Takes the relevant part of the plugin configuration.
    pub fn new(cfg: &PluginConfig) -> Self {
        Self {
            node_netns: cfg.node_netns.clone(),
            pod_if: cfg.pod_interface.clone(),
            gateway: cfg.gateway,
            routes: cfg.routes.clone(),
            mtu: cfg.mtu,
        }
    }

    /// Creates the pod's interface with address `ip`; on failure nothing is left behind.
    pub async fn setup(
        &self,
        pod_id: &str,
        pod_netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        let node_if = node_ifname(pod_id);
        // Leftovers of an interrupted earlier attempt (crash, retry) go first.
        let _ = self.remove_node_if(&node_if).await;
        let _ = ip_batch(Some(pod_netns), &format!("link del dev {}\n", self.pod_if)).await;

        let mut add = format!("link add name {node_if} mtu {} ", self.mtu);
        if let Some(ns) = &self.node_netns {
            add += &format!("netns {} ", ns.display());
        }
        add += &format!(
            "type veth peer name {} mtu {} netns {}\n",
            self.pod_if,
            self.mtu,
            pod_netns.display()
        );
        ip_batch(None, &add).await.map_err(|detail| NetError {
            what: format!("creating the veth pair {node_if}/{}", self.pod_if),
            detail,
        })?;

        let gw = self.gateway;
        let dev = &self.pod_if;
        let mut pod = format!(
            "link set dev {dev} up\naddr add {ip}/32 dev {dev}\nroute add {gw}/32 dev {dev} scope link\n"
        );
        for r in &self.routes {
            pod += &format!("route add {r} via {gw} dev {dev}\n");
        }
        let node = format!(
            "link set dev {node_if} up\naddr add {gw}/32 dev {node_if}\nroute add {ip}/32 dev {node_if} scope link\n"
        );
        let res = match ip_batch(Some(pod_netns), &pod).await {
            Err(detail) => Err(NetError {
                what: format!("configuring {dev} in {}", pod_netns.display()),
                detail,
            }),
            Ok(()) => ip_batch(self.node_netns.as_deref(), &node)
                .await
                .map_err(|detail| NetError {
                    what: format!("configuring the node side {node_if}"),
                    detail,
                }),
        };
        if res.is_err() {
            let _ = self.remove_node_if(&node_if).await;
        }
        res
    }

    /// Removes the pod's veth pair (deleting the node end deletes both); succeeds when it is
    /// already gone.
    pub async fn teardown(&self, pod_id: &str) -> Result<(), NetError> {
        let node_if = node_ifname(pod_id);
        match self.remove_node_if(&node_if).await {
            Ok(()) => Ok(()),
            Err(detail) if is_missing(&detail) => Ok(()),
            Err(detail) => Err(NetError {
                what: format!("deleting {node_if}"),
                detail,
            }),
        }
    }

    /// True when the pod's interface exists in `pod_netns` with address `ip` and its node end
    /// exists too.
    pub async fn is_configured(&self, pod_id: &str, pod_netns: &Path, ip: Ipv4Addr) -> bool {
        let pod = ip_output(
            Some(pod_netns),
            &["-o", "-4", "addr", "show", "dev", &self.pod_if],
        )
        .await;
        let node = ip_output(
            self.node_netns.as_deref(),
            &["-o", "link", "show", "dev", &node_ifname(pod_id)],
        )
        .await;
        matches!(pod, Ok(s) if s.contains(&format!(" {ip}/32 "))) && node.is_ok()
    }

    /// Names of the node-side veth ends made by this plugin (prefix [`NODE_IF_PREFIX`]).
    pub async fn node_interfaces(&self) -> Result<Vec<String>, NetError> {
        let out = ip_output(
            self.node_netns.as_deref(),
            &["-o", "link", "show", "type", "veth"],
        )
        .await
        .map_err(|detail| NetError {
            what: "listing node-side interfaces".into(),
            detail,
        })?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(NODE_IF_PREFIX) && n.len() == NODE_IF_PREFIX.len() + 12)
            .collect())
    }

    /// Deletes a node-side interface by name.
    pub async fn remove_node_if(&self, node_if: &str) -> Result<(), String> {
        ip_batch(
            self.node_netns.as_deref(),
            &format!("link del dev {node_if}\n"),
        )
        .await
    }
}

fn is_missing(msg: &str) -> bool {
    msg.contains("Cannot find device") || msg.contains("does not exist")
}

/// `ip` with arguments, run inside `netns` when given; returns stdout.
async fn ip_output(netns: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let out = ip_command(netns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `ip -batch -` with `script`, inside `netns` when given; stops at the first failing line.
async fn ip_batch(netns: Option<&Path>, script: &str) -> Result<(), String> {
    let mut child = ip_command(netns)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running ip: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| format!("writing to ip: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn ip_command(netns: Option<&Path>) -> tokio::process::Command {
    match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("ip");
            c
        }
        None => tokio::process::Command::new("ip"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_stable_and_short() {
        let a = node_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(NODE_IF_PREFIX));
        assert_eq!(
            a,
            node_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_ne!(a, node_ifname("other"));
    }
}
