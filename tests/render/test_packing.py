"""Packing a scene with its textures and linked libraries into one content-addressed zip, and back.

Real Blender builds the scenes and renders them (in subprocesses, as the other render tests do):
three emission planes at 32x24, each coloured only by an image texture, so a texture that did
not travel renders Blender's missing-texture magenta and the pixel comparison fails.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import stat
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kiln.render.packing import (
    MANIFEST,
    DigestMismatchError,
    PackingError,
    UnsafeArchiveError,
    cached_scene,
    pack_scene,
    unpack_scene,
)

from .conftest import run_bpy, run_worker
from .images import read_png

# Left plane: `//textures/red.png`; middle: green.png by absolute path outside the project;
# right: an object linked from ../library/props.blend, whose texture is `//tex/blue.png` there.
BUILD_SCENE = """
from pathlib import Path
import bpy

root = Path(root)
scene_path, lib_path = root / "project/shots/scene.blend", root / "project/library/props.blend"
absolute_texture = root / "elsewhere/green.png"

def png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = bpy.data.images.new(path.stem, 4, 4)
    image.pixels[:] = [*rgb, 1.0] * 16
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    bpy.data.images.remove(image)

def textured_plane(name, image, x):
    bpy.ops.mesh.primitive_plane_add(size=2, location=(x, 0, 0))
    plane = bpy.context.active_object
    plane.name = name
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture, emission = nodes.new("ShaderNodeTexImage"), nodes.new("ShaderNodeEmission")
    texture.image, texture.interpolation = image, "Closest"
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], nodes.new("ShaderNodeOutputMaterial").inputs["Surface"])
    plane.data.materials.append(material)

bpy.ops.wm.read_factory_settings(use_empty=True)
png(lib_path.parent / "tex/blue.png", (0, 0, 1))
bpy.ops.wm.save_as_mainfile(filepath=str(lib_path))  # saved first, so that `//tex/...` means beside it
textured_plane("Prop", bpy.data.images.load("//tex/blue.png"), 2.2)
bpy.ops.wm.save_as_mainfile(filepath=str(lib_path))

bpy.ops.wm.read_factory_settings(use_empty=True)
png(scene_path.parent / "textures/red.png", (1, 0, 0))
png(absolute_texture, (0, 1, 0))
bpy.ops.wm.save_as_mainfile(filepath=str(scene_path))
scene = bpy.context.scene
textured_plane("Relative", bpy.data.images.load("//textures/red.png"), -2.2)
textured_plane("Absolute", bpy.data.images.load(str(absolute_texture)), 0)
with bpy.data.libraries.load(str(lib_path), link=True, relative=True) as (_, linked):
    linked.objects = ["Prop"]
scene.collection.objects.link(linked.objects[0])
bpy.ops.object.camera_add(location=(0, 0, 10))
scene.camera = bpy.context.active_object
scene.camera.data.type, scene.camera.data.ortho_scale = "ORTHO", 6.8
render = scene.render
render.engine, render.resolution_x, render.resolution_y, render.resolution_percentage = "CYCLES", 32, 24, 100
render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGB"
render.filter_size = 0.01
scene.view_settings.view_transform = "Standard"
scene.frame_start = scene.frame_end = 1
scene.cycles.device, scene.cycles.samples = "CPU", 1
scene.cycles.use_denoising = scene.cycles.use_adaptive_sampling = False
bpy.ops.wm.save_as_mainfile(filepath=str(scene_path))
bpy.ops.wm.save_as_mainfile(filepath=str(scene_path.with_name("compressed.blend")), compress=True, copy=True)
result = {
    "images": sorted(image.filepath for image in bpy.data.images),
    "libraries": [library.filepath for library in bpy.data.libraries],
}
"""
RED, GREEN, BLUE, MAGENTA = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255)
ROW, LEFT, MIDDLE, RIGHT = 12, 5, 16, 27  # a pixel inside each plane of the 32x24 frame


@dataclass(frozen=True)
class Project:
    root: Path
    scene: Path  # shots/scene.blend, uncompressed
    compressed: Path  # the same scene saved zstd-compressed beside it
    absolute_texture: Path


def build_project(root: Path) -> Project:
    facts = run_bpy(BUILD_SCENE, root=str(root))
    absolute_texture = root / "elsewhere/green.png"
    # The scene really uses the three kinds of reference this module must carry.
    assert facts == {
        "images": sorted([str(absolute_texture), "//textures/red.png", "//tex/blue.png"]),
        "libraries": ["//../library/props.blend"],
    }
    shots = root / "project/shots"
    return Project(root, shots / "scene.blend", shots / "compressed.blend", absolute_texture)


def render(scene: Path, output: Path) -> np.ndarray:
    """Frame 1 of `scene` rendered by the worker, as a job would, decoded to RGB pixels."""
    done = run_worker("render", "-i", str(scene), "-o", str(output), "-f", "1")
    assert done.returncode == 0, done.stderr
    return read_png(output / "frames" / "0001.png")


def colours(pixels: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(value) for value in pixels[ROW, column]) for column in (LEFT, MIDDLE, RIGHT)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project the tests only read (the render test builds and hides one of its own)."""
    return build_project(tmp_path_factory.mktemp("shared"))


