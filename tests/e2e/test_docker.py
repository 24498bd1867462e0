"""What only the Docker executor does: containers as the daemon sees them, adoption after a
server crash, and a clear error when no daemon answers. The shared scenarios (success, exit
codes, retries, OOM, timeouts, terminate, arrays, dependencies) run on Docker in
test_execution.py and test_dependencies.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.docker_daemon import DockerDaemon
from tests.support import make_queue, submit, unique, wait_for


def _flags(daemon: DockerDaemon) -> list[str]:
    return [*FAST_FLAGS, "--executor", "docker", "--docker-host", daemon.url]


def _register(batch: Any, daemon: DockerDaemon, script: str, **container: Any) -> str:
    properties = {"image": daemon.image, "vcpus": 1, "memory": 64, "command": ["sh", "-c", script], **container}
    name = unique("jd")
    revision = batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=properties)
    return f"{name}:{revision['revision']}"


def _log(server: KilnServer, job_id: str) -> str:
    response = httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def _containers(daemon: DockerDaemon, job_id: str) -> list[Any]:
    return list(daemon.client.containers.list(all=True, filters={"label": f"kiln.job-id={job_id}"}))


def _wait_log(server: KilnServer, job_id: str, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in _log(server, job_id):
                return
        except AssertionError:  # no attempt yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log of {job_id}")


def test_container_gets_the_jobs_limits_labels_and_only_its_environment(
    tmp_path: Path, docker_engine: DockerDaemon
) -> None:
    server = start_server(tmp_path, _flags(docker_engine), env={"KILN_SERVER_ONLY": "secret"})
    try:
        batch = server.client()
        queue = make_queue(batch)
        definition = _register(
            batch, docker_engine, 'echo "mine=$MINE server=${KILN_SERVER_ONLY:-unset} vcpus=$KILN_VCPUS"; sleep 30',
            vcpus=2, memory=96, environment=[{"name": "MINE", "value": "from-definition"}],
        )  # fmt: skip
        job_id = submit(batch, queue, definition)
        wait_for(batch, job_id, {"RUNNING"})
        _wait_log(server, job_id, "mine=")
        (container,) = _containers(docker_engine, job_id)
        host = container.attrs["HostConfig"]
        assert host["Memory"] == host["MemorySwap"] == 96 * 1024 * 1024
        assert host["CpuShares"] == 2048
        assert host["NanoCpus"] == 0  # no hard cap unless the compute environment asks for one
        assert host["NetworkMode"] == "host"
        task_id = batch.describe_jobs(jobs=[job_id])["jobs"][0]["container"]["taskArn"].rsplit("/", 1)[-1]
        assert container.labels["kiln.attempt-id"] == task_id
        assert _log(server, job_id) == "mine=from-definition server=unset vcpus=2\n"
        batch.terminate_job(jobId=job_id, reason="enough")
        job = wait_for(batch, job_id, timeout=30)
        assert job["status"] == "FAILED"
        assert job["statusReason"] == "enough"
        deadline = time.monotonic() + 10
        while _containers(docker_engine, job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _containers(docker_engine, job_id) == []  # removed once its output was kept
        assert _log(server, job_id) == "mine=from-definition server=unset vcpus=2\n"
    finally:
        server.stop()


def test_sigkilled_server_adopts_running_and_finished_containers(tmp_path: Path, docker_engine: DockerDaemon) -> None:
    server = start_server(tmp_path, _flags(docker_engine))
    try:
        batch = server.client()
        queue = make_queue(batch)
        long = submit(batch, queue, _register(batch, docker_engine, "echo before; sleep 5; echo after"),
                      retryStrategy={"attempts": 2})  # fmt: skip
        short = submit(batch, queue, _register(batch, docker_engine, "echo short; sleep 1; exit 3"))
        for job_id in (long, short):
            wait_for(batch, job_id, {"RUNNING"})
        _wait_log(server, long, "before")

        server.stop(kill=True)  # the containers run on without a server
        time.sleep(2.5)  # `short` ends while nobody watches
        assert [c.status for c in _containers(docker_engine, long)] == ["running"]
        server.start()
        batch = server.client()

        finished = wait_for(batch, short, timeout=30)
        assert finished["status"] == "FAILED"
        assert finished["container"]["exitCode"] == 3  # the real exit, read from the container
        assert len(finished["attempts"]) == 1
        assert _log(server, short) == "short\n"
        job = wait_for(batch, long, timeout=30)
        assert job["status"] == "SUCCEEDED"
        assert len(job["attempts"]) == 1  # adopted, not retried
        assert job["attempts"][0]["statusReason"] == "Essential container in task exited"
        assert _log(server, long) == "before\nafter\n"
        assert _containers(docker_engine, long) == [] and _containers(docker_engine, short) == []
    finally:
        server.stop()


def test_server_refuses_to_start_without_a_daemon(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path}/no-daemon.sock"
    command = [sys.executable, "-m", "kiln", "server", "--data-dir", str(tmp_path / "data"), "--port", "0",
               "--executor", "docker", "--docker-host", socket]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"no Docker daemon answers at {socket}: start dockerd or use --executor local" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_executor_is_a_clear_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kiln", "server", "--data-dir", str(tmp_path / "data"), "--port", "0",
               "--executor", "kubernetes"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown executor 'kubernetes': use local, docker or ray" in result.stderr


def test_kiln_toml_chooses_the_docker_executor(tmp_path: Path, docker_engine: DockerDaemon) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "kiln.toml").write_text(f'[server]\nexecutor = "docker"\ndocker_host = "{docker_engine.url}"\n')
    server = start_server(tmp_path, FAST_FLAGS)
    try:
        batch = server.client()
        job_id = submit(batch, make_queue(batch), _register(batch, docker_engine, "cat /etc/passwd | head -1"))
        job = wait_for(batch, job_id)
        assert job["status"] == "SUCCEEDED", job
        assert _log(server, job_id) == "root:x:0:0:root:/root:/bin/sh\n"  # the busybox image's file, not the host's
    finally:
        server.stop()
