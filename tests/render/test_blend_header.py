"""Frame range and rate read from .blend files without Blender, checked against what bpy reports."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from kiln.render.blend_header import GZIP_MAGIC, ZSTD_MAGIC, SceneInfo, read_scene_info
from kiln.render.errors import BlendFileError, RenderError

from .conftest import run_bpy

BPY_FACTS = """
import bpy
result = []
for path in paths:
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False)
    scene = bpy.context.scene
    result.append({
        "name": scene.name, "frame_start": scene.frame_start, "frame_end": scene.frame_end,
        "frame_step": scene.frame_step, "fps": scene.render.fps, "fps_base": scene.render.fps_base,
    })
"""


def facts(info: SceneInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "frame_start": info.frame_start,
        "frame_end": info.frame_end,
        "frame_step": info.frame_step,
        "fps": info.fps,
        "fps_base": info.fps_base,
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, sample_blend: Path) -> dict[str, Path]:
    """Sample scenes Blender saved: zstd-compressed; starting at frame 3 at 29.97 fps every 2nd
    frame; and two scenes where the second one is active. Plus a gzip copy of the plain file."""
    folder = tmp_path_factory.mktemp("headers")
    paths = {
        "plain": sample_blend,
        "zstd": folder / "zstd.blend",
        "ntsc": folder / "ntsc.blend",
        "two_scenes": folder / "two_scenes.blend",
        "gzip": folder / "gzip.blend",
    }
    run_bpy(
        """
        import bpy
        from pathlib import Path
        from kiln.render.sample_scene import write_sample_scene
        write_sample_scene(Path(zstd), frames=5, compress=True)
        write_sample_scene(Path(ntsc), frames=9, frame_start=3)
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base, scene.frame_step = 30, 1.001, 2
        bpy.ops.wm.save_as_mainfile(filepath=ntsc)
        write_sample_scene(Path(two_scenes), frames=4)
        second = bpy.data.scenes.new("Second")
        second.frame_start, second.frame_end = 5, 9
        bpy.context.window.scene = second
        bpy.ops.wm.save_as_mainfile(filepath=two_scenes)
        """,
        **{name: str(path) for name, path in paths.items() if name not in ("plain", "gzip")},
    )
    paths["gzip"].write_bytes(gzip.compress(sample_blend.read_bytes()))
    return paths


@pytest.fixture(scope="module")
def bpy_facts(scenes: dict[str, Path], pottery: Path) -> dict[str, dict[str, Any]]:
    names = [*scenes, "pottery"]
    paths = [str(scenes[name]) for name in scenes] + [str(pottery)]
    return dict(zip(names, run_bpy(BPY_FACTS, paths=paths), strict=True))


def test_pottery_matches_blender(pottery: Path, bpy_facts: dict[str, dict[str, Any]]) -> None:
    info = read_scene_info(pottery)
    assert facts(info) == bpy_facts["pottery"]
    assert (info.frame_start, info.frame_end, info.frame_rate) == (1, 199, Fraction(24))
    assert info.blender_version == 300
    assert len(info.frames) == 199


@pytest.mark.parametrize("variant", ["plain", "gzip", "zstd"])
def test_sample_scene_plain_and_compressed(
    variant: str, scenes: dict[str, Path], bpy_facts: dict[str, dict[str, Any]]
) -> None:
    magic = {"plain": b"BLENDER", "gzip": GZIP_MAGIC, "zstd": ZSTD_MAGIC}[variant]
    assert scenes[variant].read_bytes().startswith(magic)
    info = read_scene_info(scenes[variant])
    assert facts(info) == bpy_facts[variant]
    assert info.frame_start == 1
    assert info.frame_end == (5 if variant == "zstd" else 12)
    assert info.frame_rate == 24


def test_range_not_starting_at_one_with_ntsc_rate_and_step(
    scenes: dict[str, Path], bpy_facts: dict[str, dict[str, Any]]
) -> None:
    info = read_scene_info(scenes["ntsc"])
    assert facts(info) == bpy_facts["ntsc"]
    assert info.frames == range(3, 12, 2)
    assert info.frame_rate == Fraction(30000, 1001)


def test_the_active_scene_is_read_not_the_first(scenes: dict[str, Path], bpy_facts: dict[str, dict[str, Any]]) -> None:
    info = read_scene_info(scenes["two_scenes"])
    assert facts(info) == bpy_facts["two_scenes"]
    assert (info.name, info.frame_start, info.frame_end) == ("Second", 5, 9)


def test_blender_5_file_layout(sample_blend: Path, tmp_path: Path) -> None:
    """Blender >= 5.0 writes a 17-byte header and 64-bit block lengths (`LargeBHead8`)."""
    converted = tmp_path / "v5.blend"
    converted.write_bytes(_as_blender_5_layout(sample_blend.read_bytes()))
    assert converted.read_bytes().startswith(b"BLENDER17-01v0405")
    assert read_scene_info(converted) == read_scene_info(sample_blend)


def test_uri_and_file_object_sources(sample_blend: Path) -> None:
    expected = read_scene_info(sample_blend)
    assert read_scene_info(sample_blend.as_uri()) == expected
    assert read_scene_info(io.BytesIO(sample_blend.read_bytes())) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a .blend file"),
        (b"hello, I am a text file\n", "not a .blend file"),
        (gzip.compress(b"not a blend inside gzip", mtime=0), "not a .blend file"),
        (b"BLENDER-v405" + b"\0" * 10, "truncated"),
    ],
    ids=["empty", "text", "gzip-of-text", "truncated-header"],  # the same in every xdist worker
)
def test_not_a_blend_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.blend"
    path.write_bytes(content)
    with pytest.raises(BlendFileError, match=message):
        read_scene_info(path)


@pytest.mark.parametrize(
    ("variant", "message"), [("plain", "truncated"), ("gzip", "damaged compressed"), ("zstd", "truncated")]
)
def test_truncated_file(scenes: dict[str, Path], variant: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.blend"
    path.write_bytes(scenes[variant].read_bytes()[: scenes[variant].stat().st_size // 2])
    with pytest.raises(BlendFileError, match=message):
        read_scene_info(path)


@pytest.mark.parametrize("magic", [GZIP_MAGIC, ZSTD_MAGIC])
def test_garbage_after_a_compression_magic(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "garbage.blend"
    path.write_bytes(magic + b"\x08\x00" + bytes(range(256)) * 4)
    with pytest.raises(BlendFileError):
        read_scene_info(path)


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="no such file"):
        read_scene_info(tmp_path / "absent.blend")


def test_reading_headers_never_loads_blender() -> None:
    code = "import sys, kiln.render.blend_header, kiln.render.stitch, kiln.render.cli; print('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _as_blender_5_layout(legacy: bytes) -> bytes:
    """Rewrite a little-endian 64-bit legacy file the way Blender 5 lays it out (same content)."""
    assert legacy[:9] == b"BLENDER-v"
    out = [b"BLENDER17-01v0" + legacy[9:12]]
    position = 12
    small, large = struct.Struct("<4siQii"), struct.Struct("<4siQqq")
    while position < len(legacy):
        code, length, old, sdna_index, count = small.unpack_from(legacy, position)
        position += small.size
        out.append(large.pack(code, sdna_index, old, length, count) + legacy[position : position + length])
        position += length
        if code == b"ENDB":
            break
    return b"".join(out)
