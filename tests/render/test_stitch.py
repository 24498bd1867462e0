"""Stitching without Blender: synthetic PNG frames, frame order, rate from scene.json, gaps."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from kiln.render.errors import RenderError
from kiln.render.frame_store import RenderedScene, finished_frames, write_scene
from kiln.render.stitch import stitch

from .images import psnr, video_frames, write_png

SCENE = RenderedScene(scene="Test", frame_start=1, frame_end=4, frame_step=1, fps=24, fps_base=1.0, width=64, height=48)


def make_frames(output: Path, frames: list[int], size: tuple[int, int] = (48, 64)) -> dict[int, np.ndarray]:
    """Frames whose brightness encodes their number, so order mistakes show in the video."""
    images = {}
    for frame in frames:
        pixels = np.full((*size, 3), 20 + 40 * frame, dtype=np.uint8)
        (output / "frames").mkdir(parents=True, exist_ok=True)
        write_png(output / "frames" / f"{frame:04d}.png", pixels)
        images[frame] = pixels
    return images


def test_frames_are_encoded_in_frame_order_at_the_scene_rate(tmp_path: Path) -> None:
    images = make_frames(tmp_path, [10, 8, 9, 11])
    write_scene(str(tmp_path), replace(SCENE, frame_start=8, frame_end=11, fps=30, fps_base=1.001))
    said: list[str] = []
    stitch(str(tmp_path), str(tmp_path), say=said.append)
    frames, stream = video_frames(tmp_path / "output.mp4")
    assert len(frames) == 4
    assert stream.average_rate == Fraction(30000, 1001)
    for decoded, number in zip(frames, [8, 9, 10, 11], strict=True):
        assert psnr(decoded, images[number]) > 35
    assert said == [f"stitched 4 frames (8-11) at 30000/1001 fps into {tmp_path}/output.mp4"]


def test_odd_sizes_are_padded_not_scaled(tmp_path: Path) -> None:
    make_frames(tmp_path, [1, 2], size=(45, 81))
    write_scene(str(tmp_path), replace(SCENE, frame_end=2))
    stitch(str(tmp_path), str(tmp_path / "video"), say=lambda _: None)
    frames, stream = video_frames(tmp_path / "video" / "output.mp4")
    assert len(frames) == 2
    assert (stream.width, stream.height) == (82, 46)


def test_without_scene_json_frames_play_at_24_fps(tmp_path: Path) -> None:
    make_frames(tmp_path, [1, 2, 3])
    said: list[str] = []
    stitch(str(tmp_path), str(tmp_path), say=said.append)
    frames, stream = video_frames(tmp_path / "output.mp4")
    assert (len(frames), stream.average_rate) == (3, 24)
    assert "assuming 24 fps" in said[0]


@pytest.mark.parametrize(
    ("present", "with_scene", "message"),
    [
        ([1, 2, 4], True, r"1 of 4 frames missing .* \(3\)"),
        ([1, 2, 3], True, r"1 of 4 frames missing .* \(4\)"),  # the last slice never ran
        ([1, 3], False, r"1 of 3 frames missing .* \(2\)"),
        ([], True, "no frames to stitch"),
    ],
)
def test_missing_frames_fail_the_stitch(tmp_path: Path, present: list[int], with_scene: bool, message: str) -> None:
    make_frames(tmp_path, present)
    if with_scene:
        write_scene(str(tmp_path), SCENE)
    with pytest.raises(RenderError, match=message):
        stitch(str(tmp_path), str(tmp_path), say=lambda _: None)
    assert not (tmp_path / "output.mp4").exists()


def test_hidden_partial_uploads_are_not_frames(tmp_path: Path) -> None:
    make_frames(tmp_path, [1, 2])
    (tmp_path / "frames" / ".0003.png.partial-1234abcd").write_bytes(b"\x89PNG half")
    (tmp_path / "frames" / "0004.png").write_bytes(b"")
    assert sorted(finished_frames(str(tmp_path))) == [1, 2]


def test_a_frame_that_is_not_an_image_fails_clearly(tmp_path: Path) -> None:
    make_frames(tmp_path, [1])
    (tmp_path / "frames" / "0002.png").write_bytes(b"definitely not a png")
    with pytest.raises(RenderError, match=r"0002\.png is not a readable PNG"):
        stitch(str(tmp_path), str(tmp_path), say=lambda _: None)


def test_frames_of_different_sizes_fail_clearly(tmp_path: Path) -> None:
    make_frames(tmp_path, [1])
    make_frames(tmp_path, [2], size=(60, 80))
    with pytest.raises(RenderError, match=r"0002\.png is 80x60, unlike the frames before it"):
        stitch(str(tmp_path), str(tmp_path), say=lambda _: None)
