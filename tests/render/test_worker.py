"""The render worker end to end on the workshop's Pottery scene: real Blender, tiny frames.

Every run is `python -m kiln.render ...` in its own process with `AWS_BATCH_JOB_ARRAY_INDEX` set,
as the local executor runs an array child of the `kiln/render` image.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from .conftest import POTTERY_SETTINGS, THREADS, Run, run_bpy, run_worker
from .images import psnr, read_png, video_frames

SUB_RANGE = ["--frame-start", "3", "--frame-end", "5"]


def render(blend: Path | str, output: Path | str, frames_per_job: int, index: int | None, *extra: str) -> Run:
    env = {} if index is None else {"AWS_BATCH_JOB_ARRAY_INDEX": str(index)}
    return run_worker("render", "-i", str(blend), "-o", str(output), "-f", str(frames_per_job), *extra, env=env)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, pottery: Path) -> tuple[Path, list[Run]]:
    """Pottery frames 3-5 in slices of 2: child 0 renders 3-4 (plain path), child 1 renders 5 (file://)."""
    output = tmp_path_factory.mktemp("pottery") / "out"
    runs = [
        render(pottery, output, 2, 0, *SUB_RANGE, *POTTERY_SETTINGS),
        render(pottery, output.as_uri(), 2, 1, *SUB_RANGE, *POTTERY_SETTINGS),
    ]
    return output, runs


def test_each_child_renders_its_slice_named_by_frame_number(rendered: tuple[Path, list[Run]]) -> None:
    output, (first, second) = rendered
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert sorted(path.name for path in (output / "frames").iterdir()) == [
        "0003.png",
        "0004.png",
        "0005.png",
        "scene.json",
    ]
    assert "slice 0: frames 3-4 of frames 3-5" in first.stdout
    assert [line.split(" (")[0] for line in first.stdout.splitlines() if line.startswith("frame ")] == [
        "frame 3 done",
        "frame 4 done",
    ]
    assert "frame 5 done (1/1" in second.stdout
    assert f"{THREADS} threads" in first.stdout
    assert read_png(output / "frames" / "0004.png").shape == (270, 216, 3)  # 20 % of 1080x1350


def test_stitch_gives_one_video_frame_per_image(rendered: tuple[Path, list[Run]], tmp_path: Path) -> None:
    output, _ = rendered
    stitched = run_worker("stitch", "-i", str(output), "-o", str(tmp_path / "video"), "-f", "2", "-t", "99")
    assert stitched.returncode == 0, stitched.stderr
    assert "stitched 3 frames (3-5) at 24 fps" in stitched.stdout
    frames, stream = video_frames(tmp_path / "video" / "output.mp4")
    assert len(frames) == 3
    assert stream.codec_context.name == "h264"
    assert stream.average_rate == Fraction(24)
    assert (stream.width, stream.height) == (216, 270)
    first_image = read_png(output / "frames" / "0003.png")
    assert psnr(frames[0], first_image) > 30  # the right picture, through lossy H.264


def test_a_pipeline_frame_equals_a_plain_blender_render(
    rendered: tuple[Path, list[Run]], pottery: Path, tmp_path: Path
) -> None:
    output, _ = rendered
    reference = tmp_path / "reference.png"
    run_bpy(
        """
        import bpy
        bpy.ops.wm.open_mainfile(filepath=blend)
        scene = bpy.context.scene
        scene.render.threads_mode, scene.render.threads = "FIXED", threads
        scene.render.resolution_percentage = 20
        scene.cycles.samples = 8
        scene.render.image_settings.file_format = "PNG"
        scene.frame_set(4)
        scene.render.filepath = target
        bpy.ops.render.render(write_still=True)
        """,
        blend=str(pottery),
        target=str(reference),
        threads=THREADS,
    )
    assert psnr(read_png(output / "frames" / "0004.png"), read_png(reference)) >= 50


def test_a_retried_attempt_skips_frames_already_written(
    rendered: tuple[Path, list[Run]], pottery: Path, tmp_path: Path
) -> None:
    output, _ = rendered
    frames = tmp_path / "out" / "frames"
    frames.mkdir(parents=True)
    for name in ("0003.png", "0005.png"):
        shutil.copy(output / "frames" / name, frames / name)
        os.utime(frames / name, (1_000_000_000, 1_000_000_000))
    retry = render(pottery, tmp_path / "out", 3, 0, *SUB_RANGE, *POTTERY_SETTINGS)
    assert retry.returncode == 0, retry.stderr
    assert "1 to render, 2 already done" in retry.stdout
    assert "frame 3 skipped" in retry.stdout
    assert "frame 5 skipped" in retry.stdout
    assert "frame 4 done (1/1" in retry.stdout
    assert {path.stat().st_mtime for path in (frames / "0003.png", frames / "0005.png")} == {1_000_000_000}
    assert (frames / "0004.png").stat().st_mtime > 1_000_000_000


def test_a_killed_attempt_loses_at_most_the_frame_in_flight(sample_blend: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    command = [sys.executable, "-m", "kiln.render", "render", "-i", str(sample_blend), "-o", str(output), "-f", "5"]
    env = {**os.environ, "KILN_VCPUS": str(THREADS)}
    env.pop("AWS_BATCH_JOB_ARRAY_INDEX", None)
    attempt = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert attempt.stdout is not None
    deadline = time.monotonic() + 120
    for line in attempt.stdout:
        if line.startswith("frame 1 done") or time.monotonic() > deadline:
            break
    attempt.send_signal(signal.SIGKILL)
    attempt.wait(timeout=30)
    visible = sorted(path.name for path in (output / "frames").glob("*.png"))
    assert visible and visible[0] == "0001.png"
    for name in visible:  # whatever is visible is a complete image
        assert read_png(output / "frames" / name).shape == (180, 320, 3)
    retry = render(sample_blend, output, 5, None)
    assert retry.returncode == 0, retry.stderr
    skipped = [int(name[:4]) for name in visible]
    assert f"{5 - len(skipped)} to render, {len(skipped)} already done" in retry.stdout
    for frame in skipped:
        assert f"frame {frame} skipped" in retry.stdout
    assert sorted(path.name for path in (output / "frames").glob("[0-9]*.png")) == [f"{n:04d}.png" for n in range(1, 6)]


def assert_one_line_failure(run: Run, returncode: int, *fragments: str) -> None:
    assert run.returncode == returncode, (run.stdout, run.stderr)
    assert len(run.error_lines) == 1, run.stderr
    assert run.error_lines[0].startswith("kiln-render: error: ")
    for fragment in fragments:
        assert fragment in run.error_lines[0]


def test_a_file_that_is_not_a_blend_fails_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.blend"
    text.write_text("not a scene\n")
    assert_one_line_failure(render(text, tmp_path / "out", 2, 0), 1, "notes.blend", "not a .blend file")
    assert_one_line_failure(
        render(tmp_path / "absent.blend", tmp_path / "out", 2, 0), 1, "absent.blend", "no such file"
    )
    assert not (tmp_path / "out").exists()


def test_an_unknown_action_fails_in_one_line(tmp_path: Path) -> None:
    assert_one_line_failure(run_worker("transcode", "-i", "x", "-o", "y"), 2, "unknown action 'transcode'")
    assert_one_line_failure(run_worker("render", "-i", "x"), 2, "-o/--output")
    assert_one_line_failure(run_worker("render", "-i", "x", "-o", "y", "-f", "zero"), 2, "-f/--frames-per-job")


def test_wrong_total_and_empty_slice_fail_in_one_line(pottery: Path, tmp_path: Path) -> None:
    assert_one_line_failure(
        render(pottery, tmp_path / "out", 2, 0, "-t", "100"), 1, "-t 100 does not match the 199 frames"
    )
    assert_one_line_failure(render(pottery, tmp_path / "out", 2, 2, *SUB_RANGE), 1, "slice 2 is empty", "0-1")


def test_stitch_with_a_missing_frame_fails_in_one_line(rendered: tuple[Path, list[Run]], tmp_path: Path) -> None:
    output, _ = rendered
    gappy = tmp_path / "gappy" / "frames"
    gappy.mkdir(parents=True)
    for name in ("0003.png", "0005.png", "scene.json"):
        shutil.copy(output / "frames" / name, gappy / name)
    run = run_worker("stitch", "-i", str(gappy.parent), "-o", str(gappy.parent))
    assert_one_line_failure(run, 1, "1 of 3 frames missing", "(4)")
    assert not (gappy.parent / "output.mp4").exists()


def test_a_zstd_scene_starting_at_frame_3_is_counted_and_rendered(tmp_path: Path) -> None:
    from kiln.render.blend_header import read_scene_info

    blend = tmp_path / "late-start.blend"
    run_bpy(
        """
        from pathlib import Path
        from kiln.render.sample_scene import write_sample_scene
        write_sample_scene(Path(path), frames=3, frame_start=3, compress=True)
        """,
        path=str(blend),
    )
    assert blend.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic: Blender's compressed save
    info = read_scene_info(blend)
    assert (info.frame_start, info.frame_end, list(info.frames)) == (3, 5, [3, 4, 5])
    output = tmp_path / "out"
    small = ["--resolution-percent", "25", "--samples", "2"]
    runs = [render(blend, output, 2, index, "-t", "3", *small) for index in (0, 1)]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert sorted(p.name for p in (output / "frames").glob("*.png")) == ["0003.png", "0004.png", "0005.png"]
    stitched = run_worker("stitch", "-i", str(output), "-o", str(output))
    assert stitched.returncode == 0, stitched.stderr
    frames, _stream = video_frames(output / "output.mp4")
    assert len(frames) == 3


def test_a_camera_switched_by_a_timeline_marker_renders_as_in_blender(tmp_path: Path) -> None:
    """The worker sets the frame without `frame_set` (the render evaluates the scene itself): marker
    camera switches must still apply, pixel for pixel as Blender's own `frame_set` + render."""
    scene = tmp_path / "cameras.blend"
    run_bpy(
        """
        import bpy, mathutils
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        scene.render.engine, scene.cycles.device, scene.cycles.samples = "CYCLES", "CPU", 2
        scene.render.resolution_x = scene.render.resolution_y = 32
        scene.render.threads_mode, scene.render.threads = "FIXED", threads
        scene.frame_start, scene.frame_end = 1, 5
        scene.world = bpy.data.worlds.new("sky")
        scene.world.color = (0.4, 0.5, 0.7)
        bpy.ops.mesh.primitive_cube_add()
        bpy.ops.object.light_add(type="SUN", location=(2, -4, 6))
        cameras = []
        for name, location in (("near", (3, -3, 2)), ("far", (0, -9, 9))):
            camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
            scene.collection.objects.link(camera)
            camera.location = location
            camera.rotation_euler = (-mathutils.Vector(location)).to_track_quat("-Z", "Y").to_euler()
            cameras.append(camera)
        scene.camera = cameras[0]
        scene.timeline_markers.new("start", frame=1).camera = cameras[0]
        scene.timeline_markers.new("cut", frame=5).camera = cameras[1]
        scene.render.image_settings.file_format = "PNG"
        bpy.ops.wm.save_as_mainfile(filepath=blend)
        for frame in (1, 5):
            scene.frame_set(frame)
            scene.render.filepath = f"{folder}/reference-{frame}.png"
            bpy.ops.render.render(write_still=True)
        """,
        blend=str(scene),
        folder=str(tmp_path),
        threads=THREADS,
    )
    run = render(scene, tmp_path / "out", 1, 4)  # slice 4: frame 5, after the marker's cut
    assert run.returncode == 0, run.stderr
    rendered = read_png(tmp_path / "out" / "frames" / "0005.png")
    assert np.array_equal(rendered, read_png(tmp_path / "reference-5.png"))
    assert not np.array_equal(rendered, read_png(tmp_path / "reference-1.png"))  # the cut shows
