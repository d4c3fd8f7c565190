#!/usr/bin/env bash
# Builds FleetBoard's Helm chart repository: both charts packaged (helm package) and an
# index.yaml whose chart URLs point at URL. Serve OUT_DIR at URL over HTTP(S) (any static file
# server: GitHub Pages, an object store, nginx), then:
#
#   helm repo add fleetboard URL
#   helm install fleetboard fleetboard/fleetboard --namespace fleetboard-system \
#     --create-namespace --set tunnel.endpoint=<hub address>
#
# Usage: scripts/chart-repo.sh OUT_DIR URL
#   OUT_DIR  created if missing; existing packages of other versions stay (helm repo index
#            --merge keeps them listed), a package of the same version is replaced
#   URL      where OUT_DIR is served, e.g. https://fleetboard-io.github.io/charts
# Needs helm 3 on PATH (or HELM=/path/to/helm).
set -euo pipefail

[ $# -eq 2 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1
url=${2%/}
helm=${HELM:-helm}
repo=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$out"
for chart in fleetboard fleetboard-agent; do
    lint=$("$helm" lint --strict "$repo/charts/$chart" 2>&1) || { echo "$lint" >&2; exit 1; }
    "$helm" package --destination "$out" "$repo/charts/$chart" >/dev/null
done
if [ -f "$out/index.yaml" ]; then
    "$helm" repo index "$out" --url "$url" --merge "$out/index.yaml"
else
    "$helm" repo index "$out" --url "$url"
fi
echo "chart repository in $out for $url:"
ls -1 "$out"
