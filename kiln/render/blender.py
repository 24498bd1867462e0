"""The one module that drives Blender (the `bpy` wheel): open a scene, apply settings, render a frame.

`bpy` is imported here only, lazily, so that stitching, frame counting and the CLI's argument
checks work without loading the 300 MB module. Blender prints dozens of progress lines per frame
on stdout; they go to a file in the job's scratch folder so the job's log keeps Kiln's own
one-line-per-frame progress. Blender's errors still surface: `bpy.ops` raises them as exceptions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kiln.render.cycles_device import apply_device, choose_device
from kiln.render.errors import RenderError
from kiln.render.vcpus import thread_pools_sized

_SAMPLE_SETTINGS = {  # engine -> (settings group on the scene, samples property)
    "CYCLES": ("cycles", "samples"),
    "BLENDER_EEVEE": ("eevee", "taa_render_samples"),
    "BLENDER_EEVEE_NEXT": ("eevee", "taa_render_samples"),
}


_opened_ahead: tuple[Path, tuple[int, ...]] | None = None  # set in the render zygote: (file, identity)


def open_ahead(blend_file: Path) -> None:
    """Open `blend_file` in this process now, for the jobs forked from it next (the render zygote).

    A forked job whose input is this very file, unchanged since, then starts with the scene open
    instead of loading it again (`BlenderScene`); reopening is skipped while it stays unchanged.
    """
    global _opened_ahead
    identity = file_identity(blend_file)
    if _opened_ahead == (blend_file, identity):
        return
    _opened_ahead = None
    _open_mainfile(import_bpy(), blend_file)
    _opened_ahead = (blend_file, identity)


def opened_ahead() -> tuple[Path, tuple[int, ...]] | None:
    """(file, identity) of the scene `open_ahead` last loaded into this process, if any."""
    return _opened_ahead


def is_open_ahead(blend_file: Path) -> bool:
    """Whether `open_ahead` loaded this file, as it still is, into this process."""
    try:
        return _opened_ahead == (blend_file, file_identity(blend_file))
    except OSError:
        return False


def file_identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or rewritten: device, inode, size, modification time."""
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def import_bpy() -> Any:
    try:
        import bpy
    except ImportError as error:
        raise RenderError(
            f"Blender's Python module is not installed ({error}); install Kiln with the 'render' extra"
        ) from None
    return bpy


class BlenderScene:
    """The active scene of one opened .blend file, rendered frame by frame into `output_dir`."""

    def __init__(self, blend_file: Path, output_dir: Path, chatter_log: Path, *, threads: int) -> None:
        self._output_dir = output_dir
        self._chatter_log = chatter_log
        self.opened_ahead = is_open_ahead(blend_file)  # by the render zygote, before it forked this job
        if self.opened_ahead:
            self._bpy = import_bpy()
        else:
            with thread_pools_sized(threads):  # Blender's worker pool is sized as it loads
                self._bpy = import_bpy()
                with self._quiet():
                    _open_mainfile(self._bpy, blend_file)
        self.scene = self._bpy.context.scene

    @property
    def name(self) -> str:
        return str(self.scene.name)

    @property
    def frames(self) -> range:
        return range(self.scene.frame_start, self.scene.frame_end + 1, max(1, self.scene.frame_step))

    @property
    def fps(self) -> int:
        return int(self.scene.render.fps)

    @property
    def fps_base(self) -> float:
        return float(self.scene.render.fps_base)

    @property
    def engine(self) -> str:
        return str(self.scene.render.engine)

    def resolution(self) -> tuple[int, int]:
        """Output size in pixels, after the resolution percentage (what the PNG files will measure)."""
        render = self.scene.render
        scale = render.resolution_percentage / 100
        return max(1, int(render.resolution_x * scale)), max(1, int(render.resolution_y * scale))

    def configure(self, *, threads: int, resolution_percent: int | None, samples: int | None) -> list[str]:
        """Apply Kiln's settings; returns notes for the log about settings this engine ignores."""
        render = self.scene.render
        render.threads_mode = "FIXED"
        render.threads = threads
        if resolution_percent is not None:
            render.resolution_percentage = resolution_percent
        render.image_settings.file_format = "PNG"
        render.use_file_extension = True
        render.filepath = str(self._output_dir) + os.sep
        if samples is None:
            return []
        if self.engine not in _SAMPLE_SETTINGS:
            return [f"--samples ignored: the {self.engine} engine has no sample count"]
        group, attribute = _SAMPLE_SETTINGS[self.engine]
        setattr(getattr(self.scene, group), attribute, samples)
        return []

    def choose_device(self, environ: Mapping[str, str]) -> str:
        """Cycles on the job's own GPUs when it was given some, else the CPU; returns the log line."""
        if self.engine != "CYCLES":
            return f"the {self.engine} engine renders as Blender decides (Kiln picks devices for Cycles only)"
        preferences = self._bpy.context.preferences.addons["cycles"].preferences
        choice = choose_device(preferences, environ)
        apply_device(self.scene, preferences, choice)
        return choice.describe()

    def frame_file(self, frame: int) -> Path:
        """Where Blender names frame `frame` (`0001.png`, `-0001.png`, `12345.png`) in the output folder."""
        return Path(self.scene.render.frame_path(frame=frame))

    def render_frame(self, frame: int) -> Path:
        """Render `frame` to its PNG file in the output folder and return that file."""
        target = self.frame_file(frame)
        render = self.scene.render
        base, render.filepath = render.filepath, str(target)  # a still render writes exactly this path
        try:
            # The render evaluates the scene for this frame in its own depsgraph, as Blender's
            # animation render does; `frame_set` would evaluate it once more for no one (~50 ms
            # a frame for Pottery on one thread). Marker camera switches still apply (tested).
            self.scene.frame_current = frame
            with self._quiet():
                self._bpy.ops.render.render(write_still=True)
        except RuntimeError as error:
            raise RenderError(f"Blender failed to render frame {frame}: {_first_line(error)}") from None
        finally:
            render.filepath = base
        if not target.is_file():
            raise RenderError(f"Blender reported frame {frame} rendered but wrote no {target.name}")
        return target

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Send Blender's stdout (C level, file descriptor 1) to the chatter log while it works."""
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with self._chatter_log.open("ab") as log:
                os.dup2(log.fileno(), 1)
                try:
                    yield
                finally:
                    sys.stdout.flush()
                    os.dup2(saved, 1)
        finally:
            os.close(saved)


def _open_mainfile(bpy: Any, blend_file: Path) -> None:
    try:
        bpy.ops.wm.open_mainfile(filepath=str(blend_file), load_ui=False)
    except RuntimeError as error:
        raise RenderError(f"Blender cannot open the input: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].removeprefix("Error: ") if lines else type(error).__name__
