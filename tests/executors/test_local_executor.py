"""The local executor against real processes, with cgroups and with the forced fallbacks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.executors.base import (
    ESSENTIAL_CONTAINER_EXITED,
    OOM_EXIT_CODE,
    OOM_REASON,
    TASK_FAILED_TO_START,
    TIMEOUT_STATUS_REASON,
    AttemptExited,
    AttemptRunning,
    Executor,
)
from kiln.executors.images import ImageCatalogue
from kiln.executors.local import SHUTDOWN_REASON, LocalExecutor

from .helpers import PYTHON, SpecFactory, exited, is_gone, wait_for_exit, wait_for_log

pytestmark = pytest.mark.timeout(30)

# Allocates 300 MiB in touched 10 MiB steps, then lingers so a polling watchdog sees it too.
ALLOCATE_300_MIB = (
    "import time\nchunks = []\nfor _ in range(30):\n    chunks.append(b'x' * (10 << 20))\n"
    "    time.sleep(0.01)\ntime.sleep(30)\n"
)
IGNORE_SIGTERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)


def test_local_executor_is_an_executor(settings: Settings) -> None:
    executor: Executor = LocalExecutor(settings, use_cgroups=False)
    executor.shutdown()


def test_success_logs_env_cwd_and_cleans_workdir(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(
        ["sh", "-c", 'echo "out $GREETING"; echo "err $PATH" >&2; pwd'],
        environment={"GREETING": "hello kiln"},
    )
    executor.start(spec)
    events = wait_for_exit(executor, spec.attempt_id)

    assert isinstance(events[0], AttemptRunning)
    assert exited(events) == AttemptExited(
        spec.attempt_id, exited(events).at_ms, exit_code=0, status_reason=ESSENTIAL_CONTAINER_EXITED
    )
    log = spec.log_path.read_text().splitlines()
    assert "out hello kiln" in log
    assert f"err {os.environ['PATH']}" in log  # the server's environment is inherited
    assert str(spec.workdir) in log
    assert not spec.workdir.exists()
    assert spec.attempt_id not in executor.running()


def test_timestamps_are_epoch_milliseconds(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    before = int(time.time() * 1000)
    spec = make_spec(["true"])
    executor.start(spec)
    events = wait_for_exit(executor, spec.attempt_id)
    after = int(time.time() * 1000)
    assert all(before <= event.at_ms <= after for event in events)
    assert events[0].at_ms <= events[-1].at_ms


def test_log_is_appended_to(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["echo", "second"])
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("first\n")
    executor.start(spec)
    wait_for_exit(executor, spec.attempt_id)
    assert spec.log_path.read_text() == "first\nsecond\n"


def test_non_zero_exit_code_propagates(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["sh", "-c", "exit 42"])
    executor.start(spec)
    event = exited(wait_for_exit(executor, spec.attempt_id))
    assert (event.exit_code, event.status_reason, event.reason, event.oom) == (
        42,
        ESSENTIAL_CONTAINER_EXITED,
        None,
        False,
    )


def test_missing_program_fails_to_start_like_a_container(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["kiln-no-such-program", "--flag"])
    executor.start(spec)
    event = exited(wait_for_exit(executor, spec.attempt_id))
    assert (event.started, event.exit_code, event.status_reason) == (False, None, TASK_FAILED_TO_START)
    assert event.reason == (
        'CannotStartContainerError: exec: "kiln-no-such-program": executable file not found in $PATH'
    )
    assert not spec.workdir.exists()


def test_jobs_start_with_default_signals_and_nothing_blocked(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    """Like a fresh container: Python's ignored SIGPIPE (pytest's, the supervisor's) must not leak."""
    spec = make_spec(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    executor.start(spec)
    wait_for_exit(executor, spec.attempt_id)
    masks = dict(line.split(":") for line in spec.log_path.read_text().splitlines())
    standard = (1 << 31) - 1  # signals 1-31; glibc's posix_spawn may leave its own 32 and 33 ignored
    assert int(masks["SigBlk"], 16) == 0
    assert int(masks["SigIgn"], 16) & standard == 0


def test_a_failed_step_before_exec_fails_to_start(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["true"])
    spec.log_path.mkdir(parents=True)  # the log cannot be opened: a directory is in its place
    executor.start(spec)
    event = exited(wait_for_exit(executor, spec.attempt_id))
    assert (event.started, event.exit_code, event.status_reason) == (False, None, TASK_FAILED_TO_START)
    assert event.reason is not None
    assert event.reason.startswith("CannotStartContainerError: [Errno 21] Is a directory")
    assert str(spec.log_path) in event.reason
    assert not spec.workdir.exists()
    assert executor.running() == set()


def test_the_c_launcher_is_built_and_used(settings: Settings) -> None:
    """`make install` compiles it (gcc is part of this machine kind); without it every job pays a shell."""
    local = LocalExecutor(settings)
    try:
        assert "start: C launcher (vfork, no shell)" in local.describe()
    finally:
        local.shutdown()


def test_the_c_launcher_passes_no_stray_descriptor(cgroup_executor: LocalExecutor, make_spec: SpecFactory) -> None:
    """A descriptor the supervisor inherited without close-on-exec still never reaches a job."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        spec = make_spec(["ls", "/proc/self/fd"])
        cgroup_executor.start(spec)
        wait_for_exit(cgroup_executor, spec.attempt_id)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert sorted(spec.log_path.read_text().split()) == ["0", "1", "2", "3"]  # 3: ls's own listing


def test_signal_death_reports_128_plus_signal(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["sh", "-c", "kill -USR1 $$"])
    executor.start(spec)
    assert exited(wait_for_exit(executor, spec.attempt_id)).exit_code == 128 + 10


def test_image_entrypoint_is_prepended(settings: Settings, make_spec: SpecFactory) -> None:
    catalogue = ImageCatalogue({"tools/echo": ["sh", "-c", 'echo "entry $0 $1"']})
    executor = LocalExecutor(settings, catalogue, use_cgroups=False)
    try:
        spec = make_spec(["a", "b"], image="tools/echo:latest")
        executor.start(spec)
        assert exited(wait_for_exit(executor, spec.attempt_id)).exit_code == 0
        assert spec.log_path.read_text() == "entry a b\n"
    finally:
        executor.shutdown()


def test_unknown_image_fails_to_start(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["true"], image="example.com/team/render:v3")
    executor.start(spec)
    events = wait_for_exit(executor, spec.attempt_id, timeout=1)

    assert len(events) == 1
    event = exited(events)
    assert (event.started, event.exit_code, event.status_reason) == (False, None, TASK_FAILED_TO_START)
    assert event.reason is not None
    assert event.reason.startswith("CannotPullContainerError: ")
    assert "example.com/team/render:v3" in event.reason
    assert not spec.workdir.exists()
    assert executor.running() == set()


def test_empty_command_fails_to_start(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec([])
    executor.start(spec)
    event = exited(wait_for_exit(executor, spec.attempt_id, timeout=1))
    assert not event.started
    assert event.reason is not None and event.reason.startswith("CannotStartContainerError: ")


def test_out_of_memory_kills_the_whole_tree(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(
        ["sh", "-c", f'setsid sleep 1000 & echo "escapee=$!"; "{PYTHON}" -c "{ALLOCATE_300_MIB}"; exit 0'],
        memory_mib=100,
    )
    started = time.monotonic()
    executor.start(spec)
    escapee = int(wait_for_log(spec.log_path, r"escapee=(\d+)").group(1))
    event = exited(wait_for_exit(executor, spec.attempt_id))

    assert time.monotonic() - started < 10  # "within seconds"; generous for a loaded 2-core CI machine
    assert (event.oom, event.exit_code, event.reason) == (True, OOM_EXIT_CODE, OOM_REASON)
    assert event.status_reason == ESSENTIAL_CONTAINER_EXITED
    assert is_gone(escapee)


def test_main_exit_kills_leftover_processes(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    # The short sleep lets the fallback's 50 ms polling see the child before its parent exits.
    spec = make_spec(["sh", "-c", 'sleep 1000 & echo "child=$!"; setsid sleep 1000 & sleep 0.3'])
    executor.start(spec)
    child = int(wait_for_log(spec.log_path, r"child=(\d+)").group(1))
    event = exited(wait_for_exit(executor, spec.attempt_id))
    assert event.exit_code == 0
    assert is_gone(child)


def test_timeout_escalates_to_sigkill(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    # A shell ignores SIGTERM from its first instruction; 2 s leaves even a very loaded machine
    # time to reach that instruction before the timeout fires (a Python interpreter might not be up).
    spec = make_spec(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"], timeout_seconds=2)
    started = time.monotonic()
    executor.start(spec)
    wait_for_log(spec.log_path, "ready", timeout=2)
    event = exited(wait_for_exit(executor, spec.attempt_id, timeout=15))
    elapsed = time.monotonic() - started

    assert elapsed > 2.9, "SIGTERM at 2 s, SIGKILL only one grace second later"
    assert (event.timed_out, event.status_reason, event.exit_code) == (True, TIMEOUT_STATUS_REASON, 137)
    assert not event.oom and not event.terminated


def test_timeout_stops_a_cooperative_job_with_sigterm(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["sleep", "60"], timeout_seconds=1)
    started = time.monotonic()
    executor.start(spec)
    event = exited(wait_for_exit(executor, spec.attempt_id, timeout=15))
    assert time.monotonic() - started > 0.9
    assert (event.timed_out, event.exit_code) == (True, 143)  # 143: SIGTERM sufficed, no SIGKILL


def test_terminate_stops_the_whole_tree(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(
        ["sh", "-c", 'sleep 1000 & a=$!; setsid sleep 1000 & echo "pids=$a,$!"; wait'],
    )
    executor.start(spec)
    pids = [int(pid) for pid in wait_for_log(spec.log_path, r"pids=(\d+),(\d+)").groups()]
    time.sleep(0.1)  # let the fallback's polling see the tree
    assert spec.attempt_id in executor.running()

    executor.terminate(spec.attempt_id, "Terminated by the test")
    event = exited(wait_for_exit(executor, spec.attempt_id, timeout=15))

    assert (event.terminated, event.status_reason, event.exit_code) == (True, "Terminated by the test", 143)
    assert all(is_gone(pid) for pid in pids)
    assert not spec.workdir.exists()


def test_terminate_escalates_to_sigkill(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec([PYTHON, "-c", IGNORE_SIGTERM])
    executor.start(spec)
    wait_for_log(spec.log_path, "ready")
    started = time.monotonic()
    executor.terminate(spec.attempt_id, "stop")
    event = exited(wait_for_exit(executor, spec.attempt_id, timeout=15))
    assert time.monotonic() - started > 0.9  # SIGKILL only after the 1 s grace
    assert (event.terminated, event.exit_code) == (True, 137)


def test_terminate_right_after_start_stops_it_whether_or_not_it_began(
    executor: LocalExecutor, make_spec: SpecFactory
) -> None:
    """`start` only queues the process for the spawner: a terminate may find it not yet made."""
    specs = [make_spec(["sleep", "30"]) for _ in range(5)]
    for spec in specs:
        executor.start(spec)
    for spec in specs:
        executor.terminate(spec.attempt_id, "Terminated by the test")
    ends: dict[str, AttemptExited] = {}
    deadline = time.monotonic() + 20
    while len(ends) < len(specs) and time.monotonic() < deadline:
        ends.update({e.attempt_id: e for e in executor.poll() if isinstance(e, AttemptExited)})
        time.sleep(0.02)
    assert {(e.terminated, e.status_reason) for e in ends.values()} == {(True, "Terminated by the test")}
    assert sorted(ends) == sorted(spec.attempt_id for spec in specs)
    assert executor.running() == set()


def test_shutdown_right_after_start_leaves_nothing(settings: Settings, make_spec: SpecFactory) -> None:
    local = LocalExecutor(settings)
    spec = make_spec(["sleep", "30"])
    local.start(spec)
    local.shutdown(grace_seconds=0.2)
    assert local.running() == set()
    assert exited(wait_for_exit(local, spec.attempt_id)).terminated


def test_terminate_unknown_or_finished_is_ignored(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    executor.terminate("never-started", "whatever")
    spec = make_spec(["true"])
    executor.start(spec)
    wait_for_exit(executor, spec.attempt_id)
    executor.terminate(spec.attempt_id, "too late")
    time.sleep(0.1)
    assert executor.poll() == []


def test_duplicate_attempt_id_is_refused(executor: LocalExecutor, make_spec: SpecFactory) -> None:
    spec = make_spec(["sleep", "5"])
    executor.start(spec)
    with pytest.raises(ValueError, match="already running"):
        executor.start(spec)


def test_shutdown_stops_everything_and_reports_it(settings: Settings, make_spec: SpecFactory) -> None:
    executor = LocalExecutor(settings, use_cgroups=False)
    specs = [make_spec(["sleep", "60"]), make_spec([PYTHON, "-c", IGNORE_SIGTERM])]
    for spec in specs:
        executor.start(spec)
    wait_for_log(specs[1].log_path, "ready")

    started = time.monotonic()
    executor.shutdown(grace_seconds=0.3)
    assert time.monotonic() - started < 10
    assert executor.running() == set()
    finals = [event for event in executor.poll() if isinstance(event, AttemptExited)]
    assert sorted(event.attempt_id for event in finals) == sorted(spec.attempt_id for spec in specs)
    assert all(event.terminated and event.status_reason == SHUTDOWN_REASON for event in finals)

    executor.shutdown()  # a second call is harmless
    with pytest.raises(RuntimeError):
        executor.start(make_spec(["true"]))


def test_capacity_comes_from_settings(tmp_path: Path) -> None:
    executor = LocalExecutor(Settings(data_dir=tmp_path, host_vcpus=6, host_memory_mib=12345, gpus=3))
    capacity = executor.capacity()
    assert (capacity.vcpus, capacity.memory_mib, capacity.gpus) == (6, 12345, 3)
    assert any(note.startswith("memory: ") for note in capacity.notes)


def test_forced_fallback_reports_its_mechanisms(settings: Settings) -> None:
    executor = LocalExecutor(settings, use_cgroups=False)
    assert executor.cgroup_support.memory_parent is None
    assert executor.mechanisms()["memory"].startswith("psutil RSS watchdog")
    assert executor.mechanisms()["tracking"].startswith("process group")