def test_unpacked_scene_renders_as_the_original_once_the_originals_are_gone(tmp_path: Path) -> None:
    source = build_project(tmp_path / "source")
    before = render(source.scene, tmp_path / "before")
    assert colours(before) == [RED, GREEN, BLUE]  # each texture decides its plane's colour

    packed = pack_scene(source.scene, tmp_path / "packs")
    assert packed.missing == ()
    assert packed.scene.as_posix() == "shots/scene.blend"
    with zipfile.ZipFile(packed.archive) as archive:
        names = sorted(archive.namelist())
        sizes = {entry.filename: entry.file_size for entry in archive.infolist()}
    outside = "_outside_project/" + source.absolute_texture.relative_to("/").as_posix()
    assert names == sorted(
        [
            MANIFEST,
            "library/props.blend",
            "library/tex/blue.png",
            "shots/scene.blend",
            "shots/textures/red.png",
            outside,
        ]
    )
    assert packed.file_count == 5
    assert packed.total_bytes == sum(size for name, size in sizes.items() if name != MANIFEST)
    assert sizes["shots/textures/red.png"] == (source.scene.parent / "textures/red.png").stat().st_size

    (tmp_path / "source").rename(tmp_path / "hidden")  # nothing of the originals is reachable now
    scene = unpack_scene(packed.archive, tmp_path / "node-cache", packed.digest)
    assert scene == tmp_path / "node-cache" / packed.digest / "shots" / "scene.blend"
    after = render(scene, tmp_path / "after")
    assert np.array_equal(after, before)


@pytest.mark.parametrize("which", ["scene", "compressed"])
def test_packing_twice_gives_the_same_bytes_and_digest(project: Project, tmp_path: Path, which: str) -> None:
    """The compressed scene is rewritten (its absolute texture moves) and recompressed by BAT: still stable."""
    scene = getattr(project, which)
    first, second = pack_scene(scene, tmp_path / "one"), pack_scene(scene, tmp_path / "two")
    assert first.digest == second.digest
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert first.archive.name == f"{first.digest}.zip"
    assert hashlib.sha256(first.archive.read_bytes()).hexdigest() == first.digest
    with zipfile.ZipFile(first.archive) as archive:
        entries = archive.infolist()
    assert [entry.filename for entry in entries[:-1]] == sorted(entry.filename for entry in entries[:-1])
    assert {(entry.date_time, entry.external_attr >> 16) for entry in entries} == {
        ((1980, 1, 1, 0, 0, 0), stat.S_IFREG | 0o644)
    }
    assert sorted(path.name for path in (tmp_path / "one").iterdir()) == [first.archive.name]  # no leftovers
    if which == "compressed":  # rewritten, so BAT gzipped it: a valid stream, header normalised
        with zipfile.ZipFile(first.archive) as archive:
            packed_scene = archive.read(first.scene.as_posix())
        assert packed_scene[:10] == b"\x1f\x8b\x08\0\0\0\0\0\x02\xff"
        assert gzip.decompress(packed_scene).startswith(b"BLENDER")


