#!/usr/bin/env bash
# Installs the system packages FleetBoard's tests and demo need (Debian/Ubuntu, as root).
# Idempotent: does nothing when everything is present.
set -euo pipefail

PKGS=(iproute2 iputils-ping iperf3 procps kmod ethtool tcpdump wireguard-tools netcat-openbsd socat psmisc fonts-dejavu-core bind9-dnsutils)
# The test images (tests/k8s/images, scripts/build-image.sh): buildah builds them, mmdebstrap the
# Debian base, getcap checks the file capability, jq names the OCI archives, busybox-static is
# the busybox image.
PKGS+=(buildah mmdebstrap libcap2-bin jq busybox-static)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun; }
echo "install-deps: ok"
