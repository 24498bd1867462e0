"""Which frames one array child renders: the render workload's contract with AWS Batch arrays.

The reference workshop submits `ceil(frames / framesPerJob)` children; child `i` (its
`AWS_BATCH_JOB_ARRAY_INDEX`) renders the `i`-th run of `framesPerJob` frames, counted from the
scene's own `frame_start` (a scene that starts at frame 3 gives child 0 frames 3, 4, ...) and
clipped at its `frame_end`. Pure functions, so the arithmetic is tested without Blender.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from kiln.render.errors import RenderError

ARRAY_INDEX_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"


def array_index(environ: Mapping[str, str]) -> int:
    """This job's slice: `AWS_BATCH_JOB_ARRAY_INDEX`, or 0 for a job that is not an array child."""
    raw = environ.get(ARRAY_INDEX_VARIABLE, "").strip()
    if not raw:
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise RenderError(f"{ARRAY_INDEX_VARIABLE}={raw!r} is not an array index") from None
    if index < 0:
        raise RenderError(f"{ARRAY_INDEX_VARIABLE}={raw!r} is not an array index")
    return index


def frames_to_cover(
    scene_frames: range,
    *,
    frame_start: int | None = None,
    frame_end: int | None = None,
    total_frames: int | None = None,
) -> range:
    """The frames the whole array renders: the scene's range, or the sub-range Kiln's flags ask for.

    `total_frames` (the workshop's `-t`) is a cross-check: when given it must equal the number
    of frames covered, so an array sized from a stale frame count fails loudly instead of
    silently leaving frames out.
    """
    first, last = scene_frames.start, scene_frames[-1] if scene_frames else scene_frames.start - 1
    start = first if frame_start is None else frame_start
    end = last if frame_end is None else frame_end
    if not first <= start <= end <= last:
        raise RenderError(
            f"--frame-start/--frame-end {start}-{end} is not a non-empty part of the scene's frames {first}-{last}"
        )
    covered = range(start, end + 1, scene_frames.step)
    if total_frames is not None and total_frames != len(covered):
        raise RenderError(f"-t {total_frames} does not match the {len(covered)} frames to render ({start}-{end})")
    return covered


def slice_frames(covered: range, frames_per_job: int, index: int) -> range:
    """Slice `index` of `covered` in runs of `frames_per_job`; empty past the end."""
    if frames_per_job < 1:
        raise RenderError(f"-f (frames per job) must be at least 1, not {frames_per_job}")
    return covered[index * frames_per_job : (index + 1) * frames_per_job]


def slice_count(frame_count: int, frames_per_job: int) -> int:
    """How many array children cover `frame_count` frames (what a submitter sizes the array to)."""
    if frames_per_job < 1:
        raise RenderError(f"-f (frames per job) must be at least 1, not {frames_per_job}")
    return math.ceil(frame_count / frames_per_job)
