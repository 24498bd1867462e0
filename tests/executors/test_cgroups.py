"""Cgroup detection and per-attempt groups: parsing on samples, limits read back from the kernel."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kiln.executors.cgroup_pool import POOL_PREFIX
from kiln.executors.cgroups import (
    MEMORY_WATCHDOG,
    MIB,
    AttemptCgroups,
    CgroupSupport,
    attempt_group_name,
    cfs_quota_us,
    cpu_shares,
    detect_cgroups,
    own_cgroup_dir,
    parse_proc_cgroup,
)
from kiln.executors.local import LocalExecutor
from kiln.mountinfo import parse_mountinfo

from .helpers import SpecFactory, exited, is_gone, wait_for_cgroups, wait_for_exit, wait_for_log

pytestmark = pytest.mark.timeout(30)

PROC_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
"""
MOUNTINFO = """\
30 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
32 25 0:29 /process_api /sys/fs/cgroup/my\\040memory rw,relatime shared:11 - cgroup cgroup rw,memory
33 25 0:30 / /proc rw,relatime shared:12 - proc proc rw
"""


def test_parse_proc_cgroup_splits_joined_controllers() -> None:
    own = parse_proc_cgroup(PROC_CGROUP)
    assert own["memory"] == "/process_api/abc"
    assert own["cpu"] == own["cpuacct"] == "/"
    assert own[""] == "/"
    assert own["name=systemd"] == "/"


