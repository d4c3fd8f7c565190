#!/usr/bin/env bash
# Builds FleetBoard's image from the unchanged Dockerfile with buildah on a host that reaches no
# container registry. See docs/IMAGE-BUILD.md. CI calls it through tests/k8s/images (which caches
# the archive by a hash of the build context); run it directly to build an image by hand.
#
# What it does, all as root, all state under $IMAGE_WORK (keep it across CI runs):
#   1. debian:13.2-slim       = mmdebstrap --variant=minbase trixie (from the Debian mirror),
#                               imported FROM scratch, tagged docker.io/library/debian:13.2-slim
#   2. rust:1.95-slim-trixie  = that image + gcc/libc6-dev/ca-certificates + the host's rustup
#                               1.95.0 toolchain at /usr/local/rustup, /usr/local/cargo, with the
#                               official image's env; tagged docker.io/library/rust:1.95-slim-trixie
#   3. buildah bud of the Dockerfile on a staged copy of the context (changed files get a new
#      mtime, so cargo never keeps a stale build; cache mounts persisted in
#      $IMAGE_WORK/tmp/buildah-cache)
#   4. checks: fleetboard --help runs, file capability, user 65532; then an OCI archive whose
#      index names the image (io.containerd.image.name), so `ctr images import` needs no flags.
# Steps 1 and 2 are skipped when the base images are already in $IMAGE_WORK's storage.
#
# Needs (Debian bookworm): apt-get install --no-install-recommends buildah mmdebstrap libcap2-bin
#   (buildah 1.28.2 brings crun; libcap2-bin for getcap), jq, and rustup's 1.95.0 toolchain on the
#   host (`rustup run 1.95.0-...`, or the active toolchain if it is 1.95.0; RUSTUP_HOME is honoured).
#
# Usage: scripts/build-image.sh [--rebuild-bases]
#   IMAGE_WORK   state dir (default ~/.cache/fleetboard/image-build): buildah storage, base images,
#                cargo cache mounts (registry, target); one build at a time (flock)
#   IMAGE_TAG    default localhost/fleetboard:dev
#   IMAGE_OUT    OCI archive (default $IMAGE_WORK/fleetboard.oci.tar)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${IMAGE_WORK:-$HOME/.cache/fleetboard/image-build}
tag=${IMAGE_TAG:-localhost/fleetboard:dev}
out=${IMAGE_OUT:-$work/fleetboard.oci.tar}
debian_ref=docker.io/library/debian:13.2-slim
rust_ref=docker.io/library/rust:1.95-slim-trixie
rust_toolchain=1.95.0-x86_64-unknown-linux-gnu
suite=trixie
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
rebuild_bases=0
[[ ${1:-} == --rebuild-bases ]] && rebuild_bases=1

t0=$SECONDS
phase() { printf '== %s (%ds)\n' "$*" $((SECONDS - t0)); }

# The Dockerfile must still name the base images this script produces.
grep -q "^FROM ${rust_ref#docker.io/library/} " "$repo/Dockerfile" \
  || { echo "Dockerfile's builder base is not ${rust_ref#docker.io/library/}" >&2; exit 1; }
grep -q "^FROM ${debian_ref#docker.io/library/} " "$repo/Dockerfile" \
  || { echo "Dockerfile's runtime base is not ${debian_ref#docker.io/library/}" >&2; exit 1; }

# The host's rustup toolchain of the builder image's version: by name if rustup has it, else the
# active one if it is that version (a toolchain installed as `stable` only).
toolchain_sysroot() {
  local v=${rust_toolchain%%-*}
  if rustup run "$rust_toolchain" rustc --version 2>/dev/null | grep -q "^rustc $v "; then
    rustup run "$rust_toolchain" rustc --print sysroot
  elif rustc --version 2>/dev/null | grep -q "^rustc $v "; then
    rustc --print sysroot
  else
    echo "no rustc $v on this host: rustup toolchain install $rust_toolchain" >&2
    return 1
  fi
}

mkdir -p "$work"
# One build per state dir: a second one (another clone, another CI job) waits. `buildah rmi
# --prune` or `rm` of a container during another build breaks that build.
exec 8>"$work/.lock"
flock 8

# Private storage and registries configuration: nothing in /etc/containers is changed, and
# docker.io is blocked, so a base image missing from local storage fails instead of pulling.
mkdir -p "$work/conf" "$work/tmp"
cat >"$work/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$work/run"
graphroot = "$work/storage"
EOF
cat >"$work/conf/registries.conf" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
[[registry]]
prefix = "docker.io"
location = "docker.io"
blocked = true
EOF
export CONTAINERS_STORAGE_CONF=$work/conf/storage.conf
export CONTAINERS_REGISTRIES_CONF=$work/conf/registries.conf
# buildah keeps RUN --mount=type=cache directories in $TMPDIR/buildah-cache: persist them.
export TMPDIR=$work/tmp
export BUILDAH_ISOLATION=chroot
bud=(buildah bud --isolation chroot --pull=never)

