#!/usr/bin/env bash
# FleetBoard local demo: three "clusters" as network namespaces on one bridge (the "internet"):
# hub, gw-a, gw-b. A dataplane runs in each; gw-a and gw-b only know the hub, and the hub
# relays between them. Then iperf3 runs from gw-a (100.64.1.1) to gw-b (100.64.2.1) through
# the hub and prints the throughput. Everything is removed at the end. Needs root.
#
#   scripts/demo.sh            # build (release) and run
#   FLEETBOARD=path/to/bin scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, TUN devices)"; exit 1; }
command -v iperf3 >/dev/null || scripts/install-deps.sh
if [ -z "${FLEETBOARD:-}" ]; then
    cargo build --release -p fleetboard >&2
    FLEETBOARD="${CARGO_TARGET_DIR:-target}/release/fleetboard"
fi
FB="$(realpath "$FLEETBOARD")"
DURATION="${DURATION:-5}"

T="d$$"                       # unique suffix: several demos can run side by side
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

ip netns add "$NET"
ip -n "$NET" link add br0 type bridge
ip -n "$NET" link set br0 up
i=0
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

for n in hub a b; do
    "$FB" keygen >"$WORK/$n.key"
    "$FB" pubkey <"$WORK/$n.key" >"$WORK/$n.pub"
done
key() { cat "$WORK/$1.key"; }
pub() { cat "$WORK/$1.pub"; }

cat >"$WORK/hub.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.0.1/10"] }
private_key: "$(key hub)"
listen_port: 31820
admin: { socket: "$WORK/hub.sock" }
peers:
  - { name: gw-a, public_key: "$(pub a)", allowed_ips: ["100.64.1.0/24"] }
  - { name: gw-b, public_key: "$(pub b)", allowed_ips: ["100.64.2.0/24"] }
YAML
for n in a b; do
    idx=$([ "$n" = a ] && echo 1 || echo 2)
    cat >"$WORK/$n.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.$idx.1/10"] }
private_key: "$(key $n)"
listen_port: 31820
admin: { socket: "$WORK/$n.sock" }
peers:
  - { name: hub, public_key: "$(pub hub)", endpoint: "198.18.0.1:31820", allowed_ips: ["100.64.0.0/10"], persistent_keepalive: 5 }
YAML
done

(ip netns exec "$HUB" "$FB" dataplane --config "$WORK/hub.yaml" >"$WORK/hub.log" 2>&1 &)
(ip netns exec "$GA" "$FB" dataplane --config "$WORK/a.yaml" >"$WORK/a.log" 2>&1 &)
(ip netns exec "$GB" "$FB" dataplane --config "$WORK/b.yaml" >"$WORK/b.log" 2>&1 &)

echo "demo: waiting for gw-a to reach gw-b through the hub..."
ok=
for _ in $(seq 1 60); do
    if ip netns exec "$GA" ping -c1 -W1 100.64.2.1 >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
[ -n "$ok" ] || { echo "demo: no connectivity"; tail -n 20 "$WORK"/*.log; exit 1; }

(ip netns exec "$GB" iperf3 -s -1 -B 100.64.2.1 >/dev/null 2>&1 &)
sleep 0.5
if [ -n "${DEMO_HOOK:-}" ]; then eval "$DEMO_HOOK"; fi
echo "demo: iperf3 gw-a -> hub (relay) -> gw-b for ${DURATION}s"
ip netns exec "$GA" iperf3 -c 100.64.2.1 -t "$DURATION" -J >"$WORK/iperf.json"
python3 - "$WORK/iperf.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["end"]
print(f"demo: throughput through the hub: {r['sum_received']['bits_per_second']/1e9:.2f} Gbit/s "
      f"({r['sum_received']['bytes']/2**20:.0f} MiB received)")
PY
echo "demo: hub status:"
ip netns exec "$HUB" "$FB" dataplane show --socket "$WORK/hub.sock"
