#!/usr/bin/env bash
# SPIKE — NOT WIRED INTO ANY TEST. Feasibility prototype for "real nodes" (see docs/REAL-NODES.md):
# one etcd + kube-apiserver in the root network namespace on a veth address, and ONE node
# (containerd v2 + runc + CNI bridge + kubelet) inside a network namespace of its own, on this
# machine. Registers the node, runs a pod from locally built images, execs into it, cleans up.
#
# Needs: root; `apt-get install runc containernetworking-plugins busybox-static`; the test tools
# (`tests/k8s/tools ensure`).
#   tests/k8s/node-spike.sh build      builds kubelet, kube-controller-manager, kube-scheduler,
#                                      containerd (+ctr, shim), a tiny NRI plugin
#                                      and the pause + busybox images into /tmp/nodes-spike
#   tests/k8s/node-spike.sh            one run: apiserver, node, pods, checks, cleanup (~15 s)
#   KEEP=1 tests/k8s/node-spike.sh     leaves it all running; then `node-spike.sh cleanup ID`
#   FLEETBOARD_BIN=target/debug/fleetboard tests/k8s/node-spike.sh
#                                      also runs FleetBoard's own `fleetboard nri` on containerd's
#                                      NRI socket and checks a pod gets `eth-fleet`
#   CP=1 tests/k8s/node-spike.sh       also runs kube-controller-manager + kube-scheduler: pods are
#                                      scheduled, get SA tokens, the CNI range follows node.spec.podCIDR
#
# Addresses: underlay 198.18.0.0/15 only, pods 100.64.0.0/10 only. Fixed addresses and ports:
# one run at a time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SPIKE=${SPIKE_DIR:-/tmp/nodes-spike}   # builds, images and run dirs
SPIKE_BIN=$SPIKE/bin
SPIKE_IMG=$SPIKE/img
KUBERNETES_VERSION=v1.34.4
CONTAINERD_VERSION=v2.4.2

