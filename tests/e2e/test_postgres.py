"""Real `kiln server` processes on a real PostgreSQL database, driven through boto3.

One server: a job and an array with dependencies run to SUCCEEDED. Two servers sharing one
database: both serve the API, only the lease holder runs jobs, 200 jobs submitted through both run
exactly once each, and when the leader is SIGKILLed the other server takes over scheduling.
"""

from __future__ import annotations

import collections
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from kiln.cli.embedded_server import free_port
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import TERMINAL, make_queue, register_shell, submit, wait_for

TAKEOVER_SECONDS = 20


def pg_flags(url: str) -> list[str]:
    return [*FAST_FLAGS, "--database-url", url]


def record_id_script(path: Path) -> str:
    """Each job prints its job id (so its log file exists where it ran: a log left empty is
    recycled, kiln/executors/log_files.py) and appends it to `path` as its last step."""
    return f'echo "$AWS_BATCH_JOB_ID"; echo "$AWS_BATCH_JOB_ID" >> {shlex.quote(str(path))}'


def describe_all(batch: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        found.update({job["jobId"]: job for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]})
    return found


def wait_all_terminal(batch: Any, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        found = describe_all(batch, ids)
        if len(found) == len(ids) and all(job["status"] in TERMINAL for job in found.values()):
            return found
        time.sleep(0.5)
    waiting = collections.Counter(job["status"] for job in found.values())
    raise AssertionError(f"not every job finished in {timeout} s: {dict(waiting)}")


def log_files(server: KilnServer) -> list[Path]:
    """The attempts' logs the server's supervisor wrote (not its spare files, `.kiln-free-*`)."""
    return [path for path in (server.data_dir / "logs").rglob("*.log") if not path.name.startswith(".")]


def test_one_server_on_postgresql_runs_jobs_arrays_and_dependencies(
    tmp_path: Path, job_tmp: Path, fresh_postgres_url: str
) -> None:
    server = start_server(tmp_path, pg_flags(fresh_postgres_url))
    try:
        batch = server.client()
        queue = make_queue(batch, max_vcpus=2)
        ran = job_tmp / "ran.txt"
        definition = register_shell(batch, record_id_script(ran), memory=32)
        first = submit(batch, queue, definition)
        array = submit(batch, queue, definition, arrayProperties={"size": 3}, dependsOn=[{"jobId": first}])
        last = submit(batch, queue, definition, dependsOn=[{"jobId": array}])
        assert wait_for(batch, last, timeout=60)["status"] == "SUCCEEDED"
        jobs = describe_all(batch, [first, array, last])
        assert {job_id: job["status"] for job_id, job in jobs.items()} == dict.fromkeys(jobs, "SUCCEEDED")
        assert jobs[array]["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3
        lines = ran.read_text().split()
        assert lines[0] == first and lines[-1] == last
        assert sorted(lines[1:4]) == [f"{array}:{index}" for index in range(3)]
        assert len(lines) == 5
    finally:
        server.stop()
    assert not (server.data_dir / "kiln.db").exists()  # the state lives in PostgreSQL
    with psycopg.connect(fresh_postgres_url.replace("postgresql+psycopg", "postgresql")) as connection:
        stored = connection.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    assert stored == [("SUCCEEDED", 6)]  # first, the array parent and its 3 children, last


def test_two_servers_run_each_job_once_and_the_standby_takes_over(
    tmp_path: Path, job_tmp: Path, fresh_postgres_url: str
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    leader = start_server(tmp_path / "a", pg_flags(fresh_postgres_url))  # up first: it holds the lease
    standby = start_server(tmp_path / "b", pg_flags(fresh_postgres_url))
    try:
        to_leader, to_standby = leader.client(), standby.client()
        queue = make_queue(to_leader, max_vcpus=4)  # created through one server ...
        ran = job_tmp / "ran.txt"
        definition = register_shell(to_standby, record_id_script(ran), memory=16)  # ... used through both

        ids = [submit(client, queue, definition) for _ in range(100) for client in (to_leader, to_standby)]
        jobs = wait_all_terminal(to_standby, ids, timeout=240)
        assert {job["status"] for job in jobs.values()} == {"SUCCEEDED"}
        assert all(len(job["attempts"]) == 1 for job in jobs.values())
        runs = collections.Counter(ran.read_text().split())
        assert len(runs) == 200
        assert set(runs) == set(ids)
        assert set(runs.values()) == {1}  # every job ran exactly once
        assert len(log_files(leader)) == 200  # the lease holder ran them all ...
        assert log_files(standby) == []  # ... the standby only served the API

        leader.stop(kill=True)
        killed_at = time.monotonic()
        after = submit(to_standby, queue, definition)
        assert wait_for(to_standby, after, timeout=TAKEOVER_SECONDS)["status"] == "SUCCEEDED"
        took_over_in = time.monotonic() - killed_at
        print(f"standby ran a new job {took_over_in:.1f} s after the leader was killed")
        assert collections.Counter(ran.read_text().split())[after] == 1
        assert len(log_files(standby)) == 1
    finally:
        leader.stop(kill=True)
        standby.stop()


def test_unreachable_database_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://kiln:s3cret@127.0.0.1:{free_port()}/kiln"
    command = [sys.executable, "-m", "kiln", "server", "--data-dir", str(tmp_path / "data"), "--database-url", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "error: cannot open the database postgresql+psycopg://kiln:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
