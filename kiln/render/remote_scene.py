"""Fetch a .blend scene from a storage URI together with the files it names by relative paths.

Why: `kiln render s3://bucket/proj/shots/scene.blend` packs the scene (kiln.render.packing) on the
submitting machine, and packing only sees local files. A scene's textures and linked libraries
usually live beside it (`//textures/red.png`, `//../library/props.blend`), so they are fetched
too, into a local folder that mirrors the remote layout (`<folder>/<bucket>/<key>` for S3,
`<folder>/<absolute path>` for local files): the relative paths inside the copies then resolve to
the copies, and nothing needs rewriting.

Blender Asset Tracer (the tracer the packer uses, so both agree on what a scene needs) lists the
dependencies. It only follows a linked library that exists locally, and a library may link
others, so the scene is traced again after each round of downloads until a round finds nothing
new; a library's own relative paths resolve against the library's remote folder.

The .blend is untrusted input and can name any path: a relative path that climbs above its bucket
(or the file system's root) is refused, never fetched, and reported as missing, so nothing lands
outside the folder. Absolute paths (`/home/artist/tex.png`) name the artist's own disk, not the
store: they are reported as missing here, not looked up on the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path, PurePosixPath

from blender_asset_tracer import blendfile, bpathlib, trace
from blender_asset_tracer.blendfile.exceptions import BlendFileError as BatBlendFileError

from kiln.render.blend_header import read_scene_info
from kiln.render.errors import BlendFileError, RenderError
from kiln.render.packing import BAT_LOCK, PackingError
from kiln.render.uris import download, filesystem, list_files

# Downloads run this many at a time: an object store answers each request in tens of milliseconds.
_WORKERS = 8
# Blender's tile markers in an image path: every file of the folder that fits the pattern is a tile.
_TILE_MARKERS = ("<UDIM>", "<UVTILE>")

Parts = tuple[str, ...]  # a path inside the scene's file system, split: ("bucket", "proj", "a.png")


@dataclass(frozen=True)
class FetchedScene:
    """A scene fetched with its relative dependencies, and what could not be fetched."""

    scene: Path  # the local copy of the .blend, inside the folder given to fetch_scene
    files: tuple[str, ...]  # the URIs fetched, the scene's first
    # References that were not fetched, never silently: the URI of a relative dependency that is
    # not on the store, or the path as the .blend wrote it when it is absolute or leaves the store.
    missing: tuple[str, ...]


@dataclass(frozen=True)
class _Reference:
    """A dependency to fetch: one file, or a sequence (frames, tiles) whose files a listing finds."""

    parts: Parts
    is_sequence: bool


class _Store:
    """The scene's file system: where its paths end up locally, and their URIs."""

    def __init__(self, uri: str, folder: Path) -> None:
        self.fs, path = filesystem(uri)
        self.folder = folder
        # Local paths are absolute and may climb to "/"; an object store's paths start with the
        # bucket, which a relative path must not leave (another bucket is not the scene's).
        self.rooted = path.startswith("/")
        self.keep = 0 if self.rooted else 1
        self.prefix = uri.split("://", 1)[0] + "://" if "://" in uri else ""
        self.path = path

    def fs_path(self, parts: Parts) -> str:
        return ("/" if self.rooted else "") + "/".join(parts)

    def uri(self, parts: Parts) -> str:
        return self.prefix + self.fs_path(parts)

    def local(self, parts: Parts) -> Path:
        """The local copy of `parts`: inside the folder, since `parts` holds no `..` or empty names."""
        return self.folder.joinpath(*parts)

    def resolve(self, directory: Parts, relative: str) -> Parts | None:
        """`relative` taken from `directory`, or None when it climbs above the root or names nothing."""
        parts = list(directory)
        for name in relative.split("/"):
            if name in ("", "."):
                continue
            if "\0" in name:
                return None
            if name == "..":
                if len(parts) <= self.keep:
                    return None
                parts.pop()
            else:
                parts.append(name)
        return tuple(parts) if len(parts) > self.keep else None


def fetch_scene(uri: str, folder: Path, *, max_files: int = 10_000) -> FetchedScene:
    """Download the .blend at `uri` and every file it reaches by a relative path into `folder`.

    `folder` should be fresh (empty): a file left there by an earlier fetch would be packed as if
    it were current. A dependency that is not on the store is listed in `missing` (Blender renders
    without it, magenta for a texture); an unreadable scene, a store that fails for another reason
    than a missing file, or more than `max_files` files to fetch raise a RenderError.
    """
    folder = bpathlib.make_absolute(folder)
    store = _Store(uri, folder)
    scene_parts = store.resolve((), store.path)
    if scene_parts is None:
        raise RenderError(f"cannot read {uri}: not a file path")
    scene = store.local(scene_parts)
    scene.parent.mkdir(parents=True, exist_ok=True)
    download(uri, scene)
    try:
        read_scene_info(scene)
    except BlendFileError as error:
        raise BlendFileError(f"{uri}: {error}") from None

    fetched: dict[Parts, Path] = {scene_parts: scene}  # in the order fetched, the scene first
    origins: dict[Path, Parts] = {scene: scene_parts}  # the other way round: where a local copy came from
    tried: set[_Reference] = set()
    missing: set[str] = set()
    while True:
        references, unresolved = _trace(scene, origins, store)
        missing.update(unresolved)
        new = sorted((reference for reference in references if reference not in tried), key=_order)
        if not new:
            break
        tried.update(new)
        wanted: dict[Parts, None] = {}  # a set that keeps its order
        for reference in new:
            files = _expand(store, reference) if reference.is_sequence else [reference.parts]
            if not files:
                missing.add(store.uri(reference.parts))
            wanted.update((parts, None) for parts in files if parts not in fetched)
        if len(fetched) + len(wanted) > max_files:
            raise PackingError(f"cannot fetch {uri}: it references more than {max_files} files (the limit)")
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            copies = list(pool.map(partial(_fetch, store), wanted))
        for parts, local in zip(wanted, copies, strict=True):
            if local is None:
                missing.add(store.uri(parts))
                continue
            fetched[parts] = local
            origins[local] = parts
    return FetchedScene(scene, tuple(store.uri(parts) for parts in fetched), tuple(sorted(missing)))


