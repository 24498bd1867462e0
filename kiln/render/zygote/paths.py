"""Where a render zygote lives: one per user and installation, found by jobs without any registry.

The key covers what the zygote's `import bpy` and Kiln code depend on (interpreter, this package's
folder and its render code's files, `sys.path`, Blender and Python variables), so a job never talks
to a zygote that would run other code than its own. The folder is the user's own (0700, checked), since the socket hands a
process the job's descriptors and cgroups.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.render.private_folder import is_private_folder

# KILN_VCPUS: Blender's worker pool is sized as bpy loads (vcpus.thread_pools_sized), so jobs of
# each size get a zygote of their own whose children inherit a pool of their size.
KEY_VARIABLE_PREFIXES = ("BLENDER_", "OCIO", "PYTHON", "LD_", "TBB_", "OMP_", "KILN_RENDER_ZYGOTE", "KILN_VCPUS")
DISABLED_FOR_SECONDS = 600.0  # after a zygote could not start, jobs stop trying for this long


class UnsafeFolder(Exception):
    """The socket folder is not this user's alone."""


@dataclass(frozen=True)
class ZygotePaths:
    folder: Path
    key: str

    @classmethod
    def for_this_installation(cls, environ: Mapping[str, str]) -> ZygotePaths:
        base = Path(environ.get("XDG_RUNTIME_DIR") or "/tmp")
        return cls(base / f"kiln-render-zygote-{os.getuid()}", installation_key(environ))

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.key}.sock"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"

    @property
    def disabled_marker(self) -> Path:
        return self.folder / f"{self.key}.disabled"

    def ensure_folder(self) -> None:
        """Create the folder 0700, or check an existing one is ours alone (never follow a link)."""
        if not is_private_folder(self.folder):
            raise UnsafeFolder(f"{self.folder} is not a private folder of user {os.getuid()}")

    def disable(self, reason: str) -> None:
        """Record why the zygote cannot run; jobs render in-process until the marker is old."""
        self.disabled_marker.write_text(reason + "\n")

    def disabled(self) -> bool:
        try:
            return time.time() - self.disabled_marker.stat().st_mtime < DISABLED_FOR_SECONDS
        except OSError:
            return False


def installation_key(
    environ: Mapping[str, str], search_path: Sequence[str] | None = None, cwd: str | None = None
) -> str:
    """What a zygote must share with the job it serves: interpreter, Kiln's code, module search
    path (default `sys.path`) and the variables that change how Blender or Python behave."""
    kiln_folder = Path(__file__).resolve().parents[2]
    variables = {name: value for name, value in environ.items() if name.startswith(KEY_VARIABLE_PREFIXES)}
    # sys.path[0] is the job's working directory under `python -m`: not part of the installation.
    # A relative PYTHONPATH entry (`.`) is the job's directory too, another one for every attempt:
    # keyed as such, or each job would start a zygote of its own.
    cwd = cwd or os.getcwd()
    entries = [_job_relative(entry, cwd) for entry in (sys.path[1:] if search_path is None else search_path)]
    # The render code's files (size, mtime) stand for its version: an upgrade gets a new zygote.
    render_files = sorted((kiln_folder / "render").glob("**/*.py"))
    sources = [(str(path.relative_to(kiln_folder)), *_size_and_mtime(path)) for path in render_files]
    identity = [sys.executable, str(kiln_folder), entries, sorted(variables.items()), sources]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def _job_relative(entry: str, cwd: str) -> str:
    """`entry` with the job's directory `cwd` replaced by a placeholder when it is inside it."""
    if cwd != os.sep and (entry == cwd or entry.startswith(cwd + os.sep)):
        return "<job directory>" + entry[len(cwd) :]
    return entry


def _size_and_mtime(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns
