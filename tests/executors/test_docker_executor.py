"""The Docker executor on its own: real daemon, real containers, no server in between."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.config import Settings
from kiln.executors.base import AttemptExited, AttemptRunning, AttemptSpec, VolumeMount
from kiln.executors.docker import LABEL_ATTEMPT, DockerExecutor, data_dir_volume
from tests.docker_daemon import DockerDaemon

from .helpers import exited, wait_for_exit, wait_for_log

_ids = itertools.count()


@pytest.fixture
def settings(tmp_path: Path, docker_engine: DockerDaemon) -> Settings:
    return Settings(data_dir=tmp_path / "data", termination_grace_seconds=1.0, docker_host=docker_engine.url)


@pytest.fixture
def executor(settings: Settings) -> Iterator[DockerExecutor]:
    docker = DockerExecutor.connect(settings)
    yield docker
    docker.shutdown()


def spec(tmp_path: Path, daemon: DockerDaemon, script: str, **overrides: Any) -> AttemptSpec:
    attempt_id = f"docker-test-{next(_ids)}-{tmp_path.name[-12:]}"
    fields: dict[str, Any] = {
        "attempt_id": attempt_id, "job_id": "job-1", "image": daemon.image, "command": ["sh", "-c", script],
        "environment": {}, "vcpus": 1.0, "memory_mib": 64, "log_path": tmp_path / "logs" / f"{attempt_id}.log",
        "workdir": tmp_path / "work" / attempt_id,
    }  # fmt: skip
    fields.update(overrides)
    return AttemptSpec(**fields)


def _containers(daemon: DockerDaemon, attempt_id: str) -> list[Any]:
    return list(daemon.client.containers.list(all=True, filters={"label": f"{LABEL_ATTEMPT}={attempt_id}"}))


def test_attempt_outlives_the_executor_and_the_next_one_adopts_its_exit(
    settings: Settings, docker_engine: DockerDaemon, tmp_path: Path
) -> None:
    first = DockerExecutor.connect(settings)
    attempt = spec(tmp_path, docker_engine, "echo one; sleep 1.5; echo two; exit 7")
    first.start(attempt)
    wait_for_log(attempt.log_path, "one")
    first.shutdown()
    first.shutdown()  # twice is harmless
    assert [c.status for c in _containers(docker_engine, attempt.attempt_id)] == ["running"]
    wait_for_log(attempt.log_path, "one")  # nothing lost so far

    second = DockerExecutor.connect(settings)
    try:
        assert second.adopt([attempt.attempt_id, "never-placed"]).known == {attempt.attempt_id}
        events = wait_for_exit(second, attempt.attempt_id)
        assert isinstance(events[0], AttemptRunning)
        assert exited(events).exit_code == 7
        assert attempt.log_path.read_text() == "one\ntwo\n"
        assert _containers(docker_engine, attempt.attempt_id) == []
        assert second.running() == set()
    finally:
        second.shutdown()


def test_a_container_never_started_is_removed_and_may_start_again(
    executor: DockerExecutor, docker_engine: DockerDaemon, tmp_path: Path
) -> None:
    attempt_id = f"created-only-{tmp_path.name[-12:]}"
    docker_engine.client.containers.create(docker_engine.image, ["true"], labels={LABEL_ATTEMPT: attempt_id})
    adoption = executor.adopt([attempt_id])
    assert (adoption.known, adoption.never_started) == (set(), {attempt_id})
    assert _containers(docker_engine, attempt_id) == []


def test_hard_cap_quota_and_volumes(executor: DockerExecutor, docker_engine: DockerDaemon, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("hello\n")
    script = "cat /in/in.txt; echo scratch > /scratch/x && cat /scratch/x; touch /in/denied 2>/dev/null || echo read-only; sleep 30"
    attempt = spec(
        tmp_path, docker_engine, script, vcpus=0.5, cpu_hard_cap=True,
        volumes=(VolumeMount("/in", str(shared), read_only=True), VolumeMount("/scratch")),
    )  # fmt: skip
    executor.start(attempt)
    wait_for_log(attempt.log_path, "read-only")
    (container,) = _containers(docker_engine, attempt.attempt_id)
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert container.attrs["HostConfig"]["CpuShares"] == 512
    executor.terminate(attempt.attempt_id, "done here")
    outcome = exited(wait_for_exit(executor, attempt.attempt_id))
    assert (outcome.terminated, outcome.status_reason, outcome.exit_code) == (True, "done here", 137)
    assert attempt.log_path.read_text() == "hello\nscratch\nread-only\n"
    assert not (shared / "denied").exists()


def test_missing_command_fails_to_start(executor: DockerExecutor, docker_engine: DockerDaemon, tmp_path: Path) -> None:
    attempt = spec(tmp_path, docker_engine, "", command=["no-such-program"])
    executor.start(attempt)
    (event,) = wait_for_exit(executor, attempt.attempt_id)
    assert isinstance(event, AttemptExited)
    assert (event.started, event.status_reason) == (False, "Task failed to start")
    assert event.reason is not None and event.reason.startswith(
        "CannotStartContainerError: Error response from daemon: "
    )
    assert "no-such-program" in event.reason
    assert _containers(docker_engine, attempt.attempt_id) == []


def test_gpus_are_device_requests(executor: DockerExecutor, docker_engine: DockerDaemon, tmp_path: Path) -> None:
    # No GPU runtime in the test daemon: the device request is refused, which shows it was made.
    attempt = spec(tmp_path, docker_engine, "true", gpus=1)
    executor.start(attempt)
    (event,) = wait_for_exit(executor, attempt.attempt_id)
    assert isinstance(event, AttemptExited)
    assert (event.started, event.status_reason) == (False, "Task failed to start")
    assert event.reason is not None and event.reason.startswith(
        "CannotStartContainerError: Error response from daemon: "
    )
    assert "[[gpu]]" in event.reason


def test_a_volume_exposing_the_data_dir_is_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "shared").mkdir()
    for exposing in ("/", str(tmp_path), str(data), str(data / "logs")):
        assert data_dir_volume([VolumeMount("/mnt", exposing)], data) == exposing
    assert data_dir_volume([VolumeMount("/mnt", str(tmp_path / "shared")), VolumeMount("/scratch")], data) is None
    assert data_dir_volume([VolumeMount("/mnt", str(tmp_path / "data-other"))], data) is None


def test_the_definitions_user_runs_the_container_and_the_data_dir_is_never_mounted(
    executor: DockerExecutor, settings: Settings, docker_engine: DockerDaemon, tmp_path: Path
) -> None:
    as_nobody = spec(tmp_path, docker_engine, "id -u", user="65534")
    executor.start(as_nobody)
    assert exited(wait_for_exit(executor, as_nobody.attempt_id, timeout=60)).exit_code == 0
    assert as_nobody.log_path.read_text() == "65534\n"
    mounting = spec(
        tmp_path, docker_engine, "cat /mnt/credentials", volumes=(VolumeMount("/mnt", str(settings.data_dir)),)
    )
    executor.start(mounting)
    event = exited(wait_for_exit(executor, mounting.attempt_id, timeout=60))
    assert not event.started and event.reason is not None
    assert event.reason.startswith("CannotCreateContainerError: Error response from daemon: invalid mount config:")
    assert _containers(docker_engine, mounting.attempt_id) == []
