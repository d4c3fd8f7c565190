#!/usr/bin/env bash
# Shared by scripts/demo-dataplane.sh and perf/bench.sh (source it, then `topo_up`): three namespaces
# hub, gw-a, gw-b on a bridge namespace (the "internet", 198.18.0.0/24), a FleetBoard
# dataplane in each. gw-a (100.64.1.1) and gw-b (100.64.2.1) know only the hub (198.18.0.1,
# 100.64.0.1), which relays between them. Needs $FB (the fleetboard binary). Sets
# $HUB $GA $GB $NET (namespace names) and $WORK (configs, logs); removes everything on EXIT.
# TRANSPORT=quic (default wg) runs every tunnel over QUIC (identities from
# `fleetboard quic-identity`, peers pinned by fingerprint, hub QUIC port 31821).

T="d$$"                       # unique suffix: several runs can share the machine
NET="fbd-net-$T" HUB="fbd-hub-$T" GA="fbd-gwa-$T" GB="fbd-gwb-$T"
WORK="$(mktemp -d)"

cleanup() {
    for ns in "$HUB" "$GA" "$GB" "$NET"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

key() { cat "$WORK/$1.key"; }
pub() { cat "$WORK/$1.pub"; }

topo_up() {
    ip netns add "$NET"
    ip -n "$NET" link add br0 type bridge
    ip -n "$NET" link set br0 up
    local i=0 ns
    for ns in "$HUB" "$GA" "$GB"; do
        i=$((i + 1))
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "up$T$i" netns "$ns" type veth peer name "p$i" netns "$NET"
        ip -n "$ns" link set "up$T$i" name eth0
        ip -n "$NET" link set "p$i" master br0 up
        ip -n "$ns" addr add "198.18.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
    done

    local n
    for n in hub a b; do
        "$FB" keygen >"$WORK/$n.key"
        "$FB" pubkey <"$WORK/$n.key" >"$WORK/$n.pub"
    done
    # QUIC (TRANSPORT=quic): extra config lines per node ($n.quic) and per peer ($n.fp).
    local hub_ep="198.18.0.1:31820"
    for n in hub a b; do
        : >"$WORK/$n.quic"
        : >"$WORK/$n.fp"
        if [ "${TRANSPORT:-wg}" = quic ]; then
            printf ', fingerprint: "%s"' "$("$FB" quic-identity --name "gw-$n" --dir "$WORK/$n-quic")" >"$WORK/$n.fp"
            printf 'transport: quic\nquic: { certificate: "%s", private_key: "%s" }\n' \
                "$WORK/$n-quic/quic.crt" "$WORK/$n-quic/quic.key" >"$WORK/$n.quic"
            hub_ep="198.18.0.1:31821"
        fi
    done
    cat >"$WORK/hub.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.0.1/10"] }
private_key: "$(key hub)"
listen_port: 31820
admin: { socket: "$WORK/hub.sock" }
$(cat "$WORK/hub.quic")
peers:
  - { name: gw-a, public_key: "$(pub a)", allowed_ips: ["100.64.1.0/24"]$(cat "$WORK/a.fp") }
  - { name: gw-b, public_key: "$(pub b)", allowed_ips: ["100.64.2.0/24"]$(cat "$WORK/b.fp") }
YAML
    for n in a b; do
        local idx=1
        [ "$n" = b ] && idx=2
        cat >"$WORK/$n.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.$idx.1/10"] }
private_key: "$(key $n)"
listen_port: 31820
admin: { socket: "$WORK/$n.sock" }
$(cat "$WORK/$n.quic")
peers:
  - { name: hub, public_key: "$(pub hub)", endpoint: "$hub_ep", allowed_ips: ["100.64.0.0/10"], persistent_keepalive: 5$(cat "$WORK/hub.fp") }
YAML
    done

    (ip netns exec "$HUB" "$FB" dataplane --config "$WORK/hub.yaml" >"$WORK/hub.log" 2>&1 &)
    (ip netns exec "$GA" "$FB" dataplane --config "$WORK/a.yaml" >"$WORK/a.log" 2>&1 &)
    (ip netns exec "$GB" "$FB" dataplane --config "$WORK/b.yaml" >"$WORK/b.log" 2>&1 &)
}

# Waits until gw-a reaches gw-b through the hub.
topo_wait() {
    local _
    for _ in $(seq 1 120); do
        if ip netns exec "$GA" ping -c1 -W1 100.64.2.1 >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "no connectivity through the hub"
    tail -n 20 "$WORK"/*.log
    return 1
}

# iperf3 from namespace $1 to address $2 (server started in namespace $3) for $4 seconds;
# prints Gbit/s received.
iperf_gbps() {
    local from="$1" dst="$2" srv="$3" secs="$4" port=$((5201 + RANDOM % 500))
    (ip netns exec "$srv" iperf3 -s -1 -p "$port" >/dev/null 2>&1 &)
    local _
    for _ in $(seq 1 50); do
        ip netns exec "$srv" ss -ltnH | grep -q ":$port " && break
        sleep 0.1
    done
    ip netns exec "$from" iperf3 -c "$dst" -p "$port" -t "$secs" -J >"$WORK/iperf-$port.json"
    python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf-$port.json"
}
