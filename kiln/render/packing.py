"""Pack a .blend scene and every file it depends on into one content-addressed zip, and unpack it.

Why: render nodes of a Ray cluster share no disk, so a scene's textures (`//textures/...`),
linked libraries (other .blend files) and assets at absolute paths must travel with it. Blender
Asset Tracer (BAT, what Flamenco uses) finds the dependencies and rewrites the paths inside the
copied .blend files, so the packed scene finds every asset relative to itself. The pack becomes
ONE zip written deterministically (sorted entries, fixed timestamps and permissions), so its
sha256 is a content address: the same inputs give the same bytes, a node fetches each digest
once and keeps the unpacked tree in its cache.

Layout of an archive: the project (the common folder of the scene and the assets it reaches by
relative paths) at the top, assets outside it under `_outside_project/<their absolute path>`
(BAT's scheme), and `kiln-pack.json` naming the scene. Transport is not this module's business.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from blender_asset_tracer import blendfile, bpathlib, pack, trace
from blender_asset_tracer.blendfile.exceptions import BlendFileError as BatBlendFileError
from blender_asset_tracer.pack import filesystem, transfer
from blender_asset_tracer.trace.result import BlockUsage

from kiln.render.blend_header import read_scene_info
from kiln.render.errors import BlendFileError, RenderError

MANIFEST = "kiln-pack.json"
MANIFEST_FORMAT = 1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_FILE_MODE = stat.S_IFREG | 0o644
# Formats that are compressed already: deflating them again costs time and saves nothing.
_STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".exr", ".mp4", ".mov", ".mkv", ".zip", ".zst", ".gz"})
_CHUNK = 1 << 20
_GZIP_FNAME = 0x08
_DIGEST = re.compile(r"[0-9a-f]{64}")
# BAT keeps every .blend it parsed in a module-global cache that is not thread-safe and never
# notices a file changing on disk: one pack at a time, and the cache emptied after each.
BAT_LOCK = threading.Lock()


class PackingError(RenderError):
    """The scene cannot be packed, or an archive cannot be unpacked; the message says why."""


class DigestMismatchError(PackingError):
    """The archive's bytes are not the ones its content address names (damaged or tampered)."""


class UnsafeArchiveError(PackingError):
    """An entry of the archive would land outside its folder (absolute, `..`, link) or is malformed."""


@dataclass(frozen=True)
class PackedScene:
    """One packed scene: the archive `<digest>.zip` and what the submitter reports to the user."""

    archive: Path
    digest: str  # sha256 hex of the archive's bytes: its content address
    scene: PurePosixPath  # the scene's path inside the archive (and below an unpacked tree)
    file_count: int  # the scene and its packed dependencies (the manifest not counted)
    total_bytes: int  # their size, uncompressed
    missing: tuple[Path, ...]  # assets the scene refers to that do not exist: not packed, never silently


def pack_scene(scene: Path, workdir: Path, *, confined_to: Path | None = None) -> PackedScene:
    """Pack `scene` and everything it depends on into `workdir/<digest>.zip`.

    A missing asset does not fail packing (Blender renders without it, pink for a texture): it is
    listed in `missing` so the caller can warn. An input that is not a readable .blend file
    raises PackingError. `confined_to`: pack only assets inside that folder and list the others
    as missing. For a scene fetched from a store (remote_scene), whose absolute or climbing paths
    would otherwise pick files of this machine (`//../../../home/me/.ssh/id_rsa`) into the pack.
    """
    scene = bpathlib.make_absolute(scene)
    if not scene.is_file():
        raise PackingError(f"{scene}: no such .blend file")
    try:
        read_scene_info(scene)
    except BlendFileError as error:
        raise PackingError(f"{scene}: {error}") from None
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".pack-") as temporary:
        tree = Path(temporary, "tree")
        scene_in_tree, missing = _bat_pack(scene, tree, confined_to)
        for blend in tree.rglob("*.blend"):
            _normalise_gzip_header(blend)
        manifest = json.dumps({"format": MANIFEST_FORMAT, "scene": scene_in_tree.as_posix()}, sort_keys=True)
        partial = Path(temporary, "archive.zip")
        file_count, total_bytes = _write_zip(tree, manifest.encode(), partial)
        digest = _sha256(partial)
        archive = workdir / f"{digest}.zip"
        os.replace(partial, archive)
    return PackedScene(archive, digest, scene_in_tree, file_count, total_bytes, missing)


