#!/usr/bin/env bash
# wg vs quic: the same three-namespace topology (scripts/topology.sh) once per transport;
# iperf3 (one TCP stream) gw-a -> hub and gw-a -> hub -> gw-b (relay), and the ping RTT
# through the relay. Writes the "Transports" section of perf/RESULTS.md. Needs root.
#
#   perf/transports.sh                # release build, 10 s per measurement
#   DURATION=5 FLEETBOARD=target/debug/fleetboard perf/transports.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prepare.sh
fb_prepare transports 10
rows=""
for transport in wg quic; do
    row=$(
        export TRANSPORT="$transport"
        source scripts/topology.sh
        topo_up >&2
        topo_wait >&2
        direct=$(iperf_gbps "$GA" 100.64.0.1 "$HUB" "$DURATION")
        relay=$(iperf_gbps "$GA" 100.64.2.1 "$GB" "$DURATION")
        rtt=$(ip netns exec "$GA" ping -q -c 20 -i 0.05 100.64.2.1 | awk -F/ '/^rtt/ {print $5}')
        echo "| $transport | $direct | $relay | $rtt |"
    )
    echo "transports: $row"
    rows+="$row"$'\n'
done

section="## Transports: wg vs quic

Command (as root): \`DURATION=$DURATION perf/transports.sh\` ($(basename "$(dirname "$FB")") build;
one iperf3 TCP stream, ${DURATION} s each; RTT = average of 20 pings gw-a -> gw-b through the
hub relay). Run: $(date -u +"%Y-%m-%d %H:%M UTC"), $(nproc) cores, machine shared with other
builds, \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`.

| transport | gw-a -> hub Gbit/s | gw-a -> hub -> gw-b Gbit/s | RTT via relay ms |
|---|---|---|---|
$rows"
touch perf/RESULTS.md
python3 - "$section" <<'PY'
import sys, re
path = "perf/RESULTS.md"
text = open(path).read()
text = re.sub(r"\n*## Transports: wg vs quic\n.*?(?=\n## |\Z)", "", text, flags=re.S)
open(path, "w").write(text.rstrip() + "\n\n" + sys.argv[1])
PY
echo "transports: wrote perf/RESULTS.md"
