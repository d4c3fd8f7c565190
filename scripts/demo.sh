#!/usr/bin/env bash
# The newcomer's first run: on this one machine, a hub cluster and two member clusters (a real
# kube-apiserver + etcd each; nodes are network namespaces on a private 198.18.0.0/24 bridge),
# the charts installed with helm as the hub chart's NOTES say, `fleetboard hub` and one
# `fleetboard agent` per node started, `kubectl peers` printed, then iperf3 between the members
# through the hub with the throughput printed. Ctrl-C tears everything down. Needs root.
#
#   scripts/demo.sh                      # wg; waits for Ctrl-C at the end
#   scripts/demo.sh --transport quic --exit
#
# The first run builds the Kubernetes tools (kube-apiserver, etcd, kubectl, helm; cached under
# ~/.cache/fleetboard/tools) and the workspace; later runs start in about a minute.
# The dataplane-only demo (no Kubernetes) is scripts/demo-dataplane.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, TUN devices)"; exit 1; }
command -v iperf3 >/dev/null || scripts/install-deps.sh
tests/k8s/tools ensure
eval "$(tests/k8s/tools env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fleetboard/target}"
cargo build -p fleetboard -p kubectl-peers -p fleetboard-tests --bins >&2
exec "$CARGO_TARGET_DIR/debug/fleetboard-first-run" "$@"
