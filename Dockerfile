# syntax=docker/dockerfile:1
#
# FleetBoard's one image: the `fleetboard` binary (hub, agent, dataplane, nri, keygen, ...) and
# the kubectl plugin `kubectl-peers`.
#
#   docker build -t fleetboard:dev .
#
# Capabilities: the dataplane is a userspace VPN (no WireGuard kernel module), so the only
# privilege it needs is CAP_NET_ADMIN (create and configure its TUN device, addresses and routes
# in the pod's own network namespace). The binary carries that one capability as a file
# capability and the image runs as a non-root user; the charts (charts/fleetboard,
# charts/fleetboard-agent) drop ALL capabilities and add back exactly NET_ADMIN, and mount the
# node's /dev/net/tun. Nothing else: no privileged mode, no host network, no SYS_ADMIN, no
# SYS_MODULE.

# ---- build: the release binaries, exactly the locked dependency versions ----
FROM rust:1.95-slim-trixie AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fleetboard -p kubectl-peers \
    && install -D -m 0755 target/release/fleetboard /out/fleetboard \
    && install -D -m 0755 target/release/kubectl-peers /out/kubectl-peers

# ---- runtime: a small Debian with the two binaries, non-root ----
FROM debian:13.2-slim AS runtime
COPY --from=builder /out/fleetboard /usr/local/bin/fleetboard
COPY --from=builder /out/kubectl-peers /usr/local/bin/kubectl-peers
# cap_net_admin as a file capability lets the non-root user create the TUN device; setcap is
# removed again so the image carries no tools it does not need.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
    && setcap cap_net_admin+ep /usr/local/bin/fleetboard \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
# 65532: the conventional "nonroot" user of minimal images; the charts run as the same id.
USER 65532:65532
ENTRYPOINT ["fleetboard"]
CMD ["--help"]
