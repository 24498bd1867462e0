"""Finished jobs are purged with their logs after the retention window; kiln.toml maps images."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kiln.executors.supervised import stop_supervisor
from tests.conftest import FAST_FLAGS, KilnServer, free_port
from tests.support import make_queue, register_shell, submit, unique, wait_for


def test_finished_jobs_and_logs_are_purged_after_retention(tmp_path: Path) -> None:
    server = KilnServer(tmp_path / "data", free_port(), [*FAST_FLAGS, "--retention-days", "0.00003"])  # ~2.6 s
    server.start()
    try:
        batch = server.client()
        queue = make_queue(batch)
        job_id = submit(batch, queue, register_shell(batch, "echo soon gone"))
        job = wait_for(batch, job_id)
        log_file = server.data_dir / "logs" / f"{job['container']['logStreamName']}.log"
        assert log_file.read_text() == "soon gone\n"
        assert not (server.data_dir / "work" / job["container"]["logStreamName"].rsplit("/", 1)[-1]).exists()
        deadline = time.monotonic() + 20
        while batch.describe_jobs(jobs=[job_id])["jobs"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert batch.describe_jobs(jobs=[job_id])["jobs"] == []
        assert not log_file.exists()
    finally:
        server.stop()


def test_image_catalogue_from_kiln_toml(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tools:1.0"
    (data_dir / "kiln.toml").write_text(f'[images]\n"{image}" = ["sh", "-c", "echo entry: \\"$@\\"", "tool"]\n')
    server = KilnServer(data_dir, free_port(), FAST_FLAGS)
    server.start()
    try:
        batch = server.client()
        queue = make_queue(batch)
        name = unique("tool")
        batch.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties={"image": image, "vcpus": 1, "memory": 64, "command": ["hello", "world"]},
        )
        job_id = submit(batch, queue, name)
        assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
        text = httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id}", timeout=10).json()["text"]
        assert text == "entry: hello world\n"
    finally:
        server.stop()


def test_relative_data_dir_and_work_root_are_taken_from_where_the_server_starts(tmp_path: Path) -> None:
    """`--data-dir kiln-data/x` (and kiln.toml's `work_root = "work"`, relative to the data dir) are
    resolved once at start: jobs run in directories of their own and still find their log files."""
    data_dir = tmp_path / "kiln-data" / "x"
    data_dir.mkdir(parents=True)
    (data_dir / "kiln.toml").write_text('[server]\nwork_root = "jobs-work"\n')
    server = KilnServer(Path("kiln-data/x"), free_port(), FAST_FLAGS, cwd=tmp_path)
    server.start()
    try:
        batch = server.client()
        job_id = submit(batch, make_queue(batch), register_shell(batch, "echo relative; pwd"))
        job = wait_for(batch, job_id)
        assert job["status"] == "SUCCEEDED", job.get("statusReason")
        text = httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id}", timeout=10).json()["text"]
        task_id = job["container"]["taskArn"].rsplit("/", 1)[-1]
        assert text == f"relative\n{data_dir / 'jobs-work' / task_id}\n"
        assert (data_dir / "logs" / f"{job['container']['logStreamName']}.log").is_file()
    finally:
        server.close()


def test_a_data_dir_deep_in_the_file_tree_runs_jobs(tmp_path: Path) -> None:
    """The supervisor's socket lies in the data dir, and a Unix socket path holds at most 107
    bytes: a deeper data dir still gets a supervisor that starts and runs jobs."""
    data_dir = tmp_path / ("deep-" * 12) / ("deeper-" * 10) / "data"
    data_dir.parent.mkdir(parents=True)  # where KilnServer writes its log
    assert len(str(data_dir / "executor" / "supervisor.sock")) > 107
    server = KilnServer(data_dir, free_port(), FAST_FLAGS)
    server.start()
    try:
        batch = server.client()
        job = wait_for(batch, submit(batch, make_queue(batch), register_shell(batch, "echo deep")))
        assert job["status"] == "SUCCEEDED", job.get("statusReason")
        assert server.job_log(job["jobId"]) == "deep\n"
    finally:
        server.close()


def test_the_ready_line_comes_once_the_server_accepts_connections(tmp_path: Path) -> None:
    """A client that waits for `kiln server ready on URL` may connect at once; with `--port 0` the
    line names the port the system chose."""
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln", "server", "--port", "0", "--data-dir", str(data_dir), *FAST_FLAGS],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        line = ""
        while "kiln server ready on " not in line:
            assert time.monotonic() < deadline and process.poll() is None, line
            line = process.stderr.readline()
        url = line.split("kiln server ready on ", 1)[1].split()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", url) and not url.endswith(":0"), line
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # no retry: it must answer now
    finally:
        process.terminate()
        process.wait(timeout=60)
        stop_supervisor(data_dir / "executor", timeout=60)


def test_bad_kiln_toml_is_a_clear_startup_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "kiln.toml").write_text("[server]\nno_such_key = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "server", "--data-dir", str(data_dir), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown [server] keys: no_such_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    server = KilnServer(tmp_path / "data", free_port(), FAST_FLAGS)
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "kiln", "server", "--data-dir", str(server.data_dir), "--port", str(free_port())],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert f"another kiln server is already using the data dir {server.data_dir}" in result.stderr
        assert server.client().describe_job_queues()["jobQueues"] == []  # the first one is unharmed
    finally:
        server.stop()


def test_kiln_toml_port_and_types(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    (data_dir / "kiln.toml").write_text(f'[server]\nport = {port}\nregion = "eu-west-1"\n')
    server = KilnServer(data_dir, port, [])  # no --port flag: the file decides
    server.process = subprocess.Popen([sys.executable, "-m", "kiln", "server", "--data-dir", str(data_dir)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.endpoint}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        created = server.client().create_compute_environment(computeEnvironmentName="ce", type="UNMANAGED")
        assert created["computeEnvironmentArn"] == "arn:aws:batch:eu-west-1:123456789012:compute-environment/ce"
    finally:
        server.stop()
    (data_dir / "kiln.toml").write_text('[server]\nport = "abc"\n')
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "server", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "[server] port must be an integer, got 'abc'" in result.stderr
