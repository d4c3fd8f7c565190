#!/usr/bin/env bash
# FleetBoard local demo: three "clusters" as network namespaces on one bridge (the "internet"):
# hub, gw-a, gw-b. A dataplane runs in each; gw-a and gw-b only know the hub, and the hub
# relays between them. iperf3 then runs from gw-a (100.64.1.1) to gw-b (100.64.2.1) through
# the hub and the throughput is printed. Everything is removed at the end. Needs root.
#
#   scripts/demo-dataplane.sh                                 # builds (release) and runs
#   FLEETBOARD=target/debug/fleetboard DURATION=3 scripts/demo-dataplane.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prepare.sh
fb_prepare demo 5

source scripts/topology.sh
topo_up
echo "demo: waiting for gw-a to reach gw-b through the hub..."
topo_wait
echo "demo: iperf3 gw-a -> hub (relay) -> gw-b for ${DURATION}s"
echo "demo: throughput through the hub: $(iperf_gbps "$GA" 100.64.2.1 "$GB" "$DURATION") Gbit/s"
echo "demo: hub status (fleetboard dataplane show):"
ip netns exec "$HUB" "$FB" dataplane show --socket "$WORK/hub.sock"
