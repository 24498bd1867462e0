"""The reference workshop's own Python submitter, call for call, against a real `kiln server`.

The workshop registers its seed job definition, reads the scene's frame range from the .blend
header, and submits `<name>_Rendering` (an array when it has more than one slice) and
`<name>_Stitching`, which depends on it with `type: SEQUENTIAL`. Kiln must run that unchanged on
its `kiln/render` image. The scene is the code-built sample at 20 % size (64x36), gzip-compressed
as Blender < 3.0 saved files, so each case takes seconds.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import pytest

from kiln.config import host_memory_mib
from kiln.render.blend_header import read_scene_info
from tests.support import make_queue, unique, wait_for

from .conftest import run_bpy
from .images import video_frames

# The workshop's job-definition.json; only the image is Kiln's (memory is capped at this host's
# physical memory so the job can be placed on a small machine).
SEED_DEFINITION: dict[str, Any] = {
    "jobDefinitionName": "RenderingJobDefinition",
    "type": "container",
    "containerProperties": {
        "image": "kiln/render",
        "vcpus": 1,
        "memory": min(8000, host_memory_mib()),
        "command": ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"],
    },
    "retryStrategy": {"attempts": 3},
    "platformCapabilities": ["EC2"],
}


def tiny_scene(path: Path, frames: int) -> Path:
    """The sample scene with `frames` frames at 20 % resolution, saved plain, returned gzipped."""
    plain = path.with_suffix(".plain.blend")
    run_bpy(
        """
        import bpy
        from pathlib import Path
        from kiln.render.sample_scene import write_sample_scene
        write_sample_scene(Path(target), frames)
        bpy.context.scene.render.resolution_percentage = 20
        bpy.ops.wm.save_as_mainfile(filepath=target, compress=False)
        """,
        target=str(plain),
        frames=frames,
    )
    path.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    return path


def submit_like_the_workshop(
    batch: Any, queue: str, name: str, input_uri: str, output_uri: str, frames_per_job: int
) -> tuple[str, str]:
    """The workshop submitter's calls, exactly: two SubmitJob requests, queue and definition by name."""
    info = read_scene_info(input_uri)
    total = info.frame_end - info.frame_start + 1
    per_job = min(frames_per_job, total)
    size = math.ceil(total / per_job)
    render_request: dict[str, Any] = {
        "jobName": f"{name}_Rendering",
        "jobQueue": queue,
        "jobDefinition": "RenderingJobDefinition",
        "containerOverrides": {
            "command": ["render", "-i", input_uri, "-o", f"{output_uri}/{name}", "-f", str(per_job), "-t", str(total)]
        },
        "retryStrategy": {"attempts": 1},
    }
    if size > 1:
        render_request["arrayProperties"] = {"size": size}
    render = batch.submit_job(**render_request)
    stitch = batch.submit_job(
        jobName=f"{name}_Stitching",
        jobQueue=queue,
        jobDefinition="RenderingJobDefinition",
        containerOverrides={"command": ["stitch", "-i", f"{output_uri}/{name}", "-o", f"{output_uri}/{name}"]},
        dependsOn=[{"jobId": render["jobId"], "type": "SEQUENTIAL"}],
    )
    return render["jobId"], stitch["jobId"]


@pytest.fixture(scope="module")
def workshop_queue(batch: Any) -> str:
    batch.register_job_definition(**SEED_DEFINITION)
    return make_queue(batch, max_vcpus=2)


@pytest.mark.parametrize(("frames", "frames_per_job", "array_size"), [(4, 3, 2), (3, 5, None)])
def test_the_workshop_submitter_runs_unchanged(
    batch: Any, workshop_queue: str, job_tmp: Path, frames: int, frames_per_job: int, array_size: int | None
) -> None:
    """Its jobs run as the default job user (a uid of their own under a root server): scene and output live
    where that user may read and write, as they would on a shared server."""
    scene = tiny_scene(job_tmp / "scene.blend", frames)
    name = unique("Sample")
    render_id, stitch_id = submit_like_the_workshop(
        batch, workshop_queue, name, str(scene), str(job_tmp / "out"), frames_per_job
    )

    stitched = wait_for(batch, stitch_id, timeout=120)
    rendered = batch.describe_jobs(jobs=[render_id])["jobs"][0]
    assert (rendered["status"], stitched["status"]) == ("SUCCEEDED", "SUCCEEDED"), (rendered, stitched)
    assert rendered["jobName"] == f"{name}_Rendering"
    assert rendered.get("arrayProperties", {}).get("size") == array_size
    assert rendered["container"]["command"][:2] == ["render", "-i"]
    assert stitched["dependsOn"] == [{"jobId": render_id, "type": "SEQUENTIAL"}]
    video, _ = video_frames(job_tmp / "out" / name / "output.mp4")
    assert len(video) == frames
