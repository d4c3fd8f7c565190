#!/usr/bin/env bash
# The newcomer's first run, on real nodes on this one machine: a hub cluster with one node and
# two member clusters with two nodes each (a real kube-apiserver + etcd per cluster; every node
# a kubelet, containerd with NRI, runc, CNI and kube-proxy in namespaces of its own, on a test
# internet behind each cluster's NAT). The charts are installed from a chart repository with
# helm, as a user installs them: the hub install, then the member install the hub's NOTES
# print. Each step is printed with its time; it ends with a summary: the pods of every cluster,
# `kubectl peers` on the hub, an HTTP request from a pod of member-a to a Service exported from
# member-b by its clusterset.local name and its answer, and iperf3 between a pod of each member
# by their parallel (eth-fleet) addresses with its Gbit/s. Ctrl-C at any moment tears
# everything down. Needs root.
#
#   scripts/demo.sh                      # wg; waits for Ctrl-C after the summary
#   scripts/demo.sh --transport quic     # the QUIC transport
#   scripts/demo.sh --exit               # tear down after the summary; non-zero on any failure
#   scripts/demo.sh --seconds 10         # iperf3 for 10 s (default 5)
#   scripts/demo.sh --processes          # the older setup: hub and agents as processes in node
#                                        # namespaces, no kubelets (faster, no images)
#
# Installs what is missing first: system packages (scripts/install-deps.sh), the Kubernetes
# tools (tests/k8s/tools, cached under ~/.cache/fleetboard/tools), the images the nodes run
# (tests/k8s/images: FleetBoard's from the Dockerfile, pause, busybox, coredns, iperf3; cached
# under ~/.cache/fleetboard/images by a hash of their sources) and the workspace binaries. How
# long the first and later runs take: README.md, "Two commands".
# The dataplane-only demo (no Kubernetes) is scripts/demo-dataplane.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, TUN devices, nodes)"; exit 1; }
say() { echo "demo: $*" >&2; }

processes=false
for a in "$@"; do [ "$a" != --processes ] || processes=true; done

# Idempotent and a fraction of a second when everything is there (iperf3, buildah, runc, ...).
scripts/install-deps.sh >&2
say "Kubernetes tools (tests/k8s/tools ensure; the first time builds them, ~13 min)"
tests/k8s/tools ensure
eval "$(tests/k8s/tools env)"
if ! $processes; then
    say "node images (tests/k8s/images ensure; the first time builds FleetBoard's image, ~14 min)"
    tests/k8s/images ensure
    eval "$(tests/k8s/images env)"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fleetboard/target}"
say "building fleetboard, kubectl-peers and the demo (cargo build)"
cargo build -p fleetboard -p kubectl-peers -p fleetboard-tests --bins >&2
say "starting"
exec "$CARGO_TARGET_DIR/debug/fleetboard-first-run" "$@"
