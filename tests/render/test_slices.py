"""Pure parts of the worker: slicing, vCPUs -> threads, frame file names, argument checks."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.render.cli import main
from kiln.render.errors import RenderError
from kiln.render.frame_store import RenderedScene, frame_number
from kiln.render.slices import array_index, frames_to_cover, slice_count, slice_frames
from kiln.render.vcpus import job_vcpus


def test_slices_count_from_the_scene_start_and_clip_at_its_end() -> None:
    scene = range(3, 11)  # frames 3..10
    assert list(slice_frames(scene, 3, 0)) == [3, 4, 5]
    assert list(slice_frames(scene, 3, 2)) == [9, 10]
    assert list(slice_frames(scene, 3, 3)) == []
    assert slice_count(len(scene), 3) == 3


@given(
    start=st.integers(0, 500),
    length=st.integers(1, 300),
    step=st.integers(1, 4),
    per_job=st.integers(1, 50),
)
def test_slices_partition_the_frames(start: int, length: int, step: int, per_job: int) -> None:
    frames = range(start, start + length, step)
    slices = [slice_frames(frames, per_job, index) for index in range(slice_count(len(frames), per_job))]
    assert [frame for part in slices for frame in part] == list(frames)
    assert all(0 < len(part) <= per_job for part in slices)


def test_array_index_defaults_to_zero() -> None:
    assert array_index({}) == 0
    assert array_index({"AWS_BATCH_JOB_ARRAY_INDEX": "7"}) == 7
    with pytest.raises(RenderError, match="not an array index"):
        array_index({"AWS_BATCH_JOB_ARRAY_INDEX": "-1"})
    with pytest.raises(RenderError, match="not an array index"):
        array_index({"AWS_BATCH_JOB_ARRAY_INDEX": "seven"})


def test_sub_ranges_and_total_frames_are_checked() -> None:
    scene = range(1, 200)
    assert frames_to_cover(scene) == scene
    assert frames_to_cover(scene, frame_start=3, frame_end=5, total_frames=3) == range(3, 6)
    assert frames_to_cover(range(1, 10, 2), frame_start=3) == range(3, 10, 2)
    with pytest.raises(RenderError, match="-t 100 does not match the 199 frames"):
        frames_to_cover(scene, total_frames=100)
    with pytest.raises(RenderError, match="not a non-empty part"):
        frames_to_cover(scene, frame_start=150, frame_end=250)
    with pytest.raises(RenderError, match="not a non-empty part"):
        frames_to_cover(scene, frame_start=9, frame_end=8)
    with pytest.raises(RenderError, match="at least 1"):
        slice_frames(scene, 0, 0)


def test_threads_follow_kiln_vcpus_else_the_cpus_this_process_may_use() -> None:
    assert job_vcpus({"KILN_VCPUS": "3"}) == 3
    assert job_vcpus({"KILN_VCPUS": "0.5"}) == 1  # fractional (Fargate-style) vCPUs still get a thread
    assert job_vcpus({}) == len(os.sched_getaffinity(0))
    with pytest.raises(RenderError):
        job_vcpus({"KILN_VCPUS": "many"})


def test_frame_files_are_named_like_blender_names_them() -> None:
    assert frame_number("0001.png") == 1
    assert frame_number("12345.png") == 12345
    assert frame_number("-0001.png") == -1
    for other in ("scene.json", ".0001.png.partial-abcd1234", "0001.png.tmp", "frame.png"):
        assert frame_number(other) is None


def test_scene_json_round_trips() -> None:
    scene = RenderedScene(
        scene="S", frame_start=3, frame_end=9, frame_step=2, fps=30, fps_base=1.001, width=4, height=2
    )
    assert RenderedScene.from_json(scene.to_json()) == scene
    assert '"frame_rate": "30000/1001"' in scene.to_json()


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "no action given"),
        (["explode"], 2, "unknown action 'explode': expected one of render, stitch"),
        (["render", "-i", "a.blend", "-o", "out"], 2, "-f/--frames-per-job"),
        (["render", "-i", "a.blend", "-o", "out", "-f", "2", "--resolution-percent", "0"], 2, "percentage"),
        (["stitch", "-o", "out"], 2, "-i/--input"),
    ],
)
def test_argument_mistakes_are_one_line(
    argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == status
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("kiln-render: error: ")
    assert message in error
