"""`kiln-render` as PID 1, as a container starts it, without Docker: a PID namespace of its own (`unshare`).

As PID 1 the worker runs in a child (kiln/render/first_process.py), so a SIGTERM ends the slice at
once, with the frames already written kept, where a bare Python would ignore it. The retry is the
worker as the local executor runs it (`python -m kiln.render`): it renders only the missing frames.
tests/render/test_docker_render.py does the same in the render image.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import THREADS, run_worker
from .images import read_png


def test_sigterm_to_the_first_process_ends_the_slice_and_keeps_written_frames(
    sample_blend: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a PID namespace needs root and util-linux's unshare")
    output = tmp_path / "out"
    worker = [sys.executable, "-m", "kiln.render", "render", "-i", str(sample_blend), "-o", str(output), "-f", "6"]
    env = {**os.environ, "KILN_VCPUS": str(THREADS)}
    env.pop("AWS_BATCH_JOB_ARRAY_INDEX", None)
    namespace = subprocess.Popen(
        ["unshare", "--pid", "--fork", *worker], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert namespace.stdout is not None and namespace.stderr is not None
    try:
        deadline = time.monotonic() + 120
        for line in namespace.stdout:
            if line.startswith("frame 1 done") or time.monotonic() > deadline:
                break
        [first] = psutil.Process(namespace.pid).children()
        ns_pids = [
            line for line in Path(f"/proc/{first.pid}/status").read_text().splitlines() if line.startswith("NSpid")
        ]
        assert ns_pids[0].split()[-1] == "1"  # PID 1 in its namespace, as in a container
        first.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        status = namespace.wait(timeout=60)
        stopped_in = time.monotonic() - sent
        errors = namespace.stderr.read()
    finally:
        namespace.kill()
        namespace.wait()
    assert status == 143, errors
    assert stopped_in < 3, stopped_in
    assert "kiln-render: stopped by SIGTERM (exit status 143)" in errors
    kept = sorted(path.name for path in (output / "frames").glob("*.png"))
    assert kept and kept[0] == "0001.png" and len(kept) < 6
    for name in kept:
        assert read_png(output / "frames" / name).shape == (180, 320, 3)
    retry = run_worker("render", "-i", str(sample_blend), "-o", str(output), "-f", "6")
    assert retry.returncode == 0, retry.stderr
    assert f"{6 - len(kept)} to render, {len(kept)} already done" in retry.stdout
    for name in kept:
        assert f"frame {int(name[:4])} skipped" in retry.stdout