def test_parse_mountinfo_finds_v1_and_v2_mounts() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[""] == (Path("/sys/fs/cgroup/unified"), "/")
    assert mounts["cpu"] == (Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert mounts["memory"] == (Path("/sys/fs/cgroup/my memory"), "/process_api")
    assert "proc" not in mounts


def test_own_cgroup_dir_strips_the_mount_root(tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    mounts = {"memory": (tmp_path, "/process_api")}  # e.g. inside a container's cgroup namespace
    assert own_cgroup_dir("memory", {"memory": "/process_api/abc"}, mounts) == tmp_path / "abc"
    assert own_cgroup_dir("memory", {"memory": "/elsewhere"}, mounts) is None
    assert own_cgroup_dir("cpu", {"memory": "/process_api/abc"}, mounts) is None


def test_detection_without_proc_explains_the_fallback(tmp_path: Path) -> None:
    support = detect_cgroups(proc_self=tmp_path / "missing")
    assert support.memory_mechanism == MEMORY_WATCHDOG
    assert support.notes and "no cgroup information" in support.notes[0]


def test_disabled_detection_uses_every_fallback() -> None:
    support = detect_cgroups(enabled=False)
    assert (support.memory_parent, support.cpu_parent, support.tracking_parent) == (None, None, None)
    assert support.notes == ("cgroups disabled by configuration",)


def test_cpu_arithmetic() -> None:
    assert cpu_shares(2) == 2048
    assert cpu_shares(0.25) == 256
    assert cpu_shares(0.0001) == 2
    assert cfs_quota_us(1.5, 100_000) == 150_000
    assert cfs_quota_us(0.001, 100_000) == 1000


def test_group_names_are_path_safe() -> None:
    assert attempt_group_name("abc-123_x.y") == "kiln-abc-123_x.y"
    assert attempt_group_name("../../etc") == "kiln-.._.._etc"


def test_groups_that_cannot_be_created_degrade(tmp_path: Path) -> None:
    missing = tmp_path / "not-a-cgroup" / "deeper"
    support = CgroupSupport(memory_parent=missing, cpu_parent=missing, tracking_parent=missing)
    groups = AttemptCgroups.create(support, "a1", memory_mib=10, vcpus=1, cpu_hard_cap=True)
    assert groups.paths() == []
    assert not groups.tracks_processes
    assert groups.pids() == set()
    assert groups.oom_kills() == 0
    assert groups.remove()


@pytest.fixture
def support() -> CgroupSupport:
    return detect_cgroups()


def test_memory_group_limits_and_removal(support: CgroupSupport) -> None:
    if support.memory_parent is None:
        pytest.skip(f"no writable memory cgroup here: {support.notes}")
    groups = AttemptCgroups.create(support, f"t-{time.monotonic_ns()}", memory_mib=100, vcpus=1, cpu_hard_cap=False)
    assert groups.memory is not None
    try:
        assert int((groups.memory / "memory.limit_in_bytes").read_text()) == 100 * MIB
        memsw = groups.memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 100 * MIB
        assert groups.oom_kills() == 0
    finally:
        assert groups.remove()
    assert groups.memory is not None and not groups.memory.exists()


def test_cpu_shares_and_quota_are_written(cgroup_executor: LocalExecutor, make_spec: SpecFactory) -> None:
    if cgroup_executor.cgroup_support.cpu_parent is None:
        pytest.skip(f"cpu controller not writable here: {cgroup_executor.cgroup_support.notes}")
    spec = make_spec(["sleep", "5"], vcpus=2, cpu_hard_cap=True)
    cgroup_executor.start(spec)
    groups = wait_for_cgroups(cgroup_executor, spec.attempt_id)
    assert groups.cpu is not None

    assert (groups.cpu / "cpu.shares").read_text().strip() == "2048"
    period = int((groups.cpu / "cpu.cfs_period_us").read_text())
    assert int((groups.cpu / "cpu.cfs_quota_us").read_text()) == 2 * period

    cgroup_executor.terminate(spec.attempt_id, "done")
    wait_for_exit(cgroup_executor, spec.attempt_id)
    assert not (groups.cpu / "cgroup.procs").read_text().split()  # an empty spare for the same limits
    cgroup_executor.shutdown(grace_seconds=0.2)
    assert not groups.cpu.exists()  # spares go with the executor


def test_soft_cpu_limit_sets_no_quota(cgroup_executor: LocalExecutor, make_spec: SpecFactory) -> None:
    if cgroup_executor.cgroup_support.cpu_parent is None:
        pytest.skip(f"cpu controller not writable here: {cgroup_executor.cgroup_support.notes}")
    spec = make_spec(["sleep", "5"], vcpus=0.5)
    cgroup_executor.start(spec)
    groups = wait_for_cgroups(cgroup_executor, spec.attempt_id)
    assert groups.cpu is not None
    assert (groups.cpu / "cpu.shares").read_text().strip() == "512"
    assert (groups.cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    cgroup_executor.terminate(spec.attempt_id, "done")
    wait_for_exit(cgroup_executor, spec.attempt_id)


def test_job_runs_inside_its_groups(cgroup_executor: LocalExecutor, make_spec: SpecFactory) -> None:
    support = cgroup_executor.cgroup_support
    if support.memory_parent is None or support.tracking_parent is None:
        pytest.skip(f"memory or cgroup2 groups not usable here: {support.notes}")
    spec = make_spec(["sh", "-c", "cat /proc/self/cgroup; sleep 5"], memory_mib=64)
    cgroup_executor.start(spec)
    wait_for_log(spec.log_path, "memory:")
    groups = cgroup_executor.attempt_cgroups(spec.attempt_id)
    assert groups is not None
    own = parse_proc_cgroup(spec.log_path.read_text())
    assert groups.memory is not None and groups.tracking is not None
    assert groups.memory.name == groups.tracking.name and groups.memory.name.startswith(POOL_PREFIX)
    assert own["memory"].endswith(f"/{groups.memory.name}") and own[""].endswith(f"/{groups.tracking.name}")
    assert groups.pids(), "the job is listed in its groups"
    cgroup_executor.terminate(spec.attempt_id, "done")
    wait_for_exit(cgroup_executor, spec.attempt_id)
    # Its groups are spares now (or gone): empty either way.
    for group in (groups.memory, groups.tracking):
        assert not group.exists() or not (group / "cgroup.procs").read_text().split()


def test_cgroups_catch_an_instant_setsid_escapee(cgroup_executor: LocalExecutor, make_spec: SpecFactory) -> None:
    support = cgroup_executor.cgroup_support
    if not (support.tracking_parent or support.memory_parent):
        pytest.skip(f"no usable cgroup here: {support.notes}")
    spec = make_spec(["sh", "-c", 'setsid sleep 1000 & echo "escapee=$!"'])
    cgroup_executor.start(spec)
    event = exited(wait_for_exit(cgroup_executor, spec.attempt_id))
    escapee = int(wait_for_log(spec.log_path, r"escapee=(\d+)").group(1))
    assert event.exit_code == 0
    assert is_gone(escapee)


MOVER = """\
import os, sys, time
for procs in sys.argv[2:]:  # memory and cpu first, the cgroup2 tracking group last
    with open(procs, "w") as group:
        group.write(str(os.getpid()))
with open(sys.argv[1] + ".tmp", "w") as marker:
    marker.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def test_a_process_that_moves_itself_out_of_the_groups_has_left_the_attempt(
    cgroup_executor: LocalExecutor, make_spec: SpecFactory, tmp_path: Path
) -> None:
    """As with a container: the groups are the attempt. (The render zygote's warm processes leave a
    finished job this way; a plain `setsid` cannot leave, see above.)"""
    support = cgroup_executor.cgroup_support
    if support.tracking_parent is None:
        pytest.skip(f"no cgroup2 tracking group here: {support.notes}")
    parents = [path for path in (support.memory_parent, support.cpu_parent, support.tracking_parent) if path]
    script, marker = tmp_path / "mover.py", tmp_path / "moved"
    script.write_text(MOVER)
    procs = " ".join(str(parent / "cgroup.procs") for parent in parents)
    command = f'"{sys.executable}" {script} {marker} {procs} & while [ ! -e {marker} ]; do sleep 0.02; done'
    spec = make_spec(["sh", "-c", command])
    cgroup_executor.start(spec)
    event = exited(wait_for_exit(cgroup_executor, spec.attempt_id))
    mover = int(marker.read_text())
    try:
        assert event.exit_code == 0
        assert not is_gone(mover), "a process that left the attempt's groups is no longer the attempt's"
    finally:
        os.kill(mover, signal.SIGKILL)
