"""`stitch`: `<input>/frames/*.png` in frame order -> `<output>/output.mp4` (H.264), without Blender.

PyAV encodes in-process (no ffmpeg binary to install). The frame rate comes from the
`scene.json` the render jobs wrote next to the frames (24 fps when the frames came from
elsewhere). Every image becomes exactly one video frame; missing frames fail the stitch instead
of producing a video that silently skips part of the animation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Final

import av
import numpy as np

from kiln.render import uris
from kiln.render.errors import RenderError
from kiln.render.frame_store import RenderedScene, finished_frames, frames_uri, read_scene

OUTPUT_FILE = "output.mp4"
DEFAULT_FRAME_RATE = Fraction(24)
CODEC: Final = "libx264"
_CODEC_OPTIONS = {"crf": "18", "preset": "medium"}  # visually lossless; yuv420p plays everywhere


def stitch(input_uri: str, output_uri: str, say: Callable[[str], None] = print) -> str:
    """Encode the frames under `input_uri` into `<output_uri>/output.mp4`; returns that URI."""
    scene = read_scene(input_uri)
    frames = finished_frames(input_uri)
    order = frames_in_order(frames, scene, frames_uri(input_uri))
    rate = scene.frame_rate if scene is not None else DEFAULT_FRAME_RATE
    if scene is None:
        say(f"no scene.json in {frames_uri(input_uri)}: assuming {DEFAULT_FRAME_RATE} fps")
    destination = uris.join(output_uri, OUTPUT_FILE)
    with tempfile.TemporaryDirectory(prefix="kiln-stitch-") as scratch:
        video = Path(scratch) / OUTPUT_FILE
        encode([frames[frame] for frame in order], video, rate)
        uris.upload_atomic(video, destination)
    say(f"stitched {len(order)} frames ({order[0]}-{order[-1]}) at {rate} fps into {destination}")
    return destination


def frames_in_order(frames: dict[int, str], scene: RenderedScene | None, where: str) -> list[int]:
    """The frame numbers to encode, checked for gaps against what the render jobs were asked for."""
    if not frames:
        raise RenderError(f"no frames to stitch: {where} has no NNNN.png files")
    present = sorted(frames)
    step = scene.frame_step if scene is not None else 1
    expected = list(scene.frames) if scene is not None else list(range(present[0], present[-1] + 1, step))
    missing = sorted(set(expected) - set(frames))
    if missing:
        shown = ", ".join(str(frame) for frame in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise RenderError(
            f"cannot stitch: {len(missing)} of {len(expected)} frames missing in {where} ({shown}); "
            "re-run the render jobs that own them"
        )
    return present


def encode(frame_uris: list[str], video: Path, rate: Fraction) -> None:
    """Write `frame_uris` (PNG files) as H.264 video at `rate` frames per second, one frame each."""
    first = _decode_png(frame_uris[0])
    height, width = _even(first.shape[0]), _even(first.shape[1])
    with av.open(str(video), mode="w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=rate, options=dict(_CODEC_OPTIONS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, uri in enumerate(frame_uris):
            pixels = first if index == 0 else _decode_png(uri)
            if (_even(pixels.shape[0]), _even(pixels.shape[1])) != (height, width):
                raise RenderError(f"{uri} is {pixels.shape[1]}x{pixels.shape[0]}, unlike the frames before it")
            frame = av.VideoFrame.from_ndarray(_pad_to_even(pixels), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _decode_png(uri: str) -> np.ndarray:
    """An RGB image as a height x width x 3 array (any PNG flavour: RGBA, 16-bit, grey)."""
    decoder = av.CodecContext.create("png", "r")
    try:
        decoded = decoder.decode(av.Packet(uris.read_bytes(uri)))
    except av.FFmpegError as error:
        raise RenderError(f"{uri} is not a readable PNG image ({error})") from None
    if not decoded:
        raise RenderError(f"{uri} is not a readable PNG image")
    return decoded[0].to_ndarray(format="rgb24")


def _even(size: int) -> int:
    return size + size % 2


def _pad_to_even(pixels: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sizes; repeat the last row/column rather than rescale the image."""
    height, width = pixels.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return pixels
    return np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
