"""Small image helpers for the render tests: decode PNG/MP4 with PyAV, compare with PSNR."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np


def read_png(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def write_png(path: Path, pixels: np.ndarray) -> None:
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = pixels.shape[1], pixels.shape[0], "rgb24"
    packets = encoder.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24"))
    path.write_bytes(b"".join(bytes(packet) for packet in packets))


def video_frames(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """Every decoded frame of the first video stream, and that stream (for its rate and size)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (infinite for identical images)."""
    assert a.shape == b.shape
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
