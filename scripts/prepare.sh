# Shared preamble of scripts/demo-dataplane.sh, perf/bench.sh and perf/transports.sh (source it from the
# repository root): `fb_prepare NAME DEFAULT_DURATION` checks for root, installs iperf3 when
# missing, builds the release binary unless $FLEETBOARD names one, and sets $FB and $DURATION.

fb_prepare() {
    local name="$1" default_duration="$2"
    [ "$(id -u)" = 0 ] || { echo "$name: needs root (network namespaces, TUN devices)"; exit 1; }
    command -v iperf3 >/dev/null || scripts/install-deps.sh
    if [ -z "${FLEETBOARD:-}" ]; then
        cargo build --release -p fleetboard >&2
        FLEETBOARD="${CARGO_TARGET_DIR:-target}/release/fleetboard"
    fi
    FB="$(realpath "$FLEETBOARD")"
    DURATION="${DURATION:-$default_duration}"
}
