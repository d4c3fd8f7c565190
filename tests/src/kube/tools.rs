//! Where the Kubernetes binaries built by `tests/k8s/tools ensure` are.

use std::path::PathBuf;
use std::process::Command;

/// One of the binaries `tests/k8s/tools` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `kube-apiserver` from k8s.io/kubernetes.
    KubeApiserver,
    /// `etcd` from go.etcd.io/etcd/server/v3.
    Etcd,
    /// `kubectl` from k8s.io/kubernetes.
    Kubectl,
    /// `helm` from helm.sh/helm/v3.
    Helm,
    /// `kubelet` from k8s.io/kubernetes.
    Kubelet,
    /// `kube-controller-manager` from k8s.io/kubernetes.
    KubeControllerManager,
    /// `kube-scheduler` from k8s.io/kubernetes.
    KubeScheduler,
    /// `kube-proxy` from k8s.io/kubernetes.
    KubeProxy,
    /// `containerd` from github.com/containerd/containerd/v2.
    Containerd,
    /// `ctr`, containerd's client, from github.com/containerd/containerd/v2.
    Ctr,
    /// `containerd-shim-runc-v2` from github.com/containerd/containerd/v2. containerd finds it
    /// through `PATH` (`tests/k8s/tools env` puts its directory there).
    ContainerdShim,
    /// `coredns` from github.com/coredns/coredns.
    CoreDns,
    /// The directory holding the CNI plugins `bridge`, `host-local`, `loopback` and `portmap`
    /// from github.com/containernetworking/plugins (what containerd's CNI `bin_dirs` wants).
    CniPlugins,
    /// `pause`, PID 1 of a pod sandbox, built from `tests/k8s/pause`.
    Pause,
}

impl Tool {
    /// The environment variable `tests/k8s/tools env` sets to the binary's path.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "KUBE_APISERVER",
            Tool::Etcd => "ETCD",
            Tool::Kubectl => "KUBECTL",
            Tool::Helm => "HELM",
            Tool::Kubelet => "KUBELET",
            Tool::KubeControllerManager => "KUBE_CONTROLLER_MANAGER",
            Tool::KubeScheduler => "KUBE_SCHEDULER",
            Tool::KubeProxy => "KUBE_PROXY",
            Tool::Containerd => "CONTAINERD",
            Tool::Ctr => "CTR",
            Tool::ContainerdShim => "CONTAINERD_SHIM_RUNC_V2",
            Tool::CoreDns => "COREDNS",
            Tool::CniPlugins => "CNI_PLUGINS",
            Tool::Pause => "PAUSE",
        }
    }

    /// The component name used by `tests/k8s/tools path <name>`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "kube-apiserver",
            Tool::Etcd => "etcd",
            Tool::Kubectl => "kubectl",
            Tool::Helm => "helm",
            Tool::Kubelet => "kubelet",
            Tool::KubeControllerManager => "kube-controller-manager",
            Tool::KubeScheduler => "kube-scheduler",
            Tool::KubeProxy => "kube-proxy",
            Tool::Containerd => "containerd",
            Tool::Ctr => "ctr",
            Tool::ContainerdShim => "containerd-shim-runc-v2",
            Tool::CoreDns => "coredns",
            Tool::CniPlugins => "cni-plugins",
            Tool::Pause => "pause",
        }
    }

    /// Every tool, in the order `tests/k8s/tools` lists them.
    pub const ALL: [Tool; 14] = [
        Tool::KubeApiserver,
        Tool::Etcd,
        Tool::Kubectl,
        Tool::Helm,
        Tool::Kubelet,
        Tool::KubeControllerManager,
        Tool::KubeScheduler,
        Tool::KubeProxy,
        Tool::Containerd,
        Tool::Ctr,
        Tool::ContainerdShim,
        Tool::CoreDns,
        Tool::CniPlugins,
        Tool::Pause,
    ];

    /// Whether the tool is a directory of binaries ([`Tool::CniPlugins`]) rather than one binary.
    pub fn is_dir(self) -> bool {
        matches!(self, Tool::CniPlugins)
    }

    /// Whether `p` is what this tool should be: a file, or for [`Tool::CniPlugins`] a directory.
    fn exists(self, p: &std::path::Path) -> bool {
        if self.is_dir() {
            p.is_dir()
        } else {
            p.is_file()
        }
    }

    /// The binary's path (for [`Tool::CniPlugins`] the directory of the plugins): the
    /// environment variable when set (`eval "$(tests/k8s/tools env)"`), else the pinned version
    /// in the tools cache. Errors with the command that builds it.
    pub fn path(self) -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            let p = PathBuf::from(p);
            anyhow::ensure!(
                self.exists(&p),
                "{}={} does not exist: run `tests/k8s/tools ensure`",
                self.env_var(),
                p.display()
            );
            return Ok(p);
        }
        let script = tools_script();
        let out = Command::new(&script)
            .args(["path", self.name()])
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} path {} failed: {}",
            script.display(),
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        anyhow::ensure!(
            self.exists(&p),
            "{} is not built: run `tests/k8s/tools ensure` (a cold build takes minutes, then it is cached)",
            self.name()
        );
        Ok(p)
    }
}

/// `tests/k8s/tools` in this checkout.
pub fn tools_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("k8s/tools")
}

/// `tests/k8s/testdata/<name>` in this checkout (charts and manifests the smoke tests use).
pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("k8s/testdata")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars_are_the_names_the_script_exports() {
        for t in Tool::ALL {
            assert_eq!(t.env_var(), t.name().replace('-', "_").to_uppercase());
        }
    }

    #[test]
    fn the_script_knows_every_tool_and_no_other() {
        let out = Command::new(tools_script())
            .arg("versions")
            .output()
            .unwrap();
        assert!(out.status.success());
        let names: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect();
        let ours: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ours);
    }
}
