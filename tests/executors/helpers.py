"""Helpers for executor tests: bounded waits on real processes and their logs."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from kiln.executors.base import AttemptEvent, AttemptExited, AttemptSpec, Executor
from kiln.executors.cgroups import AttemptCgroups
from kiln.executors.local import LocalExecutor

PYTHON = sys.executable

SpecFactory = Callable[..., AttemptSpec]


def wait_for_exit(executor: Executor, attempt_id: str, timeout: float = 20.0) -> list[AttemptEvent]:
    """All events of `attempt_id` up to and including its `AttemptExited` (fails after `timeout`)."""
    events: list[AttemptEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += [event for event in executor.poll() if event.attempt_id == attempt_id]
        if events and isinstance(events[-1], AttemptExited):
            return events
        time.sleep(0.02)
    raise AssertionError(f"{attempt_id} did not exit within {timeout}s; events so far: {events}")


def wait_for_cgroups(executor: LocalExecutor, attempt_id: str, timeout: float = 5.0) -> AttemptCgroups:
    """The groups of an attempt once its process exists (`start` hands it to the spawner thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (groups := executor.attempt_cgroups(attempt_id)) is not None:
            return groups
        time.sleep(0.01)
    raise AssertionError(f"{attempt_id} has no process within {timeout}s")


def exited(events: list[AttemptEvent]) -> AttemptExited:
    last = events[-1]
    assert isinstance(last, AttemptExited)
    return last


def wait_for_log(path: Path, pattern: str, timeout: float = 5.0) -> re.Match[str]:
    """Wait until the attempt's log shows `pattern` (how tests learn pids the job started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (match := re.search(pattern, path.read_text())):
            return match
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} not in {path} within {timeout}s")


def is_gone(pid: int) -> bool:
    """Exited (a zombie nobody reaps counts: it runs nothing and holds no memory)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
