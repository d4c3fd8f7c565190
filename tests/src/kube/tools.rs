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
    /// `ctr` from github.com/containerd/containerd/v2.
    Ctr,
    /// `containerd-shim-runc-v2` from github.com/containerd/containerd/v2.
    ContainerdShim,
    /// `coredns` from github.com/coredns/coredns.
    CoreDns,
    /// A directory with the CNI plugins bridge, host-local, loopback and portmap.
    CniPlugins,
    /// The pause program of pod sandboxes.
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

    /// The binary's path: the environment variable when set (`eval "$(tests/k8s/tools env)"`),
    /// else the pinned version in the tools cache. Errors with the command that builds it.
    pub fn path(self) -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            let p = PathBuf::from(p);
            anyhow::ensure!(
                p.is_file(),
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
            p.is_file(),
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
