"""A render node's cache of scene packs: a job whose input is a pack renders from a local tree.

`kiln render` packs a scene with everything it depends on into `<sha256>.zip` (`packing`) and
hands the jobs that archive's URI instead of the .blend, so no node needs the submitter's disk.
A job fetches the archive once per node and digest, unpacks it verified into this cache, and
from then on the scene is an ordinary local .blend: the render zygote opens it ahead and keeps
warm processes for it as for any local scene, and later jobs of the same render find it here.

The cache is per user (`/tmp/kiln-packs-<uid>`, 0700 and owned by this user, else refused; or
`KILN_RENDER_PACK_CACHE`): jobs of other local users cannot swap a cached tree (jobs of the same user
can: they are trusted alike). Each digest has a lock file: a job holds it shared for its whole
life, so a tree in use is never trimmed, and exclusively while it fetches (the jobs that start
together on a node fetch once, the others wait and reuse the tree). Jobs of a cached tree never
wait for each other. After a fetch the cache
is trimmed to `KILN_RENDER_PACK_CACHE_MAX_MIB` by removing the trees used longest ago that no job holds,
and the leftovers of fetches that died half-way. This module loads fsspec and BAT only when a
job is given a pack, since every job's start imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

from kiln.render.errors import RenderError
from kiln.render.private_folder import is_private_folder

CACHE_VARIABLE = "KILN_RENDER_PACK_CACHE"
MAX_MIB_VARIABLE = "KILN_RENDER_PACK_CACHE_MAX_MIB"
DEFAULT_MAX_MIB = 20 * 1024
_PACK_NAME = re.compile(r"([0-9a-f]{64})\.zip")
_TREE_NAME = re.compile(r"[0-9a-f]{64}")
_LEFTOVER_NAME = re.compile(r"\.([0-9a-f]{64})\.(?:partial|fetch)-.*")  # packing's and _fetch's temporary folders
_held: list[int] = []  # the shared locks of the trees this process renders from, held until it exits


def pack_digest(uri: str) -> str | None:
    """The digest of a pack URI (its file is named `<sha256>.zip`), None for anything else."""
    match = _PACK_NAME.fullmatch(PurePosixPath(uri.rstrip("/")).name)
    return match.group(1) if match else None


def cache_folder(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CACHE_VARIABLE) or Path(tempfile.gettempdir(), f"kiln-packs-{os.getuid()}"))


def cache_limit_bytes(environ: Mapping[str, str]) -> int:
    text = environ.get(MAX_MIB_VARIABLE) or str(DEFAULT_MAX_MIB)
    try:
        mib = float(text)
    except ValueError:
        raise RenderError(f"{MAX_MIB_VARIABLE}={text!r} is not a number of MiB") from None
    return max(0, int(mib * 2**20))


def scene_of_pack(uri: str, cache: Path, limit_bytes: int, say: Callable[[str], None] = print) -> Path:
    """The local scene of the pack at `uri`, fetched and unpacked into `cache` unless already there.

    The tree stays locked (shared) until this process exits, so no trim removes it meanwhile.
    """
    from kiln.render.packing import cached_scene  # fsspec and BAT: loaded only by jobs given a pack

    digest = pack_digest(uri)
    if digest is None:
        raise RenderError(f"{uri} is not a scene pack (<sha256>.zip)")
    _ensure_private(cache)
    lock = os.open(_lock_file(cache, digest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _held.append(lock)
    fcntl.flock(lock, fcntl.LOCK_SH)  # jobs rendering from the tree hold it so; a trim may not remove it
    scene = cached_scene(cache, digest)
    fetched = False
    if scene is None:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one job fetches; the others wait here, then find the tree
        scene = cached_scene(cache, digest)
        if scene is None:
            scene, fetched = _fetch(uri, cache, digest, say), True
        fcntl.flock(lock, fcntl.LOCK_SH)
    os.utime(lock)  # its mtime says when a job last used the tree (atime is not kept on every mount)
    if fetched:
        for line in trim(cache, limit_bytes):
            say(line)
    else:
        say(f"scene pack {digest[:12]} is in this node's cache ({cache})")
    return scene


def trim(cache: Path, limit_bytes: int) -> list[str]:
    """Remove trees no job holds, used longest ago first, until the cache fits `limit_bytes`, and
    the temporary folders of fetches that died (their digest unlocked); returns what was done."""
    done: list[str] = []
    trees: list[tuple[float, int, Path]] = []
    for entry in cache.iterdir():
        leftover = _LEFTOVER_NAME.fullmatch(entry.name)
        if leftover is not None:
            with _unused(cache, leftover.group(1)) as unused:
                if unused:
                    shutil.rmtree(entry, ignore_errors=True)
                    done.append(f"removed {entry.name} (left by a fetch that did not finish)")
        elif _TREE_NAME.fullmatch(entry.name) and entry.is_dir():
            trees.append((_last_used(cache, entry.name), _size(entry), entry))
    total = sum(size for _, size, _ in trees)
    for _, size, tree in sorted(trees):
        if total <= limit_bytes:
            break
        with _unused(cache, tree.name) as unused:
            if unused:
                shutil.rmtree(tree, ignore_errors=True)
                total -= size
                done.append(f"removed scene pack {tree.name[:12]} from this node's cache ({size / 2**20:.1f} MiB)")
    return done


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


@contextlib.contextmanager
def _unused(cache: Path, digest: str) -> Iterator[bool]:
    """Whether no process holds `digest` (fetching or rendering from it); it stays so meanwhile."""
    try:
        lock = os.open(_lock_file(cache, digest), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(lock)


def _lock_file(cache: Path, digest: str) -> Path:
    return cache / f".{digest}.lock"


def _last_used(cache: Path, digest: str) -> float:
    try:
        return _lock_file(cache, digest).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(tree: Path) -> int:
    total = 0
    for path in tree.rglob("*"):
        with contextlib.suppress(OSError):  # removed meanwhile by another job's trim
            total += path.lstat().st_size if path.is_file() else 0
    return total


def _ensure_private(folder: Path) -> None:
    """Create `folder` 0700, or check an existing one is this user's alone (never through a link):
    another local user could otherwise plant a tree under a digest."""
    if not is_private_folder(folder, parents=True):
        raise RenderError(f"the scene pack cache {folder} is not a private folder of user {os.getuid()}")
