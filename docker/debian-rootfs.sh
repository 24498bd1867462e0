#!/usr/bin/env bash
# The Debian bookworm root filesystems of Kiln's render image, made with debootstrap (no registry).
#
#   debian-rootfs.sh builder DIR MIRROR   a minbase system with Python 3.11 (venv and pip included)
#                                         and the shared libraries bpy links against
#   debian-rootfs.sh runtime DIR          turns a builder tree into the image's runtime base: no
#                                         pip/venv wheels (the build stage installs the packages)
#
# build-render-image.sh tags both images with a hash of this file, so a change here rebuilds them.
# What bpy and PyAV need from the system (`ldd` on every .so of bpy, av, numpy, zstandard): glibc,
# libstdc++, zlib, the X11 client libraries below, and libGL.so.1/libGLX.so.0/libGLdispatch.so.0 (the
# glvnd dispatchers, linked but only used when a GL context is made: never by Cycles in the
# background). Debian's libglx0 depends on Mesa, which brings LLVM, ICU, Z3 and libdrm (about
# 220 MB) that no render loads: the three dispatch libraries are kept as plain files and their
# packages, Mesa with them, are purged, so dpkg's database stays consistent (`apt-get install`
# works in images built FROM this one; installing libgl1 there brings them back as packages).
set -euo pipefail
mode=${1:?usage: debian-rootfs.sh builder DIR MIRROR | runtime DIR}
root=${2:?the root filesystem folder}

# The libraries bpy links against (besides glibc, libstdc++ and zlib, which minbase has).
BPY_LIBRARIES=libx11-6,libxrender1,libxfixes3,libxi6,libxkbcommon0,libxext6,libsm6,libice6
GL_PACKAGES="libgl1 libglx0 libglvnd0"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

# Documentation, manuals, translations and keyboard maps: nothing a render reads. Removed now and
# kept out of packages installed later (as Debian's own slim images do).
slim() {
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  cat > "$root/etc/dpkg/dpkg.cfg.d/kiln-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/X11/xkb/*
EOF
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/usr/share/X11/xkb/*
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old
  find "$root/var/log" -type f -delete
}

# Purge `packages` and whatever only they needed: every package is marked automatically installed
# except those of required/important/standard priority and `keep`, then `apt-get autoremove`.
purge_with_orphans() {
  local keep=$1 packages=$2
  in_root apt-mark auto $(in_root dpkg-query -W -f '${Package}\n') >/dev/null
  in_root apt-mark manual $(in_root dpkg-query -W -f '${Package} ${Priority}\n' | awk '$2 ~ /required|important|standard/ {print $1}') ${keep//,/ } >/dev/null
  in_root apt-get -o Dpkg::Use-Pty=0 purge -y -q $packages >/dev/null
  in_root apt-get -o Dpkg::Use-Pty=0 autoremove --purge -y -q >/dev/null
}

case $mode in
  builder)
    mirror=${3:?a Debian mirror URL}
    debootstrap --variant=minbase --include="python3,python3-venv,ca-certificates,$BPY_LIBRARIES,libgl1" \
      bookworm "$root" "$mirror"
    gl_files=$(in_root dpkg -L $GL_PACKAGES | grep '\.so' | sed 's|^/||')
    tar -C "$root" -cf "$root/.gl.tar" $gl_files
    purge_with_orphans "python3,python3-venv,ca-certificates,$BPY_LIBRARIES" "$GL_PACKAGES"
    tar -C "$root" -xf "$root/.gl.tar" && rm "$root/.gl.tar"
    slim
    ;;
  runtime)
    purge_with_orphans "python3,ca-certificates,$BPY_LIBRARIES" "python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl"
    slim
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
in_root python3 -c 'import ctypes, ssl; [ctypes.CDLL(n) for n in ("libGL.so.1", "libX11.so.6", "libXi.so.6")]'
