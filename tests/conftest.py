"""Shared fixtures: a real `kiln server` process on 127.0.0.1 and boto3 clients pointed at it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest

from kiln.cli.embedded_server import free_port
from kiln.executors.supervised import stop_supervisor
from tests.docker_daemon import DockerDaemon, DockerMissing, docker_daemon

# A real PostgreSQL server for the tests: fixtures postgres_cluster, fresh_postgres_url, database_url.
from tests.postgres import database_url, fresh_postgres_url, postgres_cluster, server_store_flags  # noqa: F401
from tests.ray_cluster import RayCluster, start_cluster

# Test-only server settings (documented in docs/user-guide.md): timeouts may be 1 s, SIGKILL 1 s after SIGTERM.
FAST_FLAGS = ["--min-timeout-seconds", "1", "--termination-grace-seconds", "1"]
os.environ.setdefault("AWS_ACCESS_KEY_ID", "kiln-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "kiln-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class KilnServer:
    """A `kiln server` child process; `restart` keeps the data dir (crash/restart tests).

    `env` adds variables to the server's environment, which its jobs inherit (for example
    `AWS_ENDPOINT_URL_S3` pointing the render jobs at a test S3 server).
    """

    data_dir: Path
    port: int
    flags: list[str]
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.data_dir.parent / f"server-{self.port}.log").open("ab")
        command = [sys.executable, "-m", "kiln", "server", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        environment = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen([*command, *self.flags], stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kiln server exited with {self.process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{self.endpoint}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("kiln server did not become healthy in 30 s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=60)
        self.process = None

    def close(self) -> None:
        """Stop the server and its attempt supervisor (which would otherwise outlive it, on purpose)."""
        self.stop()
        stop_supervisor(self.data_dir / "executor", timeout=60)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def client(self) -> Any:
        return boto3.client("batch", endpoint_url=self.endpoint, region_name="us-east-1")

    def job_log(self, job_id: str, attempt: int | None = None) -> str:
        """The job's log (its last attempt, or `attempt`) through `/kiln/v1/logs`; "" while it has none."""
        params = {} if attempt is None else {"attempt": attempt}
        url = f"{self.endpoint}/kiln/v1/logs/{quote(job_id, safe='')}"  # MNP node ids: '#' -> %23
        response = httpx.get(url, params=params, timeout=10)
        return str(response.json()["text"]) if response.status_code == 200 else ""

    def wait_for_log(self, job_id: str, text: str, timeout: float = 60) -> str:
        """The job's log once it contains `text` (bounded in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.job_log(job_id)
            if text in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared in the log of {job_id}: {self.job_log(job_id)!r}")


def start_server(tmp_path: Path, flags: list[str] | None = None, env: dict[str, str] | None = None) -> KilnServer:
    flags = FAST_FLAGS if flags is None else flags
    if "--database-url" not in flags:
        flags = [*flags, *server_store_flags()]
    server = KilnServer(tmp_path / "data", free_port(), flags, env=env)
    _started.append(server)
    server.start()
    return server


_started: list[KilnServer] = []


@pytest.fixture(scope="session", autouse=True)
def _close_servers() -> Iterator[None]:
    """Every server a test started, and the attempts its supervisor still runs, end with the session."""
    yield
    for server in _started:
        server.close()


@pytest.fixture(scope="module")
def kiln_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = start_server(tmp_path_factory.mktemp("kiln"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def batch(kiln_server: KilnServer) -> Any:
    return kiln_server.client()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerDaemon]:
    """A Docker daemon (started here when none answers) holding the busybox test image."""
    with contextlib.ExitStack() as stack:
        try:
            daemon = stack.enter_context(docker_daemon())
        except DockerMissing as exc:
            pytest.skip(f"no Docker here: {exc}")
        yield daemon


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One real local Ray cluster (head + two workers, tests/ray_cluster.py) for the whole session."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
