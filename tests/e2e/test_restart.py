"""A server killed at any moment and restarted on the same data dir forgets nothing, and its
attempts outlive it: they belong to the attempt supervisor, not to the server process."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import KilnServer, start_server
from tests.support import make_queue, register_shell, submit, wait_for

HOST_LOST_PREFIX = "Host EC2 (instance "


def _sleepers(seconds: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]


def _supervisor(server: KilnServer) -> psutil.Process:
    state_dir = str(server.data_dir / "executor")
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "kiln.executors.supervisor" in cmdline and state_dir in cmdline:
            return process
    raise AssertionError(f"no supervisor runs for {state_dir}")


def _wait_gone(processes: list[psutil.Process], seconds: float = 10) -> None:
    psutil.wait_procs(processes, timeout=seconds)
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _only_attempt(job: dict[str, Any]) -> dict[str, Any]:
    assert len(job["attempts"]) == 1, job["attempts"]
    return dict(job["attempts"][0])


def test_sigkilled_server_keeps_its_state_and_readopts_the_running_attempt(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    done = submit(batch, queue, register_shell(batch, "echo quick"))
    assert wait_for(batch, done)["status"] == "SUCCEEDED"
    running = submit(batch, queue, register_shell(batch, "sleep 3.0301; echo survived"))
    wait_for(batch, running, {"RUNNING"})
    before = {
        "ces": batch.describe_compute_environments()["computeEnvironments"],
        "queues": batch.describe_job_queues()["jobQueues"],
        "definitions": batch.describe_job_definitions()["jobDefinitions"],
        "done": batch.describe_jobs(jobs=[done])["jobs"],
    }

    server.stop(kill=True)
    assert len(_sleepers("3.0301")) == 1  # the attempt did not die with the server
    server.start()
    batch = server.client()

    assert batch.describe_compute_environments()["computeEnvironments"] == before["ces"]
    assert batch.describe_job_queues()["jobQueues"] == before["queues"]
    assert batch.describe_job_definitions()["jobDefinitions"] == before["definitions"]
    assert batch.describe_jobs(jobs=[done])["jobs"] == before["done"]
    job = wait_for(batch, running)
    assert job["status"] == "SUCCEEDED"
    attempt = _only_attempt(job)
    assert attempt["container"]["exitCode"] == 0
    assert attempt["statusReason"] == "Essential container in task exited"
    log = (server.data_dir / "logs").rglob(f"{attempt['container']['taskArn'].rsplit('/', 1)[-1]}*")
    assert "survived" in "".join(path.read_text() for path in log)


def test_an_attempt_that_ends_while_no_server_runs_keeps_its_real_exit(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "sleep 0.5; exit 3"))
    wait_for(batch, job_id, {"RUNNING"})
    server.stop(kill=True)
    time.sleep(2)  # the attempt ends meanwhile; only the supervisor's journal sees it
    restarted_at = time.time() * 1000
    server.start()
    job = wait_for(server.client(), job_id)
    assert job["status"] == "FAILED"
    attempt = _only_attempt(job)
    assert attempt["container"]["exitCode"] == 3
    assert attempt["stoppedAt"] < restarted_at  # when it really ended, not when we heard of it


def test_sigterm_stops_the_server_and_leaves_attempts_running(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "sleep 2.0207; echo ok"))
    wait_for(batch, job_id, {"RUNNING"})
    server.stop()  # SIGTERM: graceful
    assert len(_sleepers("2.0207")) == 1
    server.start()
    job = wait_for(server.client(), job_id)
    assert job["status"] == "SUCCEEDED"
    assert _only_attempt(job)["container"]["exitCode"] == 0


def test_a_lost_supervisor_is_a_lost_host_and_the_job_is_retried(tmp_path: Path) -> None:
    """Server and supervisor both SIGKILLed: nothing can report the attempt's end any more."""
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    command = '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && sleep 613; echo "finished on attempt $AWS_BATCH_JOB_ATTEMPT"'
    job_id = submit(batch, queue, register_shell(batch, command, retryStrategy={"attempts": 2}))
    wait_for(batch, job_id, {"RUNNING"})
    supervisor = _supervisor(server)
    server.stop(kill=True)
    supervisor.send_signal(signal.SIGKILL)
    _wait_gone([supervisor])
    server.start()
    job = wait_for(server.client(), job_id)
    assert job["status"] == "SUCCEEDED"
    first, second = job["attempts"]
    assert first["statusReason"].startswith(HOST_LOST_PREFIX)
    assert first["statusReason"].endswith(") terminated.")
    assert second["statusReason"] == "Essential container in task exited"
    deadline = time.monotonic() + 5
    while _sleepers("613") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers("613") == []  # the lost attempt did not run on beside its retry


def test_a_supervisor_killed_under_a_live_server_is_replaced(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    command = '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && sleep 614; echo "attempt $AWS_BATCH_JOB_ATTEMPT"'
    job_id = submit(batch, queue, register_shell(batch, command, retryStrategy={"attempts": 2}))
    wait_for(batch, job_id, {"RUNNING"})
    supervisor = _supervisor(server)
    supervisor.send_signal(signal.SIGKILL)
    job = wait_for(batch, job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["attempts"][0]["statusReason"].startswith(HOST_LOST_PREFIX)
    assert _supervisor(server).pid != supervisor.pid
    # and the new supervisor serves new work
    assert wait_for(batch, submit(batch, queue, register_shell(batch, "true")))["status"] == "SUCCEEDED"


def test_graceful_stop_keeps_state(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "echo hi"))
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    server.restart()
    job = server.client().describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "SUCCEEDED"
    assert job["attempts"][0]["container"]["exitCode"] == 0
