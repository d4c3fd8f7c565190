#!/usr/bin/env bash
# Installs the system packages FleetBoard's tests and demo need (Debian/Ubuntu, as root).
# Idempotent: does nothing when everything is present.
set -euo pipefail

PKGS=(iproute2 iputils-ping iperf3 procps kmod ethtool tcpdump wireguard-tools netcat-openbsd socat psmisc fonts-dejavu-core bind9-dnsutils)
# Real nodes (tests/k8s/tools builds containerd, kubelet, kube-proxy, CoreDNS and the CNI
# plugins; these are what they call): runc, containerd's OCI runtime; iptables and nftables
# (`nft`) for kube-proxy and the CNI portmap/bridge plugins; conntrack, which kube-proxy runs to
# flush stale UDP entries; util-linux for nsenter and mount (essential, listed for clarity).
PKGS+=(runc iptables nftables conntrack util-linux)
# Images without a registry: busybox-static for a test image's userland; buildah (needs uidmap
# for newuidmap/newgidmap, crun or runc to run RUN steps, fuse-overlayfs for its overlay storage
# outside a real overlay mount), mmdebstrap for the Debian base image, libcap2-bin for getcap
# (scripts/build-image.sh), jq to name the OCI archives (tests/k8s/images).
PKGS+=(busybox-static buildah uidmap crun fuse-overlayfs mmdebstrap libcap2-bin jq)
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