have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# ---- 1. debian:13.2-slim from Debian packages ----
if ((rebuild_bases)) || ! have "$debian_ref"; then
  phase "base: $debian_ref (mmdebstrap $suite minbase)"
  ctx=$work/ctx-debian
  rm -rf "$ctx" && mkdir -p "$ctx"
  # Slim like the official image: no man pages, docs (but copyrights), locales, info; apt
  # deletes downloaded .debs after installing (the official image's docker-clean).
  # shellcheck disable=SC2016 # the hooks' "$1" is mmdebstrap's, expanded by its shell
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='Acquire::Languages "none"' \
    --customize-hook='printf "%s\n" "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1"/etc/apt/apt.conf.d/docker-clean' \
    --customize-hook='echo "Acquire::Languages \"none\";" >"$1"/etc/apt/apt.conf.d/docker-no-languages' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" "$ctx/rootfs.tar" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$ctx/Containerfile"
  "${bud[@]}" --quiet -t "$debian_ref" "$ctx"
  rm -rf "$ctx"
fi

# ---- 2. rust:1.95-slim-trixie: the host's official rustup toolchain ----
if ((rebuild_bases)) || ! have "$rust_ref"; then
  phase "base: $rust_ref (host rustup toolchain $rust_toolchain)"
  sysroot=$(toolchain_sysroot)
  rustup_bin=$(command -v rustup)
  ctx=$work/ctx-rust
  rm -rf "$ctx"
  mkdir -p "$ctx/usr/local/rustup/toolchains/$rust_toolchain" "$ctx/usr/local/cargo/bin" "$ctx/ca"
  # The toolchain without its 800 MB of HTML docs (rustup's "minimal" profile has none either).
  tar -C "$sysroot/" --exclude=./share/doc -cf - . | tar -C "$ctx/usr/local/rustup/toolchains/$rust_toolchain" -xf -
  cp "$(readlink -f "$rustup_bin")" "$ctx/usr/local/cargo/bin/rustup"
  for p in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt rust-gdb rust-gdbgui rust-lldb; do
    ln "$ctx/usr/local/cargo/bin/rustup" "$ctx/usr/local/cargo/bin/$p"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
    "$rust_toolchain" >"$ctx/usr/local/rustup/settings.toml"
  chmod -R a+w "$ctx/usr/local/rustup" "$ctx/usr/local/cargo"  # as the official image, before COPY
  # The build host's extra CAs (a TLS-intercepting egress proxy here): trusted in this local
  # builder image only, so cargo inside the build reaches crates.io. The runtime image never
  # sees them. None on an ordinary host.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Containerfile" <<EOF
FROM $debian_ref
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=${rust_toolchain%%-*}
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY usr/local/ /usr/local/
RUN rustc --version && cargo --version
EOF
  "${bud[@]}" --quiet -t "$rust_ref" "$ctx" >/dev/null
  rm -rf "$ctx"
fi

# ---- 3. the image, from the unchanged Dockerfile ----
# cargo judges freshness by mtime, and the Dockerfile's cache-mounted target/ outlives any one
# checkout: sources older than the cached build (another worktree, a branch switched back) would
# keep a stale binary in the image. So the context is a staged copy where a file keeps its
# previous mtime only if its content is unchanged since the last staging; changed files are
# new (mtime now), and cargo rebuilds exactly what changed. buildah applies .dockerignore there.
stage_context() {
  local old=$work/ctx-image new=$work/ctx-image.new f
  rm -rf "$new" && mkdir -p "$new"
  tar -C "$repo" --exclude=./.git --exclude=./target --exclude='./*/target' -cf - . \
    | tar -C "$new" -xmf -
  if [[ -d $old ]]; then
    while IFS= read -r -d '' f; do
      if cmp -s "$new/$f" "$old/$f"; then touch -r "$old/$f" "$new/$f"; fi
    done < <(cd "$new" && find . -type f -print0)
  fi
  rm -rf "$old" && mv "$new" "$old"
}
phase "image: $tag"
stage_context
"${bud[@]}" -f "$work/ctx-image/Dockerfile" -t "$tag" "$work/ctx-image"

# ---- 4. checks and the OCI archive ----
phase "checks"
ctr=$(buildah from --pull=never "$tag")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# The file capability's effective bit makes execve fail (EPERM) unless CAP_NET_ADMIN is in the
# bounding set, as in the charts (capabilities: drop ALL, add NET_ADMIN).
buildah run --isolation chroot --cap-add CAP_NET_ADMIN "$ctr" -- fleetboard --help >/dev/null
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")
[[ $user == 65532:65532 ]] || { echo "image user is '$user', want 65532:65532" >&2; exit 1; }
mnt=$(buildah mount "$ctr")
caps=$(getcap "$mnt/usr/local/bin/fleetboard")
buildah umount "$ctr" >/dev/null
[[ $caps == *cap_net_admin=ep* ]] || { echo "fleetboard file capability: '$caps'" >&2; exit 1; }
echo "user $user; $caps" | sed "s|$mnt||"
# OCI layout: the manifest's ref.name is the tag; io.containerd.image.name the full reference, the
# name `ctr images import` gives the image (without it ctr drops a full reference as ref.name).
lay=$work/tmp/oci-layout
rm -rf "$lay" "$out"
buildah push --quiet "$tag" "oci:$lay:${tag##*:}"
jq -c --arg n "$tag" '.manifests[0].annotations["io.containerd.image.name"] = $n' "$lay/index.json" >"$lay/index.json.new"
mv "$lay/index.json.new" "$lay/index.json"
mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$lay" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
rm -rf "$lay"
# Earlier builds' images, now untagged, would pile up in the persistent storage.
buildah rmi --prune >/dev/null
buildah images "$tag"
ls -l "$out"
phase "done"
