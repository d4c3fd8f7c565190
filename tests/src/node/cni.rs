//! The node's CNI network: a bridge `cni0` with host-local IPAM over the node's podCIDR.
//! containerd renders the template (`conf_template`) once kubelet passes it
//! `node.spec.podCIDR` (allocated by kube-controller-manager) through CRI
//! `UpdateRuntimeConfig`, and reports NetworkReady only then.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The CNI plugins directory (bridge, host-local, loopback, portmap): `$CNI_PLUGINS`, else
/// Debian's `containernetworking-plugins` in `/usr/lib/cni`.
pub(super) fn plugins_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os(crate::kube::Tool::CniPlugins.env_var())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/cni"));
    anyhow::ensure!(
        dir.join("bridge").is_file() && dir.join("host-local").is_file(),
        "no CNI plugins in {} (set CNI_PLUGINS or `apt-get install containernetworking-plugins`)",
        dir.display()
    );
    Ok(dir)
}

/// Writes `<dir>/cni/template.conflist` (network `network`) and makes `cni/net.d` and
/// `cni/ipam`; returns the template's path.
pub(super) fn write_template(dir: &Path, network: &str) -> anyhow::Result<PathBuf> {
    let cni = dir.join("cni");
    for d in ["net.d", "ipam"] {
        std::fs::create_dir_all(cni.join(d))?;
    }
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": cni.join("ipam"),
                    "ranges": [[{ "subnet": "{{.PodCIDR}}" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    let path = cni.join("template.conflist");
    std::fs::write(&path, serde_json::to_string_pretty(&conf)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
