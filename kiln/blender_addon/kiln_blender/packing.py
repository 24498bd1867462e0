"""Pack a saved .blend with what it depends on into Kiln's content-addressed scene pack.

The same packing as `kiln render` (kiln/render/packing.py): Blender Asset Tracer (BAT, shipped
in the add-on's zip as a wheel) copies the scene, its textures and its linked libraries into a
tree, rewriting the paths that would break; the tree becomes one deterministic zip (sorted
entries, fixed times and modes) with `kiln-pack.json` naming the scene, named after its sha256.
A render job fetches `<sha256>.zip`, checks its digest and renders the scene inside, so it needs
no disk shared with the artist's machine. A unit test checks that both give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .batch_api import KilnError

MANIFEST = "kiln-pack.json"
MANIFEST_FORMAT = 1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = stat.S_IFREG | 0o644
_STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".exr", ".mp4", ".mov", ".mkv", ".zip", ".zst", ".gz"})
_CHUNK = 1 << 20
_GZIP_FNAME = 0x08
_LOCK = threading.Lock()  # BAT's .blend cache is module-global and not thread-safe


@dataclass(frozen=True)
class Pack:
    archive: Path  # <digest>.zip
    digest: str
    file_count: int
    total_bytes: int
    missing: tuple[str, ...]  # assets the scene names that are not there: rendered without them


def pack_scene(scene: Path, workdir: Path, scene_name: str | None = None) -> Pack:
    """Pack `scene` into `workdir/<digest>.zip`; `scene_name` renames the scene file in the pack
    (the add-on packs a temporary copy saved beside the artist's file under another name)."""
    try:
        from blender_asset_tracer import blendfile, bpathlib, pack  # noqa: F401  (import check)
    except ImportError as error:
        raise KilnError(f"the Kiln add-on cannot pack scenes: Blender Asset Tracer is missing ({error})") from None
    scene = Path(os.path.abspath(scene))
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".pack-") as temporary:
        tree = Path(temporary, "tree")
        scene_in_tree, missing = _bat_pack(scene, tree)
        if scene_name and scene_name != scene_in_tree.name:
            renamed = scene_in_tree.with_name(scene_name)
            os.replace(tree.joinpath(*scene_in_tree.parts), tree.joinpath(*renamed.parts))
            scene_in_tree = renamed
        for blend in tree.rglob("*.blend"):
            _normalise_gzip_header(blend)
        manifest = json.dumps({"format": MANIFEST_FORMAT, "scene": scene_in_tree.as_posix()}, sort_keys=True)
        partial = Path(temporary, "archive.zip")
        file_count, total_bytes = _write_zip(tree, manifest.encode(), partial)
        with partial.open("rb") as raw:
            digest = hashlib.file_digest(raw, "sha256").hexdigest()
        archive = workdir / f"{digest}.zip"
        os.replace(partial, archive)
    return Pack(archive, digest, file_count, total_bytes, missing)


def _bat_pack(scene: Path, tree: Path) -> tuple[PurePosixPath, tuple[str, ...]]:
    from blender_asset_tracer import blendfile, pack, trace
    from blender_asset_tracer.blendfile.exceptions import BlendFileError

    with _LOCK:
        try:
            usages = list(trace.deps(scene))
            project = _project_root(scene, usages)
            with _packer_class()(scene, project, str(tree)) as packer:
                packer.strategise()
                packer.execute()
                scene_in_tree = PurePosixPath(packer.output_path.relative_to(tree).as_posix())
                missing = tuple(sorted(str(path) for path in packer.missing_files))
        except (BlendFileError, pack.Aborted, OSError) as error:
            raise KilnError(f"cannot pack {scene}: {error}") from None
        finally:
            blendfile.close_all_cached()
    (tree / "pack-info.txt").unlink(missing_ok=True)
    if (tree / MANIFEST).exists():
        raise KilnError(f"{project / MANIFEST} is an asset of the scene: Kiln's pack manifest needs that name")
    return scene_in_tree, missing


def _packer_class() -> Any:
    """BAT's packer with a copier that polls every 10 ms, not 0.5 s (as kiln/render/packing.py)."""
    from blender_asset_tracer import pack
    from blender_asset_tracer.pack import filesystem

    class PromptCopier(filesystem.FileCopier):
        POLL_SECONDS = 0.01

        def iter_queue(self) -> Iterator[Any]:
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
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.is_alive() and (deadline is None or time.monotonic() < deadline):
                self.progress_cb.flush(timeout=self.POLL_SECONDS)

    class Packer(pack.Packer):
        def _create_file_transferer(self) -> Any:
            return PromptCopier()

    return Packer


def _project_root(scene: Path, usages: list[Any]) -> Path:
    """The deepest folder holding the scene and every existing asset it reaches by a relative path."""
    folders = [str(scene.parent)]
    for usage in usages:
        if usage.asset_path.is_blendfile_relative():
            target = usage.abspath.parent if usage.is_sequence else usage.abspath
            if target.exists():
                folders.append(str(target if target.is_dir() else target.parent))
    return Path(os.path.commonpath(folders))


def _normalise_gzip_header(blend: Path) -> None:
    """Zero the time and drop the name in a gzip header BAT wrote, so packs are reproducible."""
    with blend.open("rb") as source:
        head = source.read(10)
        if len(head) < 10 or head[:3] != b"\x1f\x8b\x08" or head[3] & ~_GZIP_FNAME:
            return
        if head[3] & _GZIP_FNAME:
            while source.read(1) not in (b"\0", b""):
                pass
        elif head[4:8] == b"\0\0\0\0":
            return
        normal = blend.with_name(blend.name + ".normal")
        with normal.open("xb") as target:
            target.write(head[:3] + b"\0\0\0\0\0" + head[8:10])
            shutil.copyfileobj(source, target, _CHUNK)
    os.replace(normal, blend)


def _write_zip(tree: Path, manifest: bytes, destination: Path) -> tuple[int, int]:
    files = sorted((path.relative_to(tree).as_posix(), path) for path in _files(tree))
    total_bytes = 0
    with zipfile.ZipFile(destination, "w") as archive:
        for name, path in files:
            info = _entry(name, compressed=path.suffix.lower() not in _STORED_SUFFIXES)
            info.file_size = path.stat().st_size
            total_bytes += info.file_size
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, _CHUNK)
        archive.writestr(_entry(MANIFEST, compressed=False), manifest)
    return len(files), total_bytes


def _entry(name: str, *, compressed: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.create_system = 3
    info.external_attr = _FILE_MODE << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    return info


def _files(tree: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(tree):
        for name in names:
            yield Path(folder, name)
