"""Kiln's render image for the tests: built before pytest (`make render-image`), cached on this machine.

Building `kiln/render:latest` (docker/build-render-image.sh) takes minutes from nothing, so the suite
never builds it: `make test` first runs `python -m tests.render_image`, and the Docker render tests
(tests/render/test_docker_render.py) use what it built. Both use one Docker data root in the
machine's cache folder (`$KILN_IMAGE_CACHE`, else `~/.cache/kiln/render-image`), served by a
`dockerd` started for the purpose and stopped afterwards, one at a time (a lock file). It keeps the
Debian bases and the layer holding bpy & co. between runs, so after a change to Kiln's code only
Kiln's own layer is rebuilt, and an unchanged tree builds nothing.

The image is labelled with a digest of what it is built from (`SOURCES`: the files the Dockerfile
copies, as .dockerignore selects them, and the build recipe) and is current when that label matches
the working tree. Where it cannot be built (not root, no dockerd or debootstrap, no Debian mirror, a
dockerd that does not start) the reason is printed and kept in the cache folder (`unavailable`),
`make test` goes on and the Docker render tests skip with that reason. A build that starts and
fails fails `make render-image`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

from tests.docker_daemon import DockerDaemon, DockerMissing, own_dockerd

REPO = Path(__file__).resolve().parents[1]
RENDER_IMAGE = "kiln/render:latest"
KEY_LABEL = "org.kiln.source-key"
BUILD_SCRIPT = "docker/build-render-image.sh"
# What the image is made of: the build context (.dockerignore) and the recipe.
SOURCES = ("requirements/lock.txt", "pyproject.toml", "setup.py", "README.md", "kiln", ".dockerignore",
           "docker/render.Dockerfile", BUILD_SCRIPT, "docker/debian-rootfs.sh")  # fmt: skip
IGNORED_NAMES = ("__pycache__",)
IGNORED_SUFFIXES = (".pyc", ".so")
LOCK_WAIT_SECONDS = {"build": 1800.0, "test": 120.0}


class Unavailable(Exception):
    """The render image cannot be had here (the message says why)."""


def cache_folder() -> Path:
    configured = os.environ.get("KILN_IMAGE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "render-image"


def source_key(repo: Path = REPO) -> str:
    """sha256 over the path and content of every file the image is built from."""
    digest = hashlib.sha256()
    for path in sorted(_source_files(repo)):
        content = path.read_bytes()
        digest.update(f"{path.relative_to(repo).as_posix()}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def _source_files(repo: Path) -> Iterator[Path]:
    for name in SOURCES:
        top = repo / name
        if top.is_file():
            yield top
            continue
        for folder, folders, files in os.walk(top):
            folders[:] = [child for child in folders if child not in IGNORED_NAMES]
            for file in files:
                if not file.endswith(IGNORED_SUFFIXES):
                    yield Path(folder) / file


def why_not_buildable() -> str | None:
    """Why this machine cannot build the image, or None when it can (as far as can be told before trying)."""
    if os.geteuid() != 0:
        return "building the render image needs root (debootstrap and dockerd)"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's {package}; `make docker-test-deps` installs it where apt works)"
    apt_sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    if not os.environ.get("DEBIAN_MIRROR") and not any(path.is_file() for path in apt_sources):
        return "no Debian mirror for debootstrap: set DEBIAN_MIRROR"
    return None


@contextmanager
def image_daemon(purpose: str) -> Iterator[DockerDaemon]:
    """A dockerd on the cache's data root, while holding its lock (`purpose` sets how long to wait)."""
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / "lock").open("a+")
    except OSError as error:
        raise Unavailable(f"no cache folder for the render image: {error}") from None
    with lock:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS[purpose]
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the render image cache {folder} stayed locked by another run") from None
                time.sleep(1)
        with own_dockerd(data_root=folder / "dockerd") as url:
            client = docker.DockerClient(base_url=url, version="auto", timeout=300)
            try:
                yield DockerDaemon(url, client, image=RENDER_IMAGE)
            finally:
                client.close()


def is_current(client: docker.DockerClient, key: str) -> bool:
    try:
        image = client.images.get(RENDER_IMAGE)
    except docker.errors.ImageNotFound:
        return False
    return bool(image.labels.get(KEY_LABEL) == key)


@contextmanager
def render_engine() -> Iterator[DockerDaemon]:
    """For the tests: the image's daemon with a current `kiln/render:latest`, else `Unavailable`."""
    try:
        with image_daemon("test") as daemon:
            if not is_current(daemon.client, source_key()):
                unavailable = cache_folder() / "unavailable"
                why = unavailable.read_text().strip() if unavailable.is_file() else "`make render-image` builds it"
                raise Unavailable(f"{RENDER_IMAGE} is not built from this tree in {cache_folder()}: {why}")
            yield daemon
    except DockerMissing as error:
        raise Unavailable(f"no daemon for {RENDER_IMAGE}: {error}") from None


def build() -> int:
    """`make render-image`: build the image unless it is current or cannot be built here; exit status."""
    folder = cache_folder()
    key = source_key()
    reason = why_not_buildable()
    try:
        if reason is None:
            with image_daemon("build") as daemon:
                if is_current(daemon.client, key):
                    say(f"{RENDER_IMAGE} is current (sources {key[:12]}) in {folder}")
                else:
                    status = _build_into(daemon, key, folder)
                    if status != 0:
                        return status
            (folder / "unavailable").unlink(missing_ok=True)
            return 0
    except (DockerMissing, Unavailable) as error:
        reason = str(error)
    with contextlib.suppress(OSError):  # (the tests find the same reason themselves if this fails)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "unavailable").write_text(reason + "\n")
    say(f"{RENDER_IMAGE} not built: {reason}; the Docker render tests will skip")
    return 0


def _build_into(daemon: DockerDaemon, key: str, folder: Path) -> int:
    log = folder / "build.log"
    say(f"building {RENDER_IMAGE} (sources {key[:12]}) in {folder}; output in {log}")
    started = time.monotonic()
    environment = {**os.environ, "DOCKER_HOST": daemon.url, "KILN_RENDER_IMAGE_KEY": key}
    with log.open("wb") as output:
        done = subprocess.run(
            [str(REPO / BUILD_SCRIPT)], env=environment, stdout=output, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        say(f"{BUILD_SCRIPT} failed ({done.returncode}); the end of {log}:\n" + "\n".join(tail))
        return done.returncode
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("kiln-build-time: "):
            say(line.removeprefix("kiln-build-time: "))
    daemon.client.images.prune(filters={"dangling": True})  # superseded images; the bases and deps stay tagged
    size = daemon.client.images.get(RENDER_IMAGE).attrs["Size"]
    say(f"built {RENDER_IMAGE} in {time.monotonic() - started:.0f} s: {size:,} bytes")
    return 0


def say(line: str) -> None:
    print(f"render image: {line}", flush=True)


if __name__ == "__main__":
    sys.exit(build())
