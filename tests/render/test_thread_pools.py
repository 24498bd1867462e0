"""A render job uses the CPUs it asked for: Blender's worker pool is sized to the job's vCPUs.

Without sizing, a 1-vCPU render on a 2-core host kept the second core busy with a oneTBB worker
spinning in `sched_yield` (12.6 s of CPU for a 6.7 s job, 5.3 s of it system time), taking that
core from whatever ran beside it.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from kiln.render.vcpus import thread_pools_sized

from .conftest import run_worker


def test_a_one_vcpu_render_burns_about_one_cpu(pottery: Path, tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here: a second core cannot be burnt, so there is nothing to check")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = run_worker("render", "-i", str(pottery), "-o", str(tmp_path / "out"), "-f", "2",
                     "--resolution-percent", "10", "--samples", "4", env={"KILN_VCPUS": "1"})  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run.returncode == 0, run.stderr
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    # One busy thread, plus a little for Python and the kernel: far from the two cores it took.
    assert user + system <= 1.3 * wall, f"user {user:.1f} s, system {system:.1f} s in {wall:.1f} s"
    assert system <= 0.25 * wall, f"system {system:.1f} s in {wall:.1f} s: threads spinning?"


def test_the_process_may_use_every_cpu_again_after_loading() -> None:
    allowed = os.sched_getaffinity(0)
    with thread_pools_sized(1):
        assert len(os.sched_getaffinity(0)) == 1
        assert os.sched_getaffinity(0) <= allowed
    assert os.sched_getaffinity(0) == allowed
    with thread_pools_sized(len(allowed)):  # enough CPUs already: nothing changes
        assert os.sched_getaffinity(0) == allowed
