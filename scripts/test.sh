#!/usr/bin/env bash
# Runs every FleetBoard test on this machine: installs what the tests need, builds the
# workspace once (lints included), then runs all tests (unit, netns end-to-end,
# real-apiserver). Needs root (network namespaces, TUN devices).
#
# Where the time goes (a cold run on a 2-core machine, see README.md#where-ci-time-goes):
# the Go test tools and the test images build in the background while Rust builds, clippy lints
# the workspace crates while they are compiled (no second, check-only compilation), and each
# crate has one integration-test binary. Every phase's time is printed at the end.
#
# Environment: FLEETBOARD_TEST_THREADS (default 6) test threads of the e2e binary;
# CARGO_TARGET_DIR (default ~/.cache/fleetboard/target) shared by every clone.
set -euo pipefail
cd "$(dirname "$0")/.."

START=$SECONDS
TIMES=()
phase() { # phase NAME COMMAND...: runs COMMAND, records how long it took
    local name="$1" t=$SECONDS
    shift
    echo "test.sh: == $name" >&2
    "$@"
    TIMES+=("$(printf '%-34s %5d s' "$name" $((SECONDS - t)))")
}
report() {
    echo "test.sh: phase times (wall clock)" >&2
    local l
    for l in "${TIMES[@]}"; do echo "  $l" >&2; done
    printf '  %-34s %5d s\n' total $((SECONDS - START)) >&2
}
trap report EXIT

phase "install-deps" scripts/install-deps.sh

# Built artifacts are cached outside the clone so a fresh clone on the same machine reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fleetboard/target}"
export CARGO_TERM_COLOR=never
# A cold build gains nothing from incremental state (it is only written, never read).
export CARGO_INCREMENTAL=0

# The Go test tools (tests/k8s/tools: Kubernetes, containerd, CoreDNS, CNI plugins, pause;
# cached per version) build in the background while Rust builds: the two share the 2 cores and
# fill each other's idle gaps (Go's and rustc's serial link steps).
TOOLS_LOG="$(mktemp -t fleetboard-tools.XXXXXX.log)"
TOOLS_START=$SECONDS
(
    rc=0
    tests/k8s/tools ensure || rc=$?
    echo "$((SECONDS - TOOLS_START))" >"$TOOLS_LOG.took"
    exit "$rc"
) >"$TOOLS_LOG" 2>&1 &
TOOLS_PID=$!

# The container images of the real-node tests (FleetBoard's from the Dockerfile, pause, busybox,
# coredns; cached by a hash of their inputs) build in the background too, at a lower priority:
# cold, FleetBoard's release build is ~14 min of CPU and must not slow the workspace build and
# tests ahead of it; warm (sources unchanged) it is a cache hit. In a session of its own, so
# that an interrupted run can stop buildah and its cargo (killing the subshell would not).
IMAGES_LOG="$(mktemp -t fleetboard-images.XXXXXX.log)"
# shellcheck disable=SC2016,SC2094 # the inner script expands its own $1 (the log's name)
setsid bash -c '
    start=$SECONDS
    rc=0
    nice -n 10 tests/k8s/images ensure || rc=$?
    echo "$((SECONDS - start))" >"$1.took"
    exit "$rc"
' images "$IMAGES_LOG" >"$IMAGES_LOG" 2>&1 &
IMAGES_PID=$!
trap 'kill $TOOLS_PID 2>/dev/null || true; kill -- -$IMAGES_PID 2>/dev/null || true; report' EXIT

phase "cargo fmt --check" cargo fmt --all -- --check

# clippy lints the workspace crates as they are compiled for the build below: clippy-driver
# stands in for rustc for the workspace's own crates only (what `cargo clippy` does, but
# producing code), with the same `-D warnings`. Dependencies are compiled once, by rustc.
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$CLIPPY_DRIVER" ] || {
    echo "test.sh: $CLIPPY_DRIVER not found: rustup component add clippy" >&2
    exit 1
}
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# One build of the workspace, in one cargo invocation so that every target sees the same
# dependency features (a dev-dependency's feature used to split tokio and everything above it
# into two builds): the binaries (the e2e tests find them next to themselves) and every test,
# bench and example target (the targets `cargo clippy --all-targets` lints).
# --timings: the per-crate report (target/cargo-timings/) behind README.md#where-ci-time-goes.
phase "cargo build --all-targets (+clippy)" cargo build --workspace --all-targets --locked --timings

tools_wait() {
    if ! wait "$TOOLS_PID"; then
        cat "$TOOLS_LOG" >&2
        echo "test.sh: tests/k8s/tools ensure failed (log above)" >&2
        return 1
    fi
    cat "$TOOLS_LOG" >&2
}
phase "wait for Go test tools" tools_wait
TIMES+=("$(printf '%-34s %5d s' "  (Go test tools, in background)" "$(cat "$TOOLS_LOG.took")")")
rm -f "$TOOLS_LOG" "$TOOLS_LOG.took"
eval "$(tests/k8s/tools env)"

images_wait() {
    if ! wait "$IMAGES_PID"; then
        cat "$IMAGES_LOG" >&2
        echo "test.sh: tests/k8s/images ensure failed (log above)" >&2
        return 1
    fi
    # The fleetboard build's cargo output is long: its summary lines only.
    grep -E '^(images:|== )' "$IMAGES_LOG" >&2 || true
}
phase "wait for test images" images_wait
TIMES+=("$(printf '%-34s %5d s' "  (test images, in background)" "$(cat "$IMAGES_LOG.took")")")
rm -f "$IMAGES_LOG" "$IMAGES_LOG.took"
# The pause and coredns images are made from binaries the Go tools build: on a cold machine the
# background pass above may finish before the tools do and skip them. This pass, with the tools
# in place, builds what is missing (seconds) and is a cache hit for the rest.
phase "test images from the Go tools" tests/k8s/images ensure
eval "$(tests/k8s/images env)"

phase "cargo test" cargo test --workspace --locked -- --test-threads="${FLEETBOARD_TEST_THREADS:-6}"