def unpack_scene(archive: Path, cache_dir: Path, digest: str, source: str | None = None) -> Path:
    """The scene of `archive`, unpacked once into `cache_dir/<digest>/`; returns the scene's path.
    Errors name the archive as `source` (where it was downloaded from), else by its path.

    An existing complete tree is reused without reading the archive. Otherwise the archive must
    hash to `digest` (DigestMismatchError) and hold only plain relative entries
    (UnsafeArchiveError); it is extracted beside the final folder and renamed into place, so a
    concurrent caller sees either no tree or a complete one, and the loser of a race uses the
    winner's.
    """
    cached = cached_scene(cache_dir, digest)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / digest
    with archive.open("rb") as raw:  # hashed and extracted through one descriptor: no swap in between
        actual = _sha256_of(raw)
        if actual != digest:
            raise DigestMismatchError(f"{source or archive}: sha256 is {actual}, expected {digest}")
        raw.seek(0)
        partial = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{digest}.partial-"))
        partial.chmod(0o755)  # mkdtemp's folder is private; the tree is as readable as its files
        try:
            _extract(raw, source or str(archive), partial)
            try:
                os.rename(partial, final)
            except OSError:
                if cached_scene(cache_dir, digest) is None:
                    raise
                # another caller renamed its complete copy into place first: use that one
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already when our rename succeeded
    scene = cached_scene(cache_dir, digest)
    assert scene is not None, final
    return scene