def test_unpack_verifies_the_digest(project: Project, tmp_path: Path) -> None:
    packed = pack_scene(project.scene, tmp_path / "packs")
    tampered = tmp_path / "tampered.zip"
    data = bytearray(packed.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DigestMismatchError, match="expected " + packed.digest):
        unpack_scene(tampered, cache, packed.digest)
    assert list(cache.iterdir()) == []
    with pytest.raises(PackingError, match="not a sha256"):
        unpack_scene(packed.archive, cache, "../../etc")


def forged_archive(path: Path, entry: zipfile.ZipInfo) -> str:
    """A zip with a valid manifest and `entry`; returns its digest (so only the entry is wrong)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST, '{"format": 1, "scene": "scene.blend"}')
        archive.writestr("scene.blend", b"BLENDER")
        archive.writestr(entry, b"escaped")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def symlink_entry() -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo("link")
    entry.external_attr = (stat.S_IFLNK | 0o777) << 16
    return entry


@pytest.mark.parametrize(
    "entry",
    [
        zipfile.ZipInfo("../escaped.txt"),
        zipfile.ZipInfo("a/../../escaped.txt"),
        zipfile.ZipInfo("/tmp/escaped.txt"),
        symlink_entry(),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_unpack_refuses_entries_that_escape(tmp_path: Path, entry: zipfile.ZipInfo) -> None:
    archive = tmp_path / "forged.zip"
    digest = forged_archive(archive, entry)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(entry.filename))):
        unpack_scene(archive, cache, digest)
    assert list(cache.iterdir()) == []  # nothing extracted, not even the safe entries
    assert not (tmp_path / "deep" / "escaped.txt").exists()


def test_a_missing_texture_is_reported_and_renders_magenta(project: Project, tmp_path: Path) -> None:
    """Packing goes on without the texture; the render shows what the pixel check catches."""
    shutil.copytree(project.root / "project", tmp_path / "project")
    lost = tmp_path / "project/shots/textures/red.png"
    lost.unlink()
    packed = pack_scene(tmp_path / "project/shots/scene.blend", tmp_path / "packs")
    assert packed.missing == (lost,)
    assert packed.file_count == 4
    scene = unpack_scene(packed.archive, tmp_path / "cache", packed.digest)
    assert colours(render(scene, tmp_path / "out")) == [MAGENTA, GREEN, BLUE]


def test_unpack_reuses_the_cached_tree(project: Project, tmp_path: Path) -> None:
    packed = pack_scene(project.scene, tmp_path / "packs")
    cache = tmp_path / "cache"
    assert cached_scene(cache, packed.digest) is None
    scene = unpack_scene(packed.archive, cache, packed.digest)
    marker = scene.parent / "marker"
    marker.write_text("still here")
    packed.archive.unlink()  # a complete tree does not need the archive again
    assert unpack_scene(packed.archive, cache, packed.digest) == scene == cached_scene(cache, packed.digest)
    assert marker.read_text() == "still here"


def test_concurrent_unpacks_share_one_complete_tree(project: Project, tmp_path: Path) -> None:
    packed = pack_scene(project.scene, tmp_path / "packs")
    cache, results, errors = tmp_path / "cache", [], []
    barrier = threading.Barrier(6)

    def unpack() -> None:
        barrier.wait()
        try:
            results.append(unpack_scene(packed.archive, cache, packed.digest))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=unpack) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {cache / packed.digest / "shots" / "scene.blend"}
    assert [path.name for path in cache.iterdir()] == [packed.digest]  # the losers' copies are gone
    assert (cache / packed.digest / "shots/textures/red.png").is_file()


def test_inputs_that_are_not_blend_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(PackingError, match=r"no such \.blend file"):
        pack_scene(tmp_path / "absent.blend", tmp_path / "packs")
    text = tmp_path / "notes.blend"
    text.write_text("not a scene")
    with pytest.raises(PackingError, match=r"notes\.blend"):
        pack_scene(text, tmp_path / "packs")
    with pytest.raises(PackingError, match=r"no such \.blend file"):
        pack_scene(tmp_path, tmp_path / "packs")
