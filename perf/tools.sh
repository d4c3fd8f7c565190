#!/usr/bin/env bash
# Builds the reference tunnels once per version into ~/.cache/fleetboard/tools (sourced by
# perf/run.sh, or run alone): wireguard-go, newest version of golang.zx2c4.com/wireguard from
# the Go module proxy (built with the machine's Go), and boringtun-cli 0.7.x from crates.io
# (`cargo install --root`). Sets $WGGO and $BORINGTUN to the binaries. `wg` (wireguard-tools)
# comes from Debian (scripts/install-deps.sh).
set -euo pipefail

TOOLS="${FLEETBOARD_TOOLS:-$HOME/.cache/fleetboard/tools}"
BORINGTUN_VERSION="${BORINGTUN_VERSION:-0.7}"

tools_wireguard_go() {
    local version dir
    version=$(cd /tmp && go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard@latest)
    dir="$TOOLS/wireguard-go-$version"
    if [ ! -x "$dir/wireguard-go" ]; then
        mkdir -p "$dir"
        (cd /tmp && GOBIN="$dir" GOFLAGS=-buildvcs=false go install "golang.zx2c4.com/wireguard@$version") >&2
        # The module's main package installs as `wireguard`.
        [ -x "$dir/wireguard" ] && mv "$dir/wireguard" "$dir/wireguard-go"
    fi
    WGGO="$dir/wireguard-go"
    WGGO_VERSION="$version"
}

tools_boringtun() {
    local dir
    dir="$TOOLS/boringtun-cli-$BORINGTUN_VERSION"
    if [ ! -x "$dir/bin/boringtun-cli" ]; then
        mkdir -p "$dir"
        CARGO_TARGET_DIR="$TOOLS/.boringtun-build" cargo install --locked --root "$dir" \
            boringtun-cli --version "~$BORINGTUN_VERSION" >&2 \
            || CARGO_TARGET_DIR="$TOOLS/.boringtun-build" cargo install --root "$dir" \
                boringtun-cli --version "~$BORINGTUN_VERSION" >&2
        rm -rf "$TOOLS/.boringtun-build"
    fi
    BORINGTUN="$dir/bin/boringtun-cli"
    BORINGTUN_VERSION_FULL=$(cargo install --list --root "$dir" | awk '/^boringtun-cli/ {print $2}' | tr -d 'v:')
}

tools_all() {
    command -v wg >/dev/null || apt-get install -y wireguard-tools >&2
    tools_wireguard_go
    tools_boringtun
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    tools_all
    echo "wireguard-go $WGGO_VERSION: $WGGO"
    echo "boringtun-cli $BORINGTUN_VERSION_FULL: $BORINGTUN"
fi
