#!/usr/bin/env bash
# Runs every FleetBoard test on this machine: installs what the tests need, builds the
# workspace once, then runs formatting, lints and all tests (unit, netns end-to-end,
# real-apiserver). Needs root (network namespaces, TUN devices).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ -x tests/k8s/tools ]; then
    tests/k8s/tools ensure    # builds kube-apiserver, etcd, helm, kubectl once per version (cached)
    eval "$(tests/k8s/tools env)"
fi

# Built artifacts are cached outside the clone so a fresh clone on the same machine reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fleetboard/target}"
export CARGO_TERM_COLOR=never

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# One build of the workspace (bins + tests), then the tests; the e2e tests find the
# binaries next to themselves.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-run
cargo test --workspace --locked -- --test-threads="${FLEETBOARD_TEST_THREADS:-4}"
