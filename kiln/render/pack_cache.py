"""A render node's cache of scene packs: a job whose input is a pack renders from a local tree.

`kiln render` packs a scene with everything it depends on into `<sha256>.zip` (`packing`) and
hands the jobs that archive's URI instead of the .blend, so no node needs the submitter's disk.
A job fetches the archive once per node and digest, unpacks it verified into this cache, and
from then on the scene is an ordinary local .blend: the render zygote opens it ahead and keeps
warm processes for it as for any local scene, and later jobs of the same render find it here.

The cache is per user (`/tmp/kiln-packs-<uid>`, 0700 and owned by this user, else refused; or
`KILN_PACK_CACHE`): jobs of other local users cannot swap a cached tree (jobs of the same user
can: they are trusted alike). This module loads fsspec and BAT only when a job is given a pack,
since every job's start imports it. A lock per digest makes
the jobs that start together on a node fetch once; the others wait and reuse the tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

from kiln.render.errors import RenderError

CACHE_VARIABLE = "KILN_PACK_CACHE"
_PACK_NAME = re.compile(r"([0-9a-f]{64})\.zip")


def pack_digest(uri: str) -> str | None:
    """The digest of a pack URI (its file is named `<sha256>.zip`), None for anything else."""
    match = _PACK_NAME.fullmatch(PurePosixPath(uri.rstrip("/")).name)
    return match.group(1) if match else None


def cache_folder(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CACHE_VARIABLE) or Path(tempfile.gettempdir(), f"kiln-packs-{os.getuid()}"))


def scene_of_pack(uri: str, cache: Path, say: Callable[[str], None] = print) -> Path:
    """The local scene of the pack at `uri`, fetched and unpacked into `cache` unless already there."""
    from kiln.render.packing import cached_scene  # fsspec and BAT: loaded only by jobs given a pack

    digest = pack_digest(uri)
    if digest is None:
        raise RenderError(f"{uri} is not a scene pack (<sha256>.zip)")
    _ensure_private(cache)
    with _locked(cache / f".{digest}.lock"):  # the jobs starting together on a node fetch once
        scene = cached_scene(cache, digest)
        if scene is None:
            return _fetch(uri, cache, digest, say)
    say(f"scene pack {digest[:12]} is in this node's cache ({cache})")
    return scene


def _fetch(uri: str, cache: Path, digest: str, say: Callable[[str], None]) -> Path:
    from kiln.render import uris
    from kiln.render.packing import unpack_scene

    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{digest}.fetch-") as scratch:
        archive = Path(scratch, f"{digest}.zip")
        uris.download(uri, archive)
        size = archive.stat().st_size
        scene = unpack_scene(archive, cache, digest, source=uri)
    say(f"scene pack {digest[:12]} fetched from {uri} ({size / 2**20:.1f} MiB, {time.monotonic() - started:.1f} s)")
    return scene


def _ensure_private(folder: Path) -> None:
    """Create `folder` 0700, or check an existing one is this user's alone (never through a link):
    another local user could otherwise plant a tree under a digest."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RenderError(f"the scene pack cache {folder} is not a private folder of user {os.getuid()}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