def _order(reference: _Reference) -> tuple[Parts, bool]:
    return reference.parts, reference.is_sequence


def _trace(scene: Path, origins: dict[Path, Parts], store: _Store) -> tuple[set[_Reference], set[str]]:
    """The relative dependencies of the fetched .blend files, and the paths that cannot be fetched.

    Usages that BAT reports from a .blend this fetch did not download (an absolute library that
    happens to exist on this machine) are skipped: their paths say nothing about the store.
    """
    references: set[_Reference] = set()
    unresolved: set[str] = set()
    with BAT_LOCK:  # BAT's cache of parsed files is global and not thread-safe (see packing)
        try:
            for usage in trace.deps(scene):
                blend = origins.get(bpathlib.make_absolute(Path(usage.block.bfile.filepath)))
                if blend is None:
                    continue
                asset = bytes(usage.asset_path)
                if not asset:
                    continue
                try:
                    text = asset.decode("utf-8")
                except UnicodeDecodeError:
                    unresolved.add(asset.decode("utf-8", errors="replace"))
                    continue
                parts = store.resolve(blend[:-1], text[2:]) if text.startswith("//") else None
                if parts is None:  # absolute, relative to Blender's working folder, or leaving the store
                    unresolved.add(text)
                else:
                    references.add(_Reference(parts, usage.is_sequence))
        except BatBlendFileError as error:
            local = bpathlib.make_absolute(Path(error.filepath))
            name = store.uri(origins[local]) if local in origins else str(local)
            raise PackingError(f"cannot read {name}: {error.args[0]}") from None
        except OSError as error:
            raise PackingError(f"cannot trace {store.uri(origins[scene])}: {_first_line(error)}") from None
        finally:
            blendfile.close_all_cached()
    return references, unresolved


def _expand(store: _Store, reference: _Reference) -> list[Parts]:
    """The files of a sequence on the store, found as BAT finds them on a disk.

    A tile marker (`<UDIM>`) or a glob in the name matches the names of its folder; a folder means
    every file below it; a first frame (`frame_0001.png`) means the files that differ from it only
    where its trailing digits are. A glob in a folder name matches nothing.
    """
    directory, name = reference.parts[:-1], reference.parts[-1]
    marker = next((marker for marker in _TILE_MARKERS if marker in name), None)
    if marker is not None:
        prefix, _, suffix = name.partition(marker)
        matches = _between(prefix, suffix)
    elif "*" in name:
        matches = partial(fnmatchcase, pat=name)
    elif _is_dir(store, reference.parts):
        return _files_below(store, reference.parts)
    else:
        path = PurePosixPath(name)
        stem = path.stem.rstrip("0123456789")
        if stem == path.stem:
            return [reference.parts]
        matches = _between(stem, path.suffix)
    return [(*directory, candidate) for candidate in sorted(list_files(store.uri(directory))) if matches(candidate)]


def _between(prefix: str, suffix: str) -> Callable[[str], bool]:
    """Whether a name is `prefix`, anything, `suffix` (BAT's `prefix*suffix` glob, without glob syntax)."""
    return lambda name: len(name) >= len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix)


def _is_dir(store: _Store, parts: Parts) -> bool:
    try:
        return bool(store.fs.isdir(store.fs_path(parts)))
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot read {store.uri(parts)}: {_first_line(error)}") from None


def _files_below(store: _Store, parts: Parts) -> list[Parts]:
    try:
        found: Iterable[str] = store.fs.find(store.fs_path(parts))
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot list {store.uri(parts)}: {_first_line(error)}") from None
    below = [store.resolve((), path) for path in sorted(found)]
    return [item for item in below if item is not None and item[: len(parts)] == parts]


def _fetch(store: _Store, parts: Parts) -> Path | None:
    """Download one dependency to its mirrored place; None when the store has no such file."""
    uri = store.uri(parts)
    try:
        info = store.fs.info(store.fs_path(parts))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot read {uri}: {_first_line(error)}") from None
    if info.get("type") != "file":
        return None
    local = store.local(parts)
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RenderError(f"cannot write {local}: {error.strerror or error}") from None
    download(uri, local)
    return local


def _first_line(error: BaseException) -> str:
    """A job log's one line: the first line of an error's text, or its type when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
