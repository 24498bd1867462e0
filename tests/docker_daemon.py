"""A Docker daemon for the tests, and a tiny image built without any registry.

A daemon that already answers (`$KILN_TEST_DOCKER_HOST`, `$DOCKER_HOST` or the default socket) is
used as it is. Otherwise the tests start their own `dockerd` as root with its state in a temp dir
and the flags that work on a VM without iptables (`DOCKERD_FLAGS`: no iptables, no bridge), and stop it
at the end. The test image is `docker import` of a root filesystem holding only Debian's static
busybox (`/bin/sh`, `sleep`, `head`, ...), so nothing is pulled from anywhere.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

TEST_IMAGE = "kiln-test/busybox:1"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DOCKERD_FLAGS = ["--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge=none"]
START_SECONDS = 60


class DockerMissing(Exception):
    """No daemon answers and none can be started here (the message says why)."""


@dataclass
class DockerDaemon:
    url: str
    client: docker.DockerClient
    image: str = TEST_IMAGE


def answers(url: str) -> bool:
    try:
        client = docker.DockerClient(base_url=url, version="auto", timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


@contextmanager
def docker_daemon() -> Iterator[DockerDaemon]:
    """An answering daemon with the test image in it; one started here is stopped afterwards."""
    for url in filter(None, (os.environ.get("KILN_TEST_DOCKER_HOST"), os.environ.get("DOCKER_HOST"), DEFAULT_SOCKET)):
        if answers(url):
            yield _with_image(url)
            return
    with own_dockerd() as url:
        yield _with_image(url)


@contextmanager
def own_dockerd(data_root: Path | None = None) -> Iterator[str]:
    """A `dockerd` started here as root (its URL); state in a temp dir, or images kept in `data_root`.

    Only the daemon's socket, pid file and run-time state go to the temp dir then, so a `data_root`
    outlives the daemon (tests/render_image.py keeps the render image's build cache there). One
    daemon at a time may use a data root: the caller holds a lock.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerMissing("no Docker daemon answers and dockerd is not installed (`make test` installs docker.io)")
    if os.geteuid() != 0:
        raise DockerMissing("no Docker daemon answers and starting dockerd needs root")
    root = Path(tempfile.mkdtemp(prefix="kiln-dockerd-", dir="/tmp"))  # short: unix socket paths are limited
    url = f"unix://{root}/docker.sock"
    log = (root / "dockerd.log").open("wb")
    data = data_root or root / "data"
    command = [dockerd, *DOCKERD_FLAGS, "--data-root", str(data), "--exec-root", str(root / "exec"),
               "-H", url, "--pidfile", str(root / "docker.pid")]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DockerMissing(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        _unmount_below(root)
        if data_root is not None:
            _unmount_below(data_root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    """dockerd leaves its network namespace bind-mounted (`exec/netns/default`): unmount, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _with_image(url: str) -> DockerDaemon:
    client = docker.DockerClient(base_url=url, version="auto", timeout=60)
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = TEST_IMAGE.rsplit(":", 1)
        client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag, changes=["ENV PATH=/bin"])
    return DockerDaemon(url, client)


def static_busybox() -> Path:
    """Debian's `busybox-static` binary: it runs in an image that has no libc."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
            if "not a dynamic executable" in ldd.stdout + ldd.stderr:
                return path
    raise DockerMissing("no static busybox for the test image (`make test` installs busybox-static)")


def busybox_rootfs() -> bytes:
    """A tar of a root filesystem: /bin/busybox, a symlink per applet, /tmp and /etc/passwd."""
    busybox = static_busybox()
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        entry = tarfile.TarInfo("etc/passwd")
        entry.size = len(passwd)
        tar.addfile(entry, io.BytesIO(passwd))
    return buffer.getvalue()