def cached_scene(cache_dir: Path, digest: str) -> Path | None:
    """The scene of a complete tree already unpacked under `cache_dir`, else None (fetch first)."""
    if not _DIGEST.fullmatch(digest):
        raise PackingError(f"{digest!r} is not a sha256 hex digest")
    try:
        manifest = (cache_dir / digest / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    return cache_dir / digest / _scene_of(manifest, f"{cache_dir / digest}")


def _bat_pack(scene: Path, tree: Path, confined_to: Path | None) -> tuple[PurePosixPath, tuple[Path, ...]]:
    """BAT copies the scene and its dependencies into `tree`, rewriting paths that would break."""
    with BAT_LOCK:
        try:
            usages = list(trace.deps(scene))
            outside = _outside(usages, confined_to)
            project = _project_root(scene, usages, outside)
            with _Packer(scene, project, str(tree)) as packer:
                packer.exclude(*(glob.escape(str(path)) for path in outside))
                packer.strategise()
                packer.execute()
                scene_in_tree = PurePosixPath(packer.output_path.relative_to(tree).as_posix())
                missing = tuple(sorted(set(packer.missing_files) | outside))
        except (BatBlendFileError, pack.Aborted, OSError) as error:
            raise PackingError(f"cannot pack {scene}: {error}") from None
        finally:
            blendfile.close_all_cached()
    (tree / "pack-info.txt").unlink(missing_ok=True)  # BAT's note for people; the manifest says it
    if (tree / MANIFEST).exists():
        raise PackingError(f"{project / MANIFEST} is an asset of the scene: Kiln's manifest needs that name")
    return scene_in_tree, missing


class _PromptCopier(filesystem.FileCopier):
    """BAT's file copier, polling its queues every 10 ms instead of every 0.5 s: BAT's copier
    waits up to half a second (twice) after the last file before the pack can end, most of the
    time a small scene takes. Relies on FileTransferer's `queue`, `done`, `_abort`, `has_error`
    and `progress_cb` (blender-asset-tracer is pinned)."""

    POLL_SECONDS = 0.01

    def iter_queue(self) -> Iterator[transfer.QueueItem]:
        while not (self._abort.is_set() or self.has_error):
            try:
                source, destination, action = self.queue.get(timeout=self.POLL_SECONDS)
            except queue.Empty:
                if self.done.is_set():
                    return
                continue
            self.progress_cb.transfer_file(source, destination)
            yield source, destination, action

    def join(self, timeout: float | None = None) -> None:
        """Until the copier thread ends, handing BAT's progress reports on (it needs them)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive() and (deadline is None or time.monotonic() < deadline):
            self.progress_cb.flush(timeout=self.POLL_SECONDS)


class _Packer(pack.Packer):
    """BAT's packer with the prompt copier (`_create_file_transferer` is BAT's hook for this)."""

    def _create_file_transferer(self) -> transfer.FileTransferer:
        return _PromptCopier()


def _outside(usages: list[BlockUsage], confined_to: Path | None) -> set[Path]:
    """The assets not inside `confined_to` (none when it is None)."""
    if confined_to is None:
        return set()
    root = bpathlib.make_absolute(confined_to)
    return {usage.abspath for usage in usages if not bpathlib.make_absolute(usage.abspath).is_relative_to(root)}


def _project_root(scene: Path, usages: list[BlockUsage], outside: set[Path]) -> Path:
    """The deepest folder holding the scene and every existing asset it reaches by a relative path
    (those `outside` excepted).

    Inside it, BAT keeps relative paths (`//../library/props.blend`) as they are and rewrites
    nothing; absolute paths are always moved below `_outside_project/` and rewritten.
    """
    folders = [str(scene.parent)]
    for usage in usages:
        if usage.asset_path.is_blendfile_relative() and usage.abspath not in outside:
            target = usage.abspath.parent if usage.is_sequence else usage.abspath
            if target.exists():
                folders.append(str(target if target.is_dir() else target.parent))
    return Path(os.path.commonpath(folders))


def _normalise_gzip_header(blend: Path) -> None:
    """Zero the time and drop the name that BAT's gzip writes when it recompresses a rewritten .blend.

    Without this, a compressed scene that needed rewriting would pack to different bytes each time.
    Only the header changes; the deflate stream and its CRC are copied as they are.
    """
    with blend.open("rb") as source:
        head = source.read(10)
        if len(head) < 10 or head[:3] != b"\x1f\x8b\x08" or head[3] & ~_GZIP_FNAME:
            return  # not gzip, or with fields Python's gzip never writes: left as it is
        if head[3] & _GZIP_FNAME:
            while source.read(1) not in (b"\0", b""):
                pass
        elif head[4:8] == b"\0\0\0\0":
            return  # already normal
        normal = blend.with_name(blend.name + ".normal")
        with normal.open("xb") as target:
            target.write(head[:3] + b"\0\0\0\0\0" + head[8:10])
            shutil.copyfileobj(source, target, _CHUNK)
    os.replace(normal, blend)


def _write_zip(tree: Path, manifest: bytes, destination: Path) -> tuple[int, int]:
    """Every file under `tree` plus the manifest, in sorted order with fixed metadata."""
    files = sorted((path.relative_to(tree).as_posix(), path) for path in _files(tree))
    total_bytes = 0
    with zipfile.ZipFile(destination, "w") as archive:
        for name, path in files:
            info = _entry(name, compressed=path.suffix.lower() not in _STORED_SUFFIXES)
            info.file_size = path.stat().st_size  # a size known upfront picks zip64 when it is needed
            total_bytes += info.file_size
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, _CHUNK)
        archive.writestr(_entry(MANIFEST, compressed=False), manifest)
    return len(files), total_bytes


def _entry(name: str, *, compressed: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.create_system = 3  # Unix, whatever the packing host: the mode bits below mean the same
    info.external_attr = _FILE_MODE << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    return info


def _files(tree: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(tree):
        for name in names:
            yield Path(folder, name)


def _extract(raw: BinaryIO, where: str, target: Path) -> None:
    """Check every entry before writing any, then write them below `target` (never overwriting)."""
    try:
        with zipfile.ZipFile(raw) as zipped:
            entries = [(info, _member_path(info, where)) for info in zipped.infolist()]
            names = [path for _, path in entries]
            if len(set(names)) != len(names):
                raise UnsafeArchiveError(f"{where}: the same entry appears twice")
            manifest = next((info for info, path in entries if path == PurePosixPath(MANIFEST)), None)
            if manifest is None:
                raise PackingError(f"{where}: no {MANIFEST}: not an archive made by pack_scene")
            scene = _scene_of(zipped.read(manifest), where)
            if scene not in names:
                raise PackingError(f"{where}: the scene {scene} named by {MANIFEST} is not in the archive")
            for info, path in entries:
                destination = target.joinpath(*path.parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, destination.open("xb") as copy:
                    shutil.copyfileobj(source, copy, _CHUNK)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise PackingError(f"{where}: cannot unpack: {error}") from None


def _member_path(info: zipfile.ZipInfo, where: str) -> PurePosixPath:
    """The entry's path relative to the target folder, or UnsafeArchiveError."""
    name = info.filename
    path = PurePosixPath(name)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(f"{where}: entry {name!r} is a link or special file")
    if _unsafe_relative(name):
        raise UnsafeArchiveError(f"{where}: entry {name!r} would land outside the unpacked folder")
    return path


def _unsafe_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        not name
        or "\\" in name
        or "\0" in name
        or path.is_absolute()
        or re.match(r"[A-Za-z]:", name) is not None
        or ".." in path.parts
        or not path.parts
    )


def _scene_of(manifest: bytes, where: str) -> PurePosixPath:
    try:
        content = json.loads(manifest)
        scene = content["scene"]
        fmt = content["format"]
    except (ValueError, KeyError, TypeError):
        raise PackingError(f"{where}: {MANIFEST} is damaged") from None
    if fmt != MANIFEST_FORMAT or not isinstance(scene, str) or _unsafe_relative(scene):
        raise PackingError(f"{where}: {MANIFEST} is of another format or names an unsafe scene path")
    return PurePosixPath(scene)


def _sha256(path: Path) -> str:
    with path.open("rb") as raw:
        return _sha256_of(raw)


def _sha256_of(raw: io.BufferedReader) -> str:
    return hashlib.file_digest(raw, "sha256").hexdigest()
