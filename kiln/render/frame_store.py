"""The `frames/` folder of a render output: frame files and the `scene.json` the stitcher reads.

Frames are named by frame number the way Blender names them (`0001.png`, `0042.png`,
`12345.png`), so the folder's listing alone tells which frames are finished: uploads are atomic
(see `uris`), hence any frame file present is complete, and a retried attempt skips it.

`scene.json` is written by every render job (all write the same content) and records what the
stitcher needs without Blender or the .blend file: the frame rate, and which frames the array was
asked to cover, so that a missing slice is reported instead of silently shortening the video.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln.render import uris
from kiln.render.blend_header import FrameTimeline
from kiln.render.errors import RenderError

FRAMES_FOLDER = "frames"
SCENE_FILE = "scene.json"
_FRAME_FILE = re.compile(r"^(-?\d+)\.png$")


@dataclass(frozen=True)
class RenderedScene(FrameTimeline):
    """What the render jobs of one output were asked to produce."""

    scene: str
    frame_start: int
    frame_end: int
    frame_step: int
    fps: int
    fps_base: float
    width: int
    height: int

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "frame_rate": str(self.frame_rate)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RenderedScene:
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def frames_uri(output_uri: str) -> str:
    return uris.join(output_uri, FRAMES_FOLDER)


def frame_number(file_name: str) -> int | None:
    """The frame a file in `frames/` holds, or None for anything else (scene.json, partial uploads)."""
    match = _FRAME_FILE.match(file_name)
    return int(match.group(1)) if match else None


def finished_frames(output_uri: str) -> dict[int, str]:
    """Frame number -> file URI for every complete frame under `<output>/frames/`."""
    folder = frames_uri(output_uri)
    finished = {}
    for name, size in uris.list_files(folder).items():
        number = frame_number(name)
        if number is not None and size > 0:
            finished[number] = uris.join(folder, name)
    return finished


def publish_frame(path: Path, output_uri: str) -> str:
    """Upload one rendered frame atomically, keeping the file name Blender gave it; returns its URI."""
    if frame_number(path.name) is None:
        raise RenderError(f"Blender wrote {path.name}, which is not a NNNN.png frame file")
    destination = uris.join(frames_uri(output_uri), path.name)
    uris.upload_atomic(path, destination)
    return destination


def write_scene(output_uri: str, scene: RenderedScene) -> None:
    uris.write_bytes_atomic(scene.to_json().encode(), uris.join(frames_uri(output_uri), SCENE_FILE))


def read_scene(output_uri: str) -> RenderedScene | None:
    """The `scene.json` the render jobs wrote, or None when the frames came from elsewhere."""
    uri = uris.join(frames_uri(output_uri), SCENE_FILE)
    if SCENE_FILE not in uris.list_files(frames_uri(output_uri)):
        return None
    try:
        return RenderedScene.from_json(uris.read_bytes(uri).decode())
    except (ValueError, KeyError, TypeError) as error:
        raise RenderError(f"{uri} is not a scene description Kiln wrote ({error})") from None
