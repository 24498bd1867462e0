"""Shared pieces for executor tests: real executors, real processes, bounded waits."""

from __future__ import annotations

import itertools
import selectors
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.config import Settings
from kiln.executors.base import AttemptSpec
from kiln.executors.local import LocalExecutor

from .helpers import SpecFactory

_ids = itertools.count()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Jobs run as root here, on purpose: these tests are about the mechanisms (cgroups, OOM,
    timeouts, logs), their jobs run this interpreter (under /root, 0700, on the test machines) and
    write into pytest's private temp dirs. test_job_users.py covers the default, unprivileged user."""
    return Settings(data_dir=tmp_path / "data", termination_grace_seconds=1.0, host_vcpus=2, job_user="root")


@pytest.fixture(params=["cgroups", "fallback", "shell-launcher", "driven"])
def executor(request: pytest.FixtureRequest, settings: Settings) -> Iterator[LocalExecutor]:
    """The same scenarios against the cgroup mechanisms, the forced fallbacks, the portable
    `/bin/sh` launcher (what runs where the C launcher was not built) with cgroups, and the
    `driven` mode the attempt supervisor runs (no thread of its own: a loop here drives it)."""
    local = LocalExecutor(
        settings,
        use_cgroups=request.param != "fallback",
        shell_launcher=request.param == "shell-launcher",
        driven=request.param == "driven",
    )
    driver = Driver(local) if request.param == "driven" else None
    yield local
    if driver is not None:
        driver.stop()
    local.shutdown(grace_seconds=0.2)


class Driver:
    """The owner's loop of a `driven` executor, as the supervisor runs it: wait for its descriptor
    or its next periodic pass, then `service()` it."""

    def __init__(self, executor: LocalExecutor) -> None:
        self._executor = executor
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-driver", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._executor.fileno(), selectors.EVENT_READ)
            while not self._stopped.is_set():
                due = self._executor.seconds_to_next_pass()
                selector.select(0.05 if due is None else min(due, 0.05))
                self._executor.service()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


@pytest.fixture
def cgroup_executor(settings: Settings) -> Iterator[LocalExecutor]:
    local = LocalExecutor(settings)
    yield local
    local.shutdown(grace_seconds=0.2)


@pytest.fixture
def make_spec(tmp_path: Path) -> SpecFactory:
    def make(command: list[str], **overrides: Any) -> AttemptSpec:
        attempt_id = overrides.pop("attempt_id", f"attempt-{next(_ids)}")
        fields: dict[str, Any] = {
            "attempt_id": attempt_id,
            "job_id": "job-1",
            "image": "host",
            "command": command,
            "environment": {},
            "vcpus": 1.0,
            "memory_mib": 256,
            "log_path": tmp_path / "logs" / f"{attempt_id}.log",
            "workdir": tmp_path / "work" / attempt_id,
        }
        fields.update(overrides)
        return AttemptSpec(**fields)

    return make
