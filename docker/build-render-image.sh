#!/usr/bin/env bash
# Build Kiln's render worker image `kiln/render:latest` without any container registry:
#  1. two Debian bookworm bases from one debootstrap run (docker/debian-rootfs.sh), imported as
#     `kiln/debian-builder:bookworm-<hash>` and `kiln/debian-runtime:bookworm-<hash>`, where <hash>
#     is that script's (skipped when both exist: a daemon that keeps its images caches them);
#  2. docker/render.Dockerfile on top of them (pip reaches the package index: --network host).
# Uses the daemon that `docker` talks to ($DOCKER_HOST). Run as root from anywhere in the repo.
# The Debian mirror is $DEBIAN_MIRROR, else the first one this machine's apt sources name.
# $KILN_RENDER_IMAGE names the image; $KILN_RENDER_IMAGE_KEY, when set, becomes its label
# `org.kiln.source-key` (the test set-up's digest of the sources, tests/render_image.py).
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=""
cleanup() { rm -f docker/.build-ca.crt; [ -z "$rootfs" ] || rm -rf "$rootfs"; }
trap cleanup EXIT
IMAGE=${KILN_RENDER_IMAGE:-kiln/render:latest}
BASE_HASH=$(sha256sum docker/debian-rootfs.sh | cut -c1-12)
BUILDER_BASE=kiln/debian-builder:bookworm-$BASE_HASH
RUNTIME_BASE=kiln/debian-runtime:bookworm-$BASE_HASH
export DOCKER_BUILDKIT=0  # the classic builder: what Debian's docker.io has, with no buildx plugin

apt_mirror() {  # the first non-security Debian mirror of /etc/apt/sources.list{,.d/*.list,.d/*.sources}
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -nE '/security/d; s/^URIs: +([^ ]+).*/\1/p; s/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/p' | head -n 1 || true
}

import_rootfs() {  # import_rootfs TAG: the tree in $rootfs as an image
  tar -C "$rootfs" --numeric-owner -c . | docker import --change 'ENV LANG=C.UTF-8' - "$1" >/dev/null
}

started=$SECONDS
if ! docker image inspect "$BUILDER_BASE" "$RUNTIME_BASE" >/dev/null 2>&1; then
  MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}
  [ -n "$MIRROR" ] || { echo "no Debian mirror: set DEBIAN_MIRROR" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  rootfs=$(mktemp -d /tmp/kiln-rootfs.XXXXXX)
  echo "debootstrap bookworm from $MIRROR into $rootfs"
  docker/debian-rootfs.sh builder "$rootfs" "$MIRROR"
  import_rootfs "$BUILDER_BASE"
  docker/debian-rootfs.sh runtime "$rootfs"
  import_rootfs "$RUNTIME_BASE"
  rm -rf "$rootfs" && rootfs=""
  echo "kiln-build-time: Debian bases $((SECONDS - started)) s"
fi
# pip inside the build trusts what this host trusts ($PIP_CERT, else the system bundle).
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -s "$CA" ]; then cp "$CA" docker/.build-ca.crt; else : > docker/.build-ca.crt; fi
build=(docker build --network host --build-arg "BUILDER_BASE=$BUILDER_BASE" --build-arg "RUNTIME_BASE=$RUNTIME_BASE"
       -f docker/render.Dockerfile)
# The package stage gets a tag of its own, so pruning untagged images never drops its cache.
started=$SECONDS
"${build[@]}" --target deps -t kiln/render-deps:latest .
echo "kiln-build-time: package stage $((SECONDS - started)) s"
started=$SECONDS
"${build[@]}" ${KILN_RENDER_IMAGE_KEY:+--label "org.kiln.source-key=$KILN_RENDER_IMAGE_KEY"} -t "$IMAGE" .
echo "kiln-build-time: Kiln and the runtime stage $((SECONDS - started)) s"
docker image inspect "$IMAGE" --format "$IMAGE: {{.Size}} bytes"
