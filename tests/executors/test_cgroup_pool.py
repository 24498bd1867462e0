"""The cgroup pool: configured groups reused under their pool name, only when clean, never across limits."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.executors.cgroup_pool import LEGACY_PREFIXES, POOL_PREFIX, REUSE_MAX_CHARGED_BYTES, CgroupPool
from kiln.executors.cgroups import MIB, AttemptCgroups, CgroupSupport, detect_cgroups
from kiln.executors.local import LocalExecutor

from .helpers import PYTHON, SpecFactory, exited, is_gone, wait_for_cgroups, wait_for_exit

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def support() -> CgroupSupport:
    found = detect_cgroups()
    if found.memory_parent is None or found.cpu_parent is None:
        pytest.skip(f"cgroup v1 memory and cpu groups are not writable on this host: {found.notes}")
    return found


@pytest.fixture
def pool(support: CgroupSupport) -> Iterator[CgroupPool]:
    made = CgroupPool(support)
    yield made
    made.close()


def _groups(support: CgroupSupport) -> set[str]:
    """This process's pool groups under the memory parent, in use or spare."""
    assert support.memory_parent is not None
    return {name for name in os.listdir(support.memory_parent) if name.startswith(f"{POOL_PREFIX}{os.getpid()}-")}


def _open_control_files(names: set[str]) -> list[str]:
    """Files of the groups called `names` that this process still has open (other tests' executors
    in this process may hold their own)."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{descriptor}")
            if any(f"/{name}/" in target for name in names):
                found.append(target)
    return found


def _join_and_run(groups_files: list[str], script: str) -> None:
    """Run `script` in a shell that first joins the groups (as the executor's wrapper does)."""
    joins = "; ".join(f'echo $$ > "{path}"' for path in groups_files)
    subprocess.run(["sh", "-c", f"{joins}; {script}"], check=True)


def test_an_emptied_group_is_reused_by_the_next_attempt_under_its_pool_name(
    pool: CgroupPool, support: CgroupSupport
) -> None:
    first = pool.acquire("a-1", memory_mib=64, vcpus=2, cpu_hard_cap=False)
    assert first.memory is not None and first.cpu is not None
    name = first.memory.name
    assert name.startswith(f"{POOL_PREFIX}{os.getpid()}-") and first.cpu.name == name
    assert first.tracking is None or first.tracking.name == name  # one name for all of an attempt's groups
    inode = first.memory.stat().st_ino
    _join_and_run(first.procs_files(), "true")
    assert pool.release("a-1", first)
    assert _groups(support) == {name}  # kept as a spare, under the same name

    second = pool.acquire("a-2", memory_mib=64, vcpus=2, cpu_hard_cap=False)
    assert (second.memory, second.cpu, second.tracking) == (first.memory, first.cpu, first.tracking)
    assert second.memory is not None and second.cpu is not None
    assert second.memory.stat().st_ino == inode  # the same group: no mkdir, no rename
    assert int((second.memory / "memory.limit_in_bytes").read_text()) == 64 * MIB
    assert (second.cpu / "cpu.shares").read_text().strip() == "2048"
    assert second.oom_kills() == 0
    assert pool.release("a-2", second)


def test_other_limits_get_their_own_groups(pool: CgroupPool, support: CgroupSupport) -> None:
    small = pool.acquire("s-1", memory_mib=32, vcpus=1, cpu_hard_cap=False)
    assert pool.release("s-1", small)
    big = pool.acquire("b-1", memory_mib=128, vcpus=1, cpu_hard_cap=False)
    assert big.memory is not None and small.memory is not None
    assert big.memory != small.memory
    assert int((big.memory / "memory.limit_in_bytes").read_text()) == 128 * MIB
    assert _groups(support) == {small.memory.name, big.memory.name}  # the 32 MiB spare waits for its kind
    assert pool.release("b-1", big)


def test_a_group_removed_behind_the_pools_back_is_not_handed_out_again(pool: CgroupPool) -> None:
    groups = pool.acquire("gone-1", memory_mib=16, vcpus=1, cpu_hard_cap=False)
    assert groups.memory is not None
    for path in groups.paths():
        path.rmdir()
    assert pool.release("gone-1", groups)  # nothing left to remove
    fresh = pool.acquire("gone-2", memory_mib=16, vcpus=1, cpu_hard_cap=False)
    assert fresh.memory is not None and fresh.memory.is_dir() and fresh.memory != groups.memory
    assert pool.release("gone-2", fresh)


def test_a_group_still_charged_with_memory_is_removed_not_reused(pool: CgroupPool, support: CgroupSupport) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm (tmpfs) on this host to leave memory charged to a group")
    groups = pool.acquire("shm-1", memory_mib=256, vcpus=1, cpu_hard_cap=False)
    leftover = Path("/dev/shm") / f"kiln-test-{os.getpid()}-leftover"
    size = 2 * REUSE_MAX_CHARGED_BYTES
    try:
        _join_and_run(groups.procs_files(), f"head -c {size} /dev/zero > {leftover}")  # tmpfs pages stay charged
        assert groups.memory is not None
        assert int((groups.memory / "memory.usage_in_bytes").read_text()) > REUSE_MAX_CHARGED_BYTES
        assert pool.release("shm-1", groups)
        assert _groups(support) == set()
        assert not groups.memory.exists()
    finally:
        leftover.unlink(missing_ok=True)


def test_spares_of_a_dead_executor_are_removed_by_the_next(support: CgroupSupport) -> None:
    script = (
        "from kiln.executors.cgroup_pool import CgroupPool\n"
        "from kiln.executors.cgroups import detect_cgroups\n"
        "import os\n"
        "pool = CgroupPool(detect_cgroups())\n"
        "groups = pool.acquire('dead-1', memory_mib=16, vcpus=1, cpu_hard_cap=False)\n"
        "pool.release('dead-1', groups)\n"
        "print(os.getpid())\n"
        "os._exit(0)  # dies without closing its pool\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    dead = done.stdout.strip()
    assert support.memory_parent is not None
    left = [name for name in os.listdir(support.memory_parent) if name.startswith(f"{POOL_PREFIX}{dead}-")]
    assert len(left) == 1, done.stderr
    CgroupPool(support).close()
    assert not (support.memory_parent / left[0]).exists()


def test_a_dead_executors_tracking_group_is_removed_with_what_it_still_holds(support: CgroupSupport) -> None:
    """A supervisor killed mid-attempt leaves that attempt's processes in its pool-named groups:
    the next executor's pool kills them and removes the groups."""
    if support.tracking_parent is None:
        pytest.skip(f"no cgroup2 group usable here: {support.notes}")
    script = (
        "from kiln.executors.cgroup_pool import CgroupPool\n"
        "from kiln.executors.cgroups import detect_cgroups\n"
        "import os, subprocess\n"
        "pool = CgroupPool(detect_cgroups())\n"
        "groups = pool.acquire('lost-1', memory_mib=16, vcpus=1, cpu_hard_cap=False)\n"
        "joins = '; '.join(f'echo $$ > {path}' for path in groups.procs_files())\n"
        "child = subprocess.Popen(['sh', '-c', f'{joins}; exec sleep 300'], start_new_session=True,\n"
        "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(groups.tracking, child.pid, flush=True)\n"
        "os._exit(0)  # dies mid-attempt, its child left running\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    tracking_path, pid = done.stdout.split()
    tracking = Path(tracking_path)
    assert tracking.name.startswith(POOL_PREFIX) and tracking.is_dir(), done.stderr
    deadline = time.monotonic() + 10
    while int(pid) not in {int(p) for p in (tracking / "cgroup.procs").read_text().split()}:
        assert time.monotonic() < deadline, "the orphan never joined its group"
        time.sleep(0.02)
    try:
        CgroupPool(support).close()
        assert not tracking.exists()
        assert is_gone(int(pid))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


def test_array_like_attempts_reuse_groups_and_leave_none_behind(
    support: CgroupSupport, cgroup_executor: LocalExecutor, make_spec: SpecFactory
) -> None:
    executor = cgroup_executor
    inodes: set[int] = set()
    names: set[str] = set()
    for index in range(5):
        spec = make_spec(["sh", "-c", "cat /proc/self/cgroup; sleep 0.3"], memory_mib=48)
        executor.start(spec)
        groups = wait_for_cgroups(executor, spec.attempt_id)
        assert groups.memory is not None
        inodes.add(groups.memory.stat().st_ino)
        names.update(path.name for path in groups.paths())
        assert exited(wait_for_exit(executor, spec.attempt_id)).exit_code == 0, index
        assert f"/{groups.memory.name}" in spec.log_path.read_text()  # the job ran in it
    assert len(inodes) == 1  # one attempt at a time: every one reused the first one's group
    executor.shutdown(grace_seconds=0.2)
    assert _groups(support) == set()
    assert names and not _open_control_files(names), "the control files kept open were closed with their groups"
    if support.tracking_parent is not None:
        mine = f"{POOL_PREFIX}{os.getpid()}-"
        assert not [name for name in os.listdir(support.tracking_parent) if name.startswith(mine)]


def test_an_attempt_after_one_killed_for_memory_in_the_same_group_is_not_reported_oom(
    support: CgroupSupport, cgroup_executor: LocalExecutor, make_spec: SpecFactory
) -> None:
    """The group an OOM-killed attempt leaves is reused; its old `oom_kill` count is the next
    attempt's baseline (read again, as the killed attempt's checks stopped reading it)."""
    hog = make_spec([PYTHON, "-c", "b = bytearray(96 * 1024 * 1024); print(len(b))"], memory_mib=32)
    cgroup_executor.start(hog)
    hog_groups = wait_for_cgroups(cgroup_executor, hog.attempt_id)
    assert hog_groups.memory is not None
    inode = hog_groups.memory.stat().st_ino
    assert exited(wait_for_exit(cgroup_executor, hog.attempt_id)).oom
    for index in range(3):  # the first reuses the hog's group; the others a group whose count was carried
        quiet = make_spec(["sh", "-c", "sleep 0.2"], memory_mib=32)
        cgroup_executor.start(quiet)
        groups = wait_for_cgroups(cgroup_executor, quiet.attempt_id)
        assert groups.memory is not None and groups.memory.stat().st_ino == inode, index
        ended = exited(wait_for_exit(cgroup_executor, quiet.attempt_id))
        assert (ended.exit_code, ended.oom) == (0, False), index


def test_groups_an_older_kiln_left_behind_are_removed_too(support: CgroupSupport) -> None:
    """Before pool names were for life, spares were `kiln-free-<pid>-...`: a dead owner's go as well."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert support.memory_parent is not None
    legacy = support.memory_parent / f"{LEGACY_PREFIXES[0]}{ended.stdout.strip()}-0"
    legacy.mkdir()
    try:
        CgroupPool(support).close()
        assert not legacy.exists()
    finally:
        AttemptCgroups(memory=legacy).remove()


def test_a_cgroup2_only_host_pools_its_tracking_groups_too() -> None:
    """A host whose controllers are all on cgroup v2 but not delegated to us (memory and cpu then
    fall back to the watchdog) still tracks every attempt in a cgroup2 group, reused like the rest."""
    found = detect_cgroups()
    if found.tracking_parent is None:
        pytest.skip(f"no writable cgroup2 group here: {found.notes}")
    pool = CgroupPool(CgroupSupport(tracking_parent=found.tracking_parent))
    try:
        first = pool.acquire("v2-1", memory_mib=16, vcpus=1, cpu_hard_cap=False)
        assert first.tracking is not None and (first.memory, first.cpu) == (None, None)
        assert first.tracking.name.startswith(f"{POOL_PREFIX}{os.getpid()}-")
        _join_and_run(first.procs_files(), "true")
        assert pool.release("v2-1", first)
        second = pool.acquire("v2-2", memory_mib=16, vcpus=1, cpu_hard_cap=False)
        assert second.tracking == first.tracking  # the same group, no mkdir
        child = subprocess.Popen(["sh", "-c", f'echo $$ > "{second.procs_files()[0]}"; exec sleep 5'])
        try:
            deadline = time.monotonic() + 5
            while child.pid not in second.pids():
                assert time.monotonic() < deadline, "the job never showed up in its group"
                time.sleep(0.02)
            assert not pool.release("v2-2", second) or not second.tracking.exists()  # busy: killed and removed
            assert child.wait(timeout=5) == -9
        finally:
            child.kill()
            child.wait()
    finally:
        pool.close()


def test_a_start_that_fails_in_a_spare_removed_behind_our_back_does_not_poison_the_pool(
    support: CgroupSupport, cgroup_executor: LocalExecutor, make_spec: SpecFactory
) -> None:
    first = make_spec(["sh", "-c", "sleep 0.3"], memory_mib=40)
    cgroup_executor.start(first)
    groups = wait_for_cgroups(cgroup_executor, first.attempt_id)
    assert exited(wait_for_exit(cgroup_executor, first.attempt_id)).exit_code == 0
    assert groups.cpu is not None and groups.cpu.is_dir()  # a spare now
    groups.cpu.rmdir()  # someone else's doing
    broken = make_spec(["true"], memory_mib=40)
    cgroup_executor.start(broken)
    failed = exited(wait_for_exit(cgroup_executor, broken.attempt_id))
    assert (failed.started, failed.reason is not None and "cgroup.procs" in failed.reason) == (False, True)
    after = make_spec(["true"], memory_mib=40)  # the same limits: new groups, not the broken spare
    cgroup_executor.start(after)
    assert exited(wait_for_exit(cgroup_executor, after.attempt_id)).exit_code == 0
