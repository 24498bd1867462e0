"""`render`: one array child's slice of frames, from a .blend URI to `<output>/frames/NNNN.png`.

Why frame by frame rather than Blender's animation render: each frame is uploaded as soon as it is
finished and frames already present are skipped, so a retried attempt (a killed process, a lost
host) redoes at most the frame that was in flight. The .blend file is downloaded and opened once
per job, since loading a production scene can take longer than rendering a small frame.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.render import uris
from kiln.render.blend_header import read_scene_info
from kiln.render.blender import BlenderScene, is_open_ahead
from kiln.render.errors import BlendFileError, RenderError
from kiln.render.frame_store import RenderedScene, finished_frames, frames_uri, publish_frame, write_scene
from kiln.render.slices import frames_to_cover, slice_count, slice_frames


@dataclass(frozen=True)
class RenderJob:
    """One `render` invocation: the workshop's arguments plus Kiln's optional overrides."""

    blend_uri: str
    output_uri: str
    frames_per_job: int
    array_index: int
    threads: int
    total_frames: int | None = None
    frame_start: int | None = None
    frame_end: int | None = None
    resolution_percent: int | None = None
    samples: int | None = None


def render_slice(job: RenderJob, say: Callable[[str], None] = print) -> list[int]:
    """Render this job's missing frames; returns the frames rendered now (skipped ones excluded)."""
    with tempfile.TemporaryDirectory(prefix="kiln-render-") as scratch_name:
        scratch = Path(scratch_name)
        blend_file = local_blend(job.blend_uri, scratch / "input")
        rendered_dir = scratch / "frames"
        rendered_dir.mkdir()
        scene = BlenderScene(blend_file, rendered_dir, chatter_log=scratch / "blender.log", threads=job.threads)
        if scene.opened_ahead:
            say(f"{blend_file.name} was opened ahead by the render zygote")
        for note in scene.configure(
            threads=job.threads, resolution_percent=job.resolution_percent, samples=job.samples
        ):
            say(note)
        say(scene.choose_device(os.environ))
        covered = frames_to_cover(
            scene.frames, frame_start=job.frame_start, frame_end=job.frame_end, total_frames=job.total_frames
        )
        mine = _my_frames(covered, job)
        write_scene(job.output_uri, _rendered_scene(scene, covered))
        done = finished_frames(job.output_uri)
        todo = [frame for frame in mine if frame not in done]
        width, height = scene.resolution()
        say(
            f"slice {job.array_index}: {_span(mine)} of {_span(covered)} from scene {scene.name!r} "
            f"({scene.engine}, {width}x{height}, {job.threads} threads); "
            f"{len(todo)} to render, {len(mine) - len(todo)} already done"
        )
        for frame in mine:
            if frame in done:
                say(f"frame {frame} skipped: already in {frames_uri(job.output_uri)}")
        _render_and_publish(scene, todo, job.output_uri, say)
        say(f"slice {job.array_index} complete: {len(todo)} rendered, {len(mine) - len(todo)} skipped")
        return todo


def _render_and_publish(scene: BlenderScene, frames: list[int], output_uri: str, say: Callable[[str], None]) -> None:
    """Upload each frame as soon as it is rendered: a killed attempt then loses only the frame in flight."""
    for count, frame in enumerate(frames, start=1):
        started = time.monotonic()
        local_frame = scene.render_frame(frame)
        publish_frame(local_frame, output_uri)
        local_frame.unlink()
        say(f"frame {frame} done ({count}/{len(frames)}, {time.monotonic() - started:.1f} s)")


def local_blend(blend_uri: str, folder: Path) -> Path:
    """The input as a local file (Blender opens local files only), checked to be a .blend first.

    A local input is opened where it is, so paths relative to it (`//textures/...`) resolve as they
    did for the artist; a remote one is downloaded under its own name. The header check turns a
    wrong input into one clear line instead of Blender's noise; a file the render zygote opened for
    this job (`blender.open_ahead`) passed it there.
    """
    local = uris.local_path(blend_uri)
    if local is not None and is_open_ahead(local):
        return local
    if local is None:
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / (PurePosixPath(blend_uri.rstrip("/")).name or "input.blend")
        uris.download(blend_uri, local)
    check_blend(local, blend_uri)
    return local


def check_blend(local: Path, blend_uri: str) -> None:
    """A one-line RenderError naming `blend_uri` unless `local` (the input or its copy) is a .blend file."""
    try:
        read_scene_info(local)
    except BlendFileError as error:  # (an unreadable file's error names it already)
        raise RenderError(f"{blend_uri}: {error}") from None


def _my_frames(covered: range, job: RenderJob) -> range:
    mine = slice_frames(covered, job.frames_per_job, job.array_index)
    if not mine:
        slices = slice_count(len(covered), job.frames_per_job)
        raise RenderError(
            f"slice {job.array_index} is empty: {_span(covered)} in runs of {job.frames_per_job} "
            f"make {slices} slices (array indexes 0-{slices - 1})"
        )
    return mine


def _rendered_scene(scene: BlenderScene, covered: range) -> RenderedScene:
    width, height = scene.resolution()
    return RenderedScene(
        scene=scene.name,
        frame_start=covered.start,
        frame_end=covered[-1],
        frame_step=covered.step,
        fps=scene.fps,
        fps_base=scene.fps_base,
        width=width,
        height=height,
    )


def _span(frames: range) -> str:
    """`frames 3-8`, `frames 1-9 every 2nd`, `frame 7`: for progress lines."""
    if len(frames) == 1:
        return f"frame {frames[0]}"
    every = f" every {frames.step}" if frames.step > 1 else ""
    return f"frames {frames[0]}-{frames[-1]}{every}"
