"""A render job's output as the dashboard shows it: frame files as they land, and the final MP4.

The only storage locations read are the ones a `kiln/render` job names in its own command (`-o`
of `render`, `-i`/`-o` of `stitch`), so the dashboard can never be pointed at an arbitrary path.
Storage goes through the render workload's fsspec helpers; they need the `render` extra, so
they are imported when first used and a server without it answers with a plain error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kiln.errors import NotFoundError, ValidationError
from kiln.render.image import IMAGE

VIDEO_FILE = "output.mp4"


@dataclass(frozen=True)
class RenderOutput:
    """Where a render job's frames are read from and where its video is (or will be)."""

    frames_from: str
    video_in: str


def _argument(command: list[str], short: str, long: str) -> str | None:
    for position, word in enumerate(command[:-1]):
        if word in (short, long):
            return command[position + 1]
    return None


def render_output(container: dict[str, Any]) -> RenderOutput | None:
    """The output of a job running Kiln's render image, from its resolved command; None for other jobs."""
    image = str(container.get("image") or "")
    command = [str(word) for word in container.get("command") or []]
    if image.removesuffix(":latest") != IMAGE or not command or command[0] not in ("render", "stitch"):
        return None
    output = _argument(command, "-o", "--output")
    source = output if command[0] == "render" else _argument(command, "-i", "--input")
    if output is None or source is None:
        return None
    return RenderOutput(frames_from=source, video_in=output)


def _storage() -> tuple[ModuleType, ModuleType]:
    try:
        from kiln.render import frame_store, uris
    except ImportError as error:  # fsspec missing: the server was installed without the render extra
        raise ValidationError(f"Render outputs need Kiln's render extra ({error})") from None
    return frame_store, uris


def listing(output: RenderOutput) -> dict[str, Any]:
    """Finished frames (number and file name), the frame range the jobs were asked for (when known) and the video's size."""
    frame_store, uris = _storage()
    try:
        finished = frame_store.finished_frames(output.frames_from)
        scene = frame_store.read_scene(output.frames_from)
        video_size = uris.list_files(output.video_in).get(VIDEO_FILE)
    except Exception as error:  # RenderError and storage errors: show them, do not fail the page
        return {"frames": [], "expected": None, "videoSize": None, "error": str(error)}
    expected = None
    if scene is not None:
        expected = {"first": scene.frame_start, "last": scene.frame_end, "step": scene.frame_step,
                    "width": scene.width, "height": scene.height}  # fmt: skip
    frames = [{"frame": number, "name": finished[number].rsplit("/", 1)[-1]} for number in sorted(finished)]
    return {"frames": frames, "expected": expected, "videoSize": video_size, "error": None}


def frame_bytes(output: RenderOutput, name: str) -> bytes:
    """One frame file (`NNNN.png`) of the output; any other name is refused."""
    frame_store, uris = _storage()
    if frame_store.frame_number(name) is None:
        raise ValidationError(f"{name!r} is not a frame file name (NNNN.png)")
    try:
        return bytes(uris.read_bytes(uris.join(frame_store.frames_uri(output.frames_from), name)))
    except Exception as error:
        raise NotFoundError(f"Frame {name} is not there yet ({error})") from None


def video_file(output: RenderOutput, cache_dir: Path) -> Path:
    """A local file holding the video: the file itself on local storage, else a cached copy.

    A local file lets Starlette's FileResponse answer HTTP Range requests, which browsers need
    to seek; the copy is refreshed when the stored video's size changes.
    """
    _, uris = _storage()
    uri = uris.join(output.video_in, VIDEO_FILE)
    fs, path = uris.filesystem(uri)
    try:
        size = int(fs.size(path))
    except Exception:
        raise NotFoundError(f"{uri} does not exist yet") from None
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return Path(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.mp4"
    if not cached.exists() or cached.stat().st_size != size:
        partial = cached.with_suffix(f".partial-{os.getpid()}")
        with fs.open(path, "rb") as source, partial.open("wb") as target:
            shutil.copyfileobj(source, target)
        partial.replace(cached)
    return cached
