#!/usr/bin/env bash
# Build Kiln's render worker image `kiln/render:latest` without any container registry:
#  1. a Debian bookworm root filesystem from debootstrap (Python 3.11 and the libraries bpy links
#     against), imported into Docker as `kiln/debian-base:bookworm` (skipped when it exists);
#  2. docker/render.Dockerfile on top of it (pip reaches the package index: --network host).
# Uses the daemon that `docker` talks to ($DOCKER_HOST). Run as root from anywhere in the repo.
# The Debian mirror is $DEBIAN_MIRROR, else the first one this machine's apt sources name.
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=""
cleanup() { rm -f docker/.build-ca.crt; [ -z "$rootfs" ] || rm -rf "$rootfs"; }
trap cleanup EXIT
BASE=${KILN_BASE_IMAGE:-kiln/debian-base:bookworm}
IMAGE=${KILN_RENDER_IMAGE:-kiln/render:latest}
# bpy's shared libraries (X11 client libs, GL dispatch) and what pip needs to fetch wheels.
PACKAGES=python3,python3-venv,ca-certificates,libx11-6,libxrender1,libxfixes3,libxi6,libxkbcommon0,libxext6,libsm6,libice6,libgl1,libglx0,libglvnd0,libxxf86vm1

apt_mirror() {  # the first non-security Debian mirror of /etc/apt/sources.list{,.d/*.list,.d/*.sources}
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -nE '/security/d; s/^URIs: +([^ ]+).*/\1/p; s/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/p' | head -n 1 || true
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}
  [ -n "$MIRROR" ] || { echo "no Debian mirror: set DEBIAN_MIRROR" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  rootfs=$(mktemp -d /tmp/kiln-rootfs.XXXXXX)
  echo "debootstrap bookworm from $MIRROR into $rootfs"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -c . | docker import --change 'ENV LANG=C.UTF-8' - "$BASE"
fi
# pip inside the build trusts what this host trusts ($PIP_CERT, else the system bundle).
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -s "$CA" ]; then cp "$CA" docker/.build-ca.crt; else : > docker/.build-ca.crt; fi
docker build --network host --build-arg BASE="$BASE" -f docker/render.Dockerfile -t "$IMAGE" .
docker image inspect "$IMAGE" --format "$IMAGE: {{.Size}} bytes"
