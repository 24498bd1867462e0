"""Fixtures for the render workload: real Blender (the bpy wheel) in subprocesses, tiny renders.

Blender runs in child processes, never in the pytest process: `bpy` keeps global state for the
life of a process, and the worker itself runs as `python -m kiln.render`, exactly like a job.
Pottery (the workshop's scene) is read from the shared data folder, never copied into the repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
POTTERY_CANDIDATES = (
    Path(os.environ.get("KILN_POTTERY_BLEND", "/nonexistent")),
    Path("/work/shared/data/pottery.blend"),
    REPO.parent / "shared" / "data" / "pottery.blend",
)
# Pottery is Cycles at 1080x1350 with 50 samples; 20 % and 8 samples take 1-2 s a frame on 2 cores.
POTTERY_SETTINGS = ["--resolution-percent", "20", "--samples", "8"]
THREADS = 2


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_worker(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Run:
    """`python -m kiln.render ARGS` as a job would run it (its own process, its own environment)."""
    inherited = {name: value for name, value in os.environ.items() if name != "AWS_BATCH_JOB_ARRAY_INDEX"}
    environment = {**inherited, "KILN_VCPUS": str(THREADS), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "kiln.render", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def run_bpy(script: str, **values: Any) -> Any:
    """Run `script` in a fresh Python with bpy; `values` are its globals; it sets `result` (JSON)."""
    program = (
        textwrap.dedent(
            """
        import json, sys
        globals().update(json.loads(sys.argv[1]))
        result = None
        """
        )
        + textwrap.dedent(script)
        + "\nprint('KILN-RESULT ' + json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, json.dumps(values)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"bpy script failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    marker = [line for line in done.stdout.splitlines() if line.startswith("KILN-RESULT ")]
    return json.loads(marker[-1].removeprefix("KILN-RESULT "))


@pytest.fixture(scope="session")
def pottery() -> Path:
    for candidate in POTTERY_CANDIDATES:
        if candidate.is_file():
            return candidate
    pytest.skip("pottery.blend not found (set KILN_POTTERY_BLEND or provide shared/data/pottery.blend)")


@pytest.fixture(scope="session")
def sample_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code-built sample scene (12 frames from frame 1), saved uncompressed."""
    path = tmp_path_factory.mktemp("sample") / "sample.blend"
    run_bpy(
        """
        from pathlib import Path
        from kiln.render.sample_scene import write_sample_scene
        write_sample_scene(Path(path))
        """,
        path=str(path),
    )
    return path
