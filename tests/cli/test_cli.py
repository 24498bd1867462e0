"""`kiln jobs`, `kiln describe`, `kiln logs` and `kiln executor` against a real server, as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import KilnServer, start_server
from tests.support import make_queue, register_shell, submit, wait_for


def kiln(server: KilnServer, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL_BATCH": server.endpoint, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_jobs_describe_and_logs(kiln_server: KilnServer, batch: Any) -> None:
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "echo line-one; echo line-two >&2"))
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"

    table = kiln(kiln_server, "jobs", "--queue", queue)
    assert table.returncode == 0, table.stderr
    assert job_id in table.stdout and "SUCCEEDED" in table.stdout

    described = kiln(kiln_server, "describe", job_id)
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["jobId"] == job_id

    logs = kiln(kiln_server, "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["line-one", "line-two"]


def test_logs_follow_streams_until_the_job_ends(kiln_server: KilnServer, batch: Any) -> None:
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "for i in 1 2 3; do echo tick $i; sleep 0.5; done"))
    wait_for(batch, job_id, {"RUNNING", "SUCCEEDED"})
    followed = kiln(kiln_server, "logs", "--follow", job_id, "--endpoint-url", kiln_server.endpoint)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["tick 1", "tick 2", "tick 3"]


def test_errors_are_readable(kiln_server: KilnServer) -> None:
    missing = kiln(kiln_server, "describe", "no-such-job")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    no_log = kiln(kiln_server, "logs", "no-such-job")
    assert no_log.returncode == 1
    assert "Job no-such-job not found." in no_log.stderr
    assert "Traceback" not in missing.stderr + no_log.stderr


def test_executor_status_and_stop_end_the_attempts_a_stopped_server_left(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    batch = server.client()
    job_id = submit(batch, make_queue(batch), register_shell(batch, "sleep 617"))
    wait_for(batch, job_id, {"RUNNING"})
    server.stop()  # the attempt keeps running: it belongs to the supervisor
    kiln = [sys.executable, "-m", "kiln", "executor"]
    status = subprocess.run([*kiln, "status", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert status.returncode == 0 and "an attempt supervisor runs" in status.stdout
    assert [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "617"]]
    stop = subprocess.run([*kiln, "stop", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the attempt supervisor" in stop.stdout
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "617"]]
    status = subprocess.run([*kiln, "status", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
    assert status.returncode == 1 and "no attempt supervisor runs" in status.stdout
