"""Fixtures for the Blender add-on: the zip `kiln blender-addon` builds, and bpy subprocesses that install it.

Blender runs in child processes (never in pytest's: `bpy` keeps global state), with its user
folders (config, scripts, extensions) in a temp dir, so installing the add-on touches nothing of
the machine's Blender. The add-on is installed from the zip as an artist would, not imported
from the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, Key, KilnServer, create_key, kiln, start_server

# Installs the zip as a legacy add-on and enables it: what every add-on script starts with.
INSTALL = """
import bpy
import addon_utils
bpy.ops.preferences.addon_install(filepath=addon_zip, overwrite=True)
addon_utils.enable("kiln_blender", default_set=True, handle_error=None)
assert "kiln_blender" in bpy.context.preferences.addons, "the add-on did not enable"
"""


@dataclass(frozen=True)
class BlenderRun:
    result: Any
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnServer, Key]]:
    """One `kiln server --auth sigv4` with a key from `kiln keys create` for all the add-on's tests
    (session-scoped here: a server start is seconds on a busy machine). Its jobs run as root, as
    the render tests' do (JOBS_AS_ROOT: they run this interpreter and write into pytest's temp dirs)."""
    root = tmp_path_factory.mktemp("addon-sigv4")
    key = create_key(root / "data")
    server = start_server(root, [*FAST_FLAGS, *JOBS_AS_ROOT, "--auth", "sigv4"])
    yield server, key
    server.close()


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("addon") / "kiln_addon.zip"
    done = kiln("blender-addon", "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="session")
def sample_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample scene (kiln/render/sample_scene.py), 4 frames, saved where the tests find it."""
    path = tmp_path_factory.mktemp("scene") / "sample.blend"
    done = kiln("sample-scene", str(path), "--frames", "4")
    assert done.returncode == 0, done.stderr
    return path


def run_blender(
    script: str, home: Path, timeout: float = 240, prelude: str = "", install: bool = True, **values: Any
) -> BlenderRun:
    """`script` in a fresh Python with bpy and (unless not `install`) the add-on installed as a legacy
    add-on, after `prelude`; the script sets `result` (JSON)."""
    for folder in ("config", "scripts", "extensions", "datafiles"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "BLENDER_USER_CONFIG": str(home / "config"),
        "BLENDER_USER_SCRIPTS": str(home / "scripts"),
        "BLENDER_USER_EXTENSIONS": str(home / "extensions"),
        "BLENDER_USER_DATAFILES": str(home / "datafiles"),
    }
    program = (
        "import faulthandler, json, sys\nglobals().update(json.loads(sys.argv[1]))\nresult = None\n"
        + textwrap.dedent(prelude)
        + textwrap.dedent(INSTALL if install else "import bpy\n")
        # a hang shows where it is instead of only timing out (after bpy's import, which sets up its own)
        + f"faulthandler.dump_traceback_later({max(timeout - 10, 1)}, exit=True)\n"
        + textwrap.dedent(script)
        + "\nprint('KILN-RESULT ' + json.dumps(result))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", program, json.dumps(values)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=environment,
            cwd=home,
        )
    except subprocess.TimeoutExpired as expired:
        out, err = (_text(stream)[-4000:] for stream in (expired.stdout, expired.stderr))
        raise AssertionError(f"bpy script timed out after {timeout} s:\n{out}\n{err}") from None
    if done.returncode != 0:
        raise AssertionError(f"bpy script failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    marker = [line for line in done.stdout.splitlines() if line.startswith("KILN-RESULT ")]
    return BlenderRun(json.loads(marker[-1].removeprefix("KILN-RESULT ")), done.stdout, done.stderr)


def _text(stream: bytes | str | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode("utf-8", "replace")
    return stream or ""
