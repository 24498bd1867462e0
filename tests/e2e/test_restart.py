"""A server killed at any moment and restarted on the same data dir forgets nothing."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.conftest import start_server
from tests.support import make_queue, register_shell, submit, wait_for


def _sleepers(seconds: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]


def test_sigkilled_server_restarts_with_everything_and_retries_lost_attempts(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        batch = server.client()
        queue = make_queue(batch)
        quick = register_shell(batch, "echo quick")
        done = submit(batch, queue, quick)
        assert wait_for(batch, done)["status"] == "SUCCEEDED"
        slow = register_shell(
            batch, '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && sleep 613; echo "finished on attempt $AWS_BATCH_JOB_ATTEMPT"',
            retryStrategy={"attempts": 2},
        )  # fmt: skip
        interrupted = submit(batch, queue, slow)
        wait_for(batch, interrupted, {"RUNNING"})
        before = {
            "ces": batch.describe_compute_environments()["computeEnvironments"],
            "queues": batch.describe_job_queues()["jobQueues"],
            "definitions": batch.describe_job_definitions()["jobDefinitions"],
            "done": batch.describe_jobs(jobs=[done])["jobs"],
        }

        server.restart(kill=True)
        batch = server.client()

        assert batch.describe_compute_environments()["computeEnvironments"] == before["ces"]
        assert batch.describe_job_queues()["jobQueues"] == before["queues"]
        assert batch.describe_job_definitions()["jobDefinitions"] == before["definitions"]
        assert batch.describe_jobs(jobs=[done])["jobs"] == before["done"]
        job = wait_for(batch, interrupted)
        assert job["status"] == "SUCCEEDED"
        first, second = job["attempts"]
        assert first["statusReason"].startswith("Host EC2 (instance ")
        assert first["statusReason"].endswith(") terminated.")
        assert second["statusReason"] == "Essential container in task exited"
        deadline = time.monotonic() + 5
        while _sleepers("613") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sleepers("613") == []  # the lost attempt's process did not run on beside its retry
    finally:
        server.stop()


def test_graceful_stop_keeps_state(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        batch = server.client()
        queue = make_queue(batch)
        job_id = submit(batch, queue, register_shell(batch, "echo hi"))
        assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
        server.restart()
        job = server.client().describe_jobs(jobs=[job_id])["jobs"][0]
        assert job["status"] == "SUCCEEDED"
        assert job["attempts"][0]["container"]["exitCode"] == 0
    finally:
        server.stop()
