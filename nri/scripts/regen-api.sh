#!/usr/bin/env bash
# Regenerates nri/src/api/api.rs and api_ttrpc.rs from nri/proto/api.proto with
# ttrpc-codegen (pure Rust, no protoc). The output is committed; run this after
# changing the proto, then `cargo fmt --all`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo run --quiet --manifest-path "$here/codegen/Cargo.toml" --target-dir "${CARGO_TARGET_DIR:-$here/../target}/nri-codegen"
