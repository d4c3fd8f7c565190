#!/usr/bin/env bash
# First FleetBoard dataplane benchmark: iperf3 (one TCP stream) in one run over
#   1. the raw underlay: gw-a -> gw-b over veth + bridge, no tunnel;
#   2. the tunnel, one hop: gw-a -> hub's overlay address (100.64.0.1);
#   3. the tunnel through the hub relay: gw-a -> hub -> gw-b (100.64.1.1 -> 100.64.2.1).
# Writes the figures and the exact command to perf/RESULTS.md. Needs root.
#
#   perf/bench.sh                     # release build, 10 s per measurement
#   DURATION=5 perf/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prepare.sh
fb_prepare bench 10

source scripts/topology.sh
topo_up
topo_wait

raw=$(iperf_gbps "$GA" 198.18.0.3 "$GB" "$DURATION")
echo "bench: raw veth+bridge      $raw Gbit/s"
direct=$(iperf_gbps "$GA" 100.64.0.1 "$HUB" "$DURATION")
echo "bench: tunnel gw-a -> hub   $direct Gbit/s"
relay=$(iperf_gbps "$GA" 100.64.2.1 "$GB" "$DURATION")
echo "bench: tunnel via hub relay $relay Gbit/s"

offload=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/a.log" | grep -ao 'offload=[a-z]*' | head -1 || true)
cat >perf/RESULTS.md <<MD
# Dataplane throughput

Command (as root, from the repository root): \`DURATION=$DURATION perf/bench.sh\`
(release build; one iperf3 TCP stream, ${DURATION} s each; namespaces and bridge as in
\`scripts/topology.sh\`).

Run: $(date -u +"%Y-%m-%d %H:%M UTC"), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),
\`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`, machine shared with other builds.

| path | Gbit/s |
|---|---|
| raw underlay (veth + bridge, no tunnel) | $raw |
| tunnel, one hop (gw-a -> hub overlay address) | $direct |
| tunnel through the hub relay (gw-a -> hub -> gw-b) | $relay |

Dataplane I/O: one tokio task per node (current-thread runtime); UDP with recvmmsg + GRO and
GSO sends (quinn-udp); TUN with TCP segmentation offload when available (this run:
TUN ${offload:-offload=unknown}), one packet per TUN write. In the relay case three dataplanes
and iperf3 share the cores; the machine was shared with other builds (load average
$(cut -d' ' -f1 /proc/loadavg) at the end of the run), so figures are indicative.
MD
echo "bench: wrote perf/RESULTS.md"
