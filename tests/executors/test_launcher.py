"""The C launcher's thread and the `driven` executor the attempt supervisor runs: starts that do not
wait for the job's exec, reported in order, failures named, no Python thread of its own."""

from __future__ import annotations

import os
import select
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.executors import local
from kiln.executors.base import AttemptEvent, AttemptExited, AttemptRunning
from kiln.executors.local import LocalExecutor
from kiln.executors.log_files import FREE_PREFIX, LogFilePool

from .helpers import SpecFactory, exited

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(local.native_spawn is None, reason="the C launcher was not built (no C compiler at install)"),
]


@pytest.fixture
def driven(settings: Settings) -> Iterator[LocalExecutor]:
    executor = LocalExecutor(settings, driven=True)
    yield executor
    executor.shutdown(grace_seconds=0.2)


def drive_until_exit(executor: LocalExecutor, attempt_id: str, timeout: float = 20.0) -> list[AttemptEvent]:
    """Be the owner's loop (as the supervisor is) until `attempt_id` has exited; its events."""
    events: list[AttemptEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = executor.seconds_to_next_pass()
        select.select([executor.fileno()], [], [], 0.05 if due is None else min(due, 0.05))
        executor.service()
        events += [event for event in executor.poll() if event.attempt_id == attempt_id]
        if events and isinstance(events[-1], AttemptExited):
            return events
    raise AssertionError(f"{attempt_id} did not exit within {timeout}s; events so far: {events}")


def test_a_driven_executor_runs_attempts_without_a_python_thread_of_its_own(
    driven: LocalExecutor, make_spec: SpecFactory
) -> None:
    before = set(threading.enumerate())
    for code in (0, 3, 7):
        spec = make_spec(["sh", "-c", f"echo run-{code}; exit {code}"])
        driven.start(spec)
        events = drive_until_exit(driven, spec.attempt_id)
        assert [type(event) for event in events] == [AttemptRunning, AttemptExited]
        assert exited(events).exit_code == code
        assert spec.log_path.read_text() == f"run-{code}\n"
    assert set(threading.enumerate()) == before, "no Python thread was started"
    assert driven.running() == set()


def test_a_step_failing_on_the_launcher_thread_fails_the_start_and_frees_its_place(
    driven: LocalExecutor, make_spec: SpecFactory, tmp_path: Path
) -> None:
    program = tmp_path / "job.sh"
    program.write_text("#!/bin/sh\necho ok\n")
    program.chmod(0o755)
    first = make_spec([str(program)])
    driven.start(first)
    assert exited(drive_until_exit(driven, first.attempt_id)).exit_code == 0
    # The executor remembers where it found the program; the exec itself now fails in the child.
    program.chmod(stat.S_IRUSR)
    second = make_spec([str(program)])
    driven.start(second)
    events = drive_until_exit(driven, second.attempt_id)
    assert [type(event) for event in events] == [AttemptExited], "it never ran"
    ended = exited(events)
    assert not ended.started and ended.exit_code is None
    assert ended.reason is not None and ended.reason.startswith("CannotStartContainerError: ")
    assert str(program) in ended.reason and "Permission denied" in ended.reason
    program.chmod(0o755)
    third = make_spec([str(program)])
    driven.start(third)
    assert exited(drive_until_exit(driven, third.attempt_id)).exit_code == 0
    assert driven.running() == set()


def test_an_attempt_terminated_before_the_launcher_reports_it_is_stopped(
    driven: LocalExecutor, make_spec: SpecFactory
) -> None:
    spec = make_spec(["sleep", "30"])
    driven.start(spec)
    driven.terminate(spec.attempt_id, "Cancelled by the test")  # before any `service()` saw it start
    started = time.monotonic()
    ended = exited(drive_until_exit(driven, spec.attempt_id))
    assert time.monotonic() - started < 10
    assert ended.terminated and ended.status_reason == "Cancelled by the test"


def test_the_launcher_reports_in_order_and_names_the_step_that_failed(tmp_path: Path) -> None:
    assert local.native_spawn is not None
    launcher = local.native_spawn.Launcher()
    log = os.fsencode(tmp_path / "log")
    environment = [b"PATH=/usr/bin:/bin"]
    missing_group = os.fsencode(tmp_path / "no-such-group" / "cgroup.procs")
    launcher.submit("ok", b"/bin/sh", [b"sh", b"-c", b"exit 4"], environment, os.fsencode(tmp_path), log, [])
    launcher.submit("group", b"/bin/true", [b"true"], environment, os.fsencode(tmp_path), log, [missing_group])
    launcher.submit("cwd", b"/bin/true", [b"true"], environment, os.fsencode(tmp_path / "gone"), log, [])
    launcher.submit("exec", os.fsencode(tmp_path / "absent"), [b"absent"], environment, os.fsencode(tmp_path), log, [])
    outcomes: list[tuple[str, int, int, OSError | None]] = []
    deadline = time.monotonic() + 10
    while len(outcomes) < 4 and time.monotonic() < deadline:
        select.select([launcher.fileno()], [], [], 0.5)
        outcomes += launcher.collect()
    launcher.close()
    assert [token for token, *_ in outcomes] == ["ok", "group", "cwd", "exec"]
    _, pid, pidfd, error = outcomes[0]
    assert error is None and pid > 0 and pidfd >= 0
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 4
    os.close(pidfd)
    failures = {token: error for token, pid, _, error in outcomes[1:] if pid == -1}
    assert {token: (type(error), error.filename) for token, error in failures.items() if error} == {
        "group": (FileNotFoundError, os.fsdecode(missing_group)),
        "cwd": (FileNotFoundError, str(tmp_path / "gone")),
        "exec": (FileNotFoundError, str(tmp_path / "absent")),
    }
    with pytest.raises(RuntimeError, match="closed"):
        launcher.submit("late", b"/bin/true", [b"true"], environment, os.fsencode(tmp_path), log, [])


def test_an_empty_log_is_recycled_for_the_next_attempt_and_a_written_one_stays(
    driven: LocalExecutor, make_spec: SpecFactory
) -> None:
    quiet = make_spec(["true"])
    driven.start(quiet)
    assert exited(drive_until_exit(driven, quiet.attempt_id)).exit_code == 0
    assert not quiet.log_path.exists(), "an empty stream needs no file (it reads as empty)"
    [spare] = [p for p in quiet.log_path.parent.iterdir() if p.name.startswith(FREE_PREFIX)]
    inode = spare.stat().st_ino
    talker = make_spec(["sh", "-c", "echo said"])
    driven.start(talker)
    assert exited(drive_until_exit(driven, talker.attempt_id)).exit_code == 0
    assert talker.log_path.read_text() == "said\n"
    assert talker.log_path.stat().st_ino == inode, "the spare's inode took the next log"
    assert not spare.exists()
    after = make_spec(["true"])  # no spare left: a file of its own
    driven.start(after)
    assert exited(drive_until_exit(driven, after.attempt_id)).exit_code == 0
    assert talker.log_path.read_text() == "said\n", "a log with output is never recycled"
    driven.shutdown(grace_seconds=0.2)
    assert not [p for p in quiet.log_path.parent.iterdir() if p.name.startswith(FREE_PREFIX)], "spares removed"


def test_the_log_pool_never_replaces_a_file_and_keeps_only_plain_empty_logs(tmp_path: Path) -> None:
    pool = LogFilePool()
    empty, written, shared = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    for path in (empty, written, shared):
        path.touch(mode=0o600)
        path.chmod(0o600)
    written.write_text("x")
    shared.chmod(0o644)
    for path in (empty, written, shared):
        pool.release(path)
    assert not empty.exists() and written.exists() and shared.exists()
    occupied = tmp_path / "d.log"
    occupied.write_text("mine")
    pool.claim(occupied)
    assert occupied.read_text() == "mine", "an existing file is never replaced"
    fresh = tmp_path / "e.log"
    pool.claim(fresh)
    assert fresh.exists() and fresh.stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(FREE_PREFIX)] == []
    pool.close()


def test_spares_of_a_dead_executor_are_removed_when_their_directory_is_used(tmp_path: Path) -> None:
    orphan = tmp_path / f"{FREE_PREFIX}{_a_dead_pid()}-abc.log"
    orphan.touch()
    mine = tmp_path / f"{FREE_PREFIX}{os.getpid()}-abc.log"
    mine.touch()
    pool = LogFilePool()
    pool.claim(tmp_path / "next.log")
    assert not orphan.exists()
    assert mine.exists(), "a live owner's spares are its own"


def _a_dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