build() {
    set -x
    mkdir -p "$SPIKE/bin" "$SPIKE/img" "$SPIKE/kmod" "$SPIKE/cmod/nrilog" "$SPIKE/img/pause"
    export GOTOOLCHAIN=local
    # kubelet etc.: a COPY of the test tools' module plus `tool` lines (no version moves, see the doc).
    cp "$HERE/kubernetes/go.mod" "$HERE/kubernetes/go.sum" "$SPIKE/kmod/"
    (cd "$SPIKE/kmod" && GOFLAGS="-trimpath -buildvcs=false" go get -tool "k8s.io/kubernetes/cmd/kubelet@$KUBERNETES_VERSION" \
        "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBERNETES_VERSION" "k8s.io/kubernetes/cmd/kube-scheduler@$KUBERNETES_VERSION")
    local v="${KUBERNETES_VERSION#v}" ld="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=${v%%.*} -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2)"
        ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$SPIKE/kmod" && time CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly" \
        go build -gcflags=all=-dwarf=false -ldflags "$ld" -o "$SPIKE/bin/" k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
    # containerd: a module of its own (it would lift grpc/otel/k8s.io of the tools' module).
    cat > "$SPIKE/cmod/go.mod" <<GOMOD
module fleetboard.invalid/tests/k8s/containerd

go 1.26.6
GOMOD
    cat > "$SPIKE/cmod/nrilog/main.go" <<'GO'
// A minimal NRI plugin: logs every pod sandbox and container the runtime reports.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

type plugin struct{}

func (plugin) RunPodSandbox(_ context.Context, p *api.PodSandbox) error {
	fmt.Printf("RunPodSandbox %s/%s netns=%v\n", p.Namespace, p.Name, p.Linux.GetNamespaces())
	return nil
}

func (plugin) CreateContainer(_ context.Context, p *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	fmt.Printf("CreateContainer %s/%s %s\n", p.Namespace, p.Name, c.Name)
	return nil, nil, nil
}

func main() {
	s, err := stub.New(plugin{}, stub.WithPluginName("spikelog"), stub.WithPluginIdx("10"), stub.WithSocketPath(os.Args[1]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("connecting to", os.Args[1])
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
GO
    (cd "$SPIKE/cmod" && GOFLAGS="-trimpath -buildvcs=false" go get -tool \
        "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
        "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" &&
        # The NRI plugin's stub at the NRI version containerd itself uses (a bare `go get` of the
        # package would upgrade containerd's NRI too).
        GOFLAGS="-trimpath -buildvcs=false" go get "github.com/containerd/nri@$(go list -m -f '{{.Version}}' github.com/containerd/nri)" &&
        time CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly" go build \
            -tags "no_btrfs no_devmapper no_zfs" -gcflags=all=-dwarf=false \
            -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Revision=$CONTAINERD_VERSION" \
            -o "$SPIKE/bin/" github.com/containerd/containerd/v2/cmd/containerd \
            github.com/containerd/containerd/v2/cmd/ctr github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 &&
        CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly" go build -ldflags "-s -w" -o "$SPIKE/bin/nri-spikelog" ./nrilog)
    # pause: a static Go program (sleep, reap zombies, exit on SIGINT/SIGTERM).
    cat > "$SPIKE/img/pause/go.mod" <<'GOMOD'
module fleetboard.invalid/pause

go 1.24
GOMOD
    cat > "$SPIKE/img/pause/main.go" <<'GO'
// A pause container: PID 1 of a pod sandbox. Sleeps, reaps zombies, exits on SIGINT/SIGTERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
GO
    (cd "$SPIKE/img/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o pause .)
    local r="$SPIKE/img/rootfs-pause" b="$SPIKE/img/rootfs-busybox" a
    rm -rf "$r" "$b"; mkdir -p "$r" "$b/bin" "$b/etc" "$b/tmp" "$b/proc" "$b/sys" "$b/dev" "$b/root"
    cp "$SPIKE/img/pause/pause" "$r/pause"
    cp /bin/busybox "$b/bin/busybox"   # Debian busybox-static
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$b/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$b/etc/passwd"; echo 'root:x:0:' > "$b/etc/group"
    oci_image "$r" localhost/fleetboard/pause:spike "$SPIKE/img/pause.tar" '["/pause"]'
    oci_image "$b" localhost/fleetboard/busybox:spike "$SPIKE/img/busybox.tar" '["/bin/sh"]'
    ls -la "$SPIKE/bin" "$SPIKE/img"/*.tar
}

# oci_image ROOTFS NAME OUT.tar ENTRYPOINT_JSON: a one-layer OCI image layout tarball, importable
# with `ctr -n k8s.io images import` (the io.containerd.image.name annotation names it).
oci_image() {
    local rootfs=$1 name=$2 out=$3 entry=$4 w diffid lsum lsize csum csize msum msize
    w=$(mktemp -d); mkdir -p "$w/blobs/sha256"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$w/layer.tar" .
    diffid=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
    gzip -n -c "$w/layer.tar" > "$w/layer.tgz"; rm "$w/layer.tar"
    lsum=$(sha256sum "$w/layer.tgz" | cut -d' ' -f1); lsize=$(stat -c %s "$w/layer.tgz")
    mv "$w/layer.tgz" "$w/blobs/sha256/$lsum"
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$entry" "$diffid" > "$w/config.json"
    csum=$(sha256sum "$w/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$w/config.json"); mv "$w/config.json" "$w/blobs/sha256/$csum"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$csum" "$csize" "$lsum" "$lsize" > "$w/manifest.json"
    msum=$(sha256sum "$w/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$w/manifest.json"); mv "$w/manifest.json" "$w/blobs/sha256/$msum"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$msum" "$msize" "$name" "${name##*:}" > "$w/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$w/oci-layout"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w" -cf "$out" oci-layout index.json blobs
    rm -rf "$w"
}

if [ "${1:-}" = build ]; then build; exit 0; fi
eval "$("$HERE/tools" env)"

# `node-spike.sh cleanup ID` cleans up a run left by KEEP=1 (or by a killed run).
MODE=run
if [ "${1:-}" = cleanup ]; then MODE=cleanup; ID=$2; else
ID=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n'); fi
NS=fbspike-$ID
S=$SPIKE/run-$ID           # everything of this run lives here
CG=fbspike-$ID                       # cgroup parent (every v1 hierarchy + the unified one)
NODE=spike-node-$ID
HOST_IP=198.18.99.1                  # root-namespace end of the veth: kube-apiserver binds here
NODE_IP=198.18.99.2                  # the node's underlay address inside $NS
POD_CIDR=100.64.1.0/24
SERVICE_CIDR=198.19.255.0/24
API_PORT=6443
[ "$MODE" = cleanup ] || mkdir -p "$S"
echo "run dir $S, netns $NS, cgroup /$CG" >&2
PIDS=()

log() { echo "[$(date -u +%T)] $*" >&2; }

cleanup() {
    set +e
    log "cleanup"
    [ -f "$S/pids" ] && PIDS=($(cat "$S/pids"))
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    # Pod sandboxes: shims and their containers outlive containerd and kubelet. Shims are found by
    # our socket path on their command line, containers by our cgroup parent; kill both by pid,
    # in rounds until nothing is left.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local left
        left=$( { pgrep -f "containerd-shim-runc-v2 .*-address $S/containerd.sock" || true
                  for h in /sys/fs/cgroup/*/"$CG"; do [ -d "$h" ] && find "$h" -name cgroup.procs -exec cat {} +; done
                  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; } 2>/dev/null | sort -u)
        [ -n "$left" ] || break
        kill -9 $left 2>/dev/null
        sleep 0.5
    done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    # Mounts left under the run dir (overlay rootfs, shm, kubelet volumes, netns binds): deepest first.
    mount | awk -v s="$S" '$3 ~ "^"s {print $3}' | sort -r | while read -r m; do umount -l "$m"; done
    # Cgroups: deepest first.
    for h in /sys/fs/cgroup/*/"$CG"; do
        [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$h" ] && echo "cgroup $h is left (busy)" >&2
    done
    # Host-global paths kubelet and containerd write whatever their root dirs: libcni's result
    # cache (/var/lib/cni/results, go-cni's default, not configurable through containerd's CRI)
    # and kubelet's /var/log/containers symlinks. Remove only what points into this run.
    grep -l -F "$S/" /var/lib/cni/results/* 2>/dev/null | xargs -r rm -f
    find /var/log/containers -maxdepth 1 -type l -lname "$S/*" -delete 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    ip link del "vh-$ID" 2>/dev/null
    # Pod network namespaces (netns_mounts_under_state_dir keeps them under $S; unmounted above).
    # Never rm -rf across a mount (a hostPath volume would take host files with it).
    if mount | awk -v s="$S" '$3 ~ "^"s' | grep -q .; then echo "mounts left under $S: not removing it" >&2
    elif [ -z "${KEEP_DIR:-}" ]; then rm -rf "$S"; fi
    log "cleanup done"
}
spawned() { PIDS+=("$1"); echo "$1" >> "$S/pids"; }
# `ip netns exec` would also unshare the mount namespace and mount a fresh sysfs on /sys, which
# hides /sys/fs/cgroup (kubelet: "failed to find cgroup mounts") and keeps containerd's mounts
# from kubelet: enter the network namespace only, with nsenter (which execs the program, so
# $! of `nsenter ... &` is the daemon's pid; a shell function would put a subshell in between).
if [ "$MODE" = cleanup ]; then cleanup; exit 0; fi
if [ -z "${KEEP:-}" ]; then trap cleanup EXIT; fi

# ---- PKI (openssl; the Rust tests use rcgen the same way) -----------------------------------
P=$S/pki; mkdir -p "$P"
ossl() { openssl "$@" 2>/dev/null; }
ossl ecparam -name prime256v1 -genkey -noout -out "$P/ca.key"
ossl req -x509 -new -key "$P/ca.key" -subj /CN=fbspike-ca -days 1 -out "$P/ca.crt"
cert() { # name subject [san]
    ossl ecparam -name prime256v1 -genkey -noout -out "$P/$1.key"
    ossl req -new -key "$P/$1.key" -subj "$2" -out "$P/$1.csr"
    local ext="$P/$1.ext"
    echo "basicConstraints=CA:FALSE" > "$ext"
    if [ -n "${3:-}" ]; then echo "subjectAltName=$3" >> "$ext"; echo "extendedKeyUsage=serverAuth" >> "$ext"
    else echo "extendedKeyUsage=clientAuth" >> "$ext"; fi
    ossl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 1 -extfile "$ext" -out "$P/$1.crt"
}
cert apiserver /CN=kube-apiserver "IP:$HOST_IP,IP:198.19.255.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
cert admin "/O=system:masters/CN=fbspike-admin"
cert kubelet "/O=system:nodes/CN=system:node:$NODE"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert kcm /CN=system:kube-controller-manager
cert sched /CN=system:kube-scheduler
ossl ecparam -name prime256v1 -genkey -noout -out "$P/sa.key"; ossl ec -in "$P/sa.key" -pubout -out "$P/sa.pub"
kubeconfig() { # file cert
    cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: spike, cluster: {server: "https://$HOST_IP:$API_PORT", certificate-authority: "$P/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$P/$2.crt", client-key: "$P/$2.key"}}]
contexts: [{name: c, context: {cluster: spike, user: u}}]
current-context: c
KC
}
kubeconfig "$S/admin.kubeconfig" admin
kubeconfig "$S/kubelet.kubeconfig" kubelet
kubeconfig "$S/kcm.kubeconfig" kcm
kubeconfig "$S/sched.kubeconfig" sched
export KUBECONFIG=$S/admin.kubeconfig
k() { "$KUBECTL" "$@"; }

# ---- underlay: a veth from the root namespace into the node's namespace ---------------------
ip netns add "$NS"
ip link add "vh-$ID" type veth peer name "vn-$ID"
ip link set "vn-$ID" netns "$NS"
ip addr add "$HOST_IP/30" dev "vh-$ID"; ip link set "vh-$ID" up
ip -n "$NS" link set lo up
ip -n "$NS" link set "vn-$ID" name eth0
ip -n "$NS" addr add "$NODE_IP/30" dev eth0; ip -n "$NS" link set eth0 up
# kubelet wants a default route to pick the node IP; point it at the root end (only the apiserver
# is there). Nothing is forwarded from the root namespace onwards (no masquerade, no ip_forward).
ip -n "$NS" route add default via "$HOST_IP"
ip netns exec "$NS" sysctl -qw net.ipv4.ip_forward=1   # pod <-> node traffic across cni0

# ---- etcd + kube-apiserver (root namespace) --------------------------------------------------
"$ETCD" --name=default --data-dir="$S/etcd" --listen-client-urls=http://127.0.0.1:23790 \
    --advertise-client-urls=http://127.0.0.1:23790 --listen-peer-urls=http://127.0.0.1:23800 \
    --initial-advertise-peer-urls=http://127.0.0.1:23800 --initial-cluster=default=http://127.0.0.1:23800 \
    --unsafe-no-fsync --log-level=warn > "$S/etcd.log" 2>&1 &
spawned $!
"$KUBE_APISERVER" --etcd-servers=http://127.0.0.1:23790 --etcd-prefix="/registry-$ID" \
    --bind-address=$HOST_IP --advertise-address=$HOST_IP --secure-port=$API_PORT \
    --cert-dir="$P" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --service-cluster-ip-range=$SERVICE_CIDR --endpoint-reconciler-type=none --profiling=false \
    > "$S/apiserver.log" 2>&1 &
spawned $!
t0=$(date +%s)
until k get --raw /readyz >/dev/null 2>&1; do
    [ $(( $(date +%s) - t0 )) -lt 90 ] || { tail -20 "$S/apiserver.log"; exit 1; }; sleep 0.5
done
log "apiserver ready ($(( $(date +%s) - t0 )) s)"
if [ -n "${CP:-}" ]; then
    "$SPIKE_BIN/kube-scheduler" --kubeconfig="$S/sched.kubeconfig" --authentication-kubeconfig="$S/sched.kubeconfig" \
        --authorization-kubeconfig="$S/sched.kubeconfig" --leader-elect=false --secure-port=0 > "$S/scheduler.log" 2>&1 &
    spawned $!
    "$SPIKE_BIN/kube-controller-manager" --kubeconfig="$S/kcm.kubeconfig" --authentication-kubeconfig="$S/kcm.kubeconfig" \
        --authorization-kubeconfig="$S/kcm.kubeconfig" --leader-elect=false --secure-port=0 \
        --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=true \
        --allocate-node-cidrs=true --cluster-cidr=100.64.0.0/10 --node-cidr-mask-size=24 \
        --service-cluster-ip-range=$SERVICE_CIDR > "$S/controller-manager.log" 2>&1 &
    spawned $!
fi

# ---- cgroups: one parent for the whole node, in every v1 hierarchy (hybrid) and in unified ---
for h in /sys/fs/cgroup/*/; do
    mkdir -p "$h$CG/runtime" "$h$CG/kubelet"
done
# cpuset children start empty in v1: copy the parent's cpus/mems down.
for d in "$CG" "$CG/runtime" "$CG/kubelet"; do
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$d/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$d/cpuset.mems"
done
into_cgroup() { # pid sub
    for h in /sys/fs/cgroup/*/; do echo "$1" > "$h$CG/$2/cgroup.procs"; done
}

# ---- CNI: bridge + host-local in 100.64.0.0/10, loopback, portmap ----------------------------
mkdir -p "$S/cni/net.d" "$S/cni/ipam"
# CP=1: containerd renders conf_template with the node's podCIDR (kubelet passes node.spec.podCIDR,
# allocated by kube-controller-manager, through the CRI UpdateRuntimeConfig call).
if [ -n "${CP:-}" ]; then CNI_FILE=$S/cni/template.conflist; POD_RANGE='{{.PodCIDR}}'
else CNI_FILE=$S/cni/net.d/10-spike.conflist; POD_RANGE=$POD_CIDR; fi
cat > "$CNI_FILE" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "spike",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_RANGE"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI

# ---- containerd v2 (config version 3, NRI on), inside the node's namespace -------------------
mkdir -p "$S/containerd/root" "$S/containerd/state" "$S/containerd/tmp" "$S/s" "$S/nri/plugins" "$S/nri/conf.d"
cat > "$S/containerd/config.toml" <<TOML
# containerd v2.4 config (version 4; \`containerd config default\` shows every key). Every path is
# under \$S so several nodes can run side by side; NRI is on with its socket under \$S too.
version = 4
root = "$S/containerd/root"
state = "$S/containerd/state"
temp = "$S/containerd/tmp"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs", "io.containerd.server.v1.grpc-tcp"]

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.server.v1.grpc"]
    address = "$S/containerd.sock"
  [plugins."io.containerd.server.v1.ttrpc"]
    address = "$S/containerd.sock.ttrpc"
  [plugins."io.containerd.server.v1.debug"]
    address = ""
  [plugins."io.containerd.server.v1.metrics"]
    address = ""
  [plugins."io.containerd.internal.v1.opt"]
    path = "$S/containerd/opt"
  [plugins."io.containerd.image-verifier.v1.bindir"]
    bin_dir = "$S/containerd/image-verifier"
  [plugins."io.containerd.shim.v1.manager"]
    socket_dir = "$S/s"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "localhost/fleetboard/pause:spike"

  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    disable_apparmor = true
    # This machine's bounding set lacks CAP_SYS_RESOURCE: lowering oom_score_adj (pause: -998)
    # fails in runc's nsexec ("failed to update /proc/self/oom_score_adj: Permission denied").
    # Clamp every container's oom_score_adj to at least containerd's own.
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    # Pod netns bind mounts under the state dir, not /run/netns (shared with \`ip netns\`).
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "${RUNC:-/usr/sbin/runc}"
          Root = "$S/runc"
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$S/cni/net.d"
      max_conf_num = 1
      conf_template = "${CP:+$S/cni/template.conflist}"

  [plugins."io.containerd.nri.v1.nri"]
    disable = false
    socket_path = "$S/nri/nri.sock"
    plugin_path = "$S/nri/plugins"
    plugin_config_path = "$S/nri/conf.d"
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "2s"
TOML
nsenter --net="/run/netns/$NS" "$SPIKE_BIN/containerd" --config "$S/containerd/config.toml" > "$S/containerd.log" 2>&1 &
spawned $!; into_cgroup $! runtime
export CONTAINERD_ADDRESS=$S/containerd.sock CONTAINERD_NAMESPACE=k8s.io
ctr() { "$SPIKE_BIN/ctr" --address "$S/containerd.sock" -n k8s.io "$@"; }
t0=$(date +%s)
until ctr version >/dev/null 2>&1; do
    [ $(( $(date +%s) - t0 )) -lt 30 ] || { tail -20 "$S/containerd.log"; exit 1; }; sleep 0.2
done
log "containerd up ($(( $(date +%s) - t0 )) s)"
ctr images import "$SPIKE_IMG/pause.tar" >&2
ctr images import "$SPIKE_IMG/busybox.tar" >&2
ctr images ls -q >&2
# An external NRI plugin (a 40-line Go program on github.com/containerd/nri/pkg/stub, see the doc)
# connects to containerd's NRI socket and logs the pod events it gets.
if [ -x "$SPIKE_BIN/nri-spikelog" ]; then
    "$SPIKE_BIN/nri-spikelog" "$S/nri/nri.sock" > "$S/nri-plugin.log" 2>&1 &
    spawned $!
fi
# FleetBoard's own NRI plugin: a parallel `eth-fleet` per pod from 100.64.2.0/24 (apart from the
# CNI range), node ends in the node namespace, the address published as a Pod annotation.
if [ -n "${FLEETBOARD_BIN:-}" ]; then
    "$FLEETBOARD_BIN" nri --socket "$S/nri/nri.sock" --plugin-index 20 --pod-cidr 100.64.2.0/24 \
        --tunnel-cidr 100.64.0.0/10 --service-cidr 100.127.0.0/16 --node-netns "/run/netns/$NS" \
        --state-file "$S/fleetboard-nri-ipam.json" --kubeconfig "$S/admin.kubeconfig" \
        > "$S/fleetboard-nri.log" 2>&1 &
    spawned $!
fi

# ---- kubelet ---------------------------------------------------------------------------------
mkdir -p "$S/kubelet" "$S/pod-logs"
: > "$S/resolv.conf"   # pods get no nameserver: nothing to send DNS to on this machine
cat > "$S/kubelet.yaml" <<KY
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$S/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$CG
cgroupsPerQOS: true
kubeletCgroups: /$CG/kubelet
failSwapOn: false
failCgroupV1: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: AlwaysAllow}
podLogsDir: $S/pod-logs
resolvConf: $S/resolv.conf
clusterDomain: cluster.local
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
KY
nsenter --net="/run/netns/$NS" "$SPIKE_BIN/kubelet" --config="$S/kubelet.yaml" --kubeconfig="$S/kubelet.kubeconfig" \
    --root-dir="$S/kubelet" --cert-dir="$S/kubelet/pki" --hostname-override="$NODE" --node-ip="$NODE_IP" \
    --v=2 > "$S/kubelet.log" 2>&1 &
spawned $!
t0=$(date +%s)
until [ "$(k get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
    [ $(( $(date +%s) - t0 )) -lt 120 ] || { k get node -o wide >&2 || true; grep -E "^E[0-9]{4}" "$S/kubelet.log" | tail -20 >&2; exit 1; }
    sleep 1
done
log "node $NODE Ready ($(( $(date +%s) - t0 )) s after kubelet start)"
k get node -o wide >&2

# ---- a pod (no scheduler: spec.nodeName; no controller-manager: create the ServiceAccount) ---
if [ -n "${CP:-}" ]; then NODE_NAME_LINE="" AUTOMOUNT=true
else NODE_NAME_LINE="nodeName: $NODE" AUTOMOUNT=false; k create serviceaccount default >/dev/null 2>&1 || true; fi
k apply -f - >&2 <<POD
apiVersion: v1
kind: Pod
metadata: {name: spike, namespace: default}
spec:
  $NODE_NAME_LINE
  # without kube-controller-manager no kube-root-ca.crt ConfigMap, so no token volume
  automountServiceAccountToken: $AUTOMOUNT
  dnsPolicy: Default
  terminationGracePeriodSeconds: 2
  containers:
  - name: bb
    image: localhost/fleetboard/busybox:spike
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www"]
POD
t0=$(date +%s)
until [ "$(k get pod spike -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; do
    [ $(( $(date +%s) - t0 )) -lt 90 ] || { k describe pod spike >&2; grep -E "^E[0-9]{4}" "$S/kubelet.log" | tail -20 >&2; exit 1; }
    sleep 1
done
log "pod Running ($(( $(date +%s) - t0 )) s)"
k get pod -o wide >&2
POD_IP=$(k get pod spike -o jsonpath='{.status.podIP}')
k exec spike -- ip addr >&2
k exec spike -- wget -qO- "http://$POD_IP:8080/" >&2
# node -> pod over cni0 (busybox-static 1.35 `wget -T` segfaults: use timeout instead)
timeout 5 nsenter --net="/run/netns/$NS" busybox wget -qO- "http://$POD_IP:8080/" >&2
k logs spike >&2 || true
if [ -n "${FLEETBOARD_BIN:-}" ]; then
    k exec spike -- ip -o -4 addr show eth-fleet >&2
    k exec spike -- ip route >&2
    log "fleetboard nri: annotation $(k get pod spike -o jsonpath='{.metadata.annotations.router\.fleetboard\.io/parallel_ip}')"
    k exec spike -- ping -c1 -W2 100.64.2.1 >&2   # the node-side gateway, over eth-fleet
fi
if [ -n "${CP:-}" ]; then
    k exec spike -- ls /var/run/secrets/kubernetes.io/serviceaccount >&2
    log "node podCIDR $(k get node "$NODE" -o jsonpath='{.spec.podCIDR}'), pod IP $POD_IP (scheduled by kube-scheduler)"
fi
if [ -x "$SPIKE_BIN/nri-spikelog" ]; then
    log "NRI plugin saw:"; cat "$S/nri-plugin.log" >&2
    grep -q "RunPodSandbox default/spike" "$S/nri-plugin.log" || { log "NRI plugin saw no RunPodSandbox"; exit 1; }
fi
# A pod with NET_ADMIN (what FleetBoard's dataplane/NRI pods need) and a privileged one: this
# machine's bounding set lacks CAP_SYS_RESOURCE (containerd gives privileged containers its own
# set, so that is fine). NET_ADMIN is shown by changing addresses and routes (busybox's `ip`
# cannot create links; this kernel has no `dummy` nor wireguard link type, veth and vxlan work).
k apply -f - >&2 <<POD
apiVersion: v1
kind: Pod
metadata: {name: netadmin, namespace: default}
spec:
  $NODE_NAME_LINE
  automountServiceAccountToken: $AUTOMOUNT
  dnsPolicy: Default
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: bb
    image: localhost/fleetboard/busybox:spike
    imagePullPolicy: Never
    securityContext: {capabilities: {add: [NET_ADMIN]}}
    command: ["/bin/sh", "-c", "ip addr add 100.64.200.1/32 dev lo && ip route add 100.64.201.0/24 dev eth0 && ip addr show lo && ip route && sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: privileged, namespace: default}
spec:
  $NODE_NAME_LINE
  automountServiceAccountToken: $AUTOMOUNT
  dnsPolicy: Default
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: bb
    image: localhost/fleetboard/busybox:spike
    imagePullPolicy: Never
    securityContext: {privileged: true}
    command: ["/bin/sh", "-c", "grep Cap /proc/self/status && sleep 3600"]
POD
for p in netadmin privileged; do
    t0=$(date +%s)
    until [[ "$(k get pod $p -o jsonpath='{.status.phase}' 2>/dev/null)" =~ Running|Failed|Succeeded ]]; do
        [ $(( $(date +%s) - t0 )) -lt 60 ] || { k describe pod $p | tail -8 >&2; break; }
        sleep 1
    done
    log "pod $p: $(k get pod $p -o jsonpath='{.status.phase}')"; k logs $p >&2 || true
    [ "$(k get pod $p -o jsonpath='{.status.phase}')" = Running ] || exit 1
done
log "SPIKE OK: node Ready, pod Running at $POD_IP, exec and wget work, NRI plugin saw the pod, NET_ADMIN and privileged pods run"
if [ -n "${KEEP:-}" ]; then
    echo "KEEP=1: left running. export KUBECONFIG=$S/admin.kubeconfig; pids ${PIDS[*]}" >&2
fi
