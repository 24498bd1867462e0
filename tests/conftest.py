"""Shared fixtures: a real `kiln server` process on 127.0.0.1 and boto3 clients pointed at it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from kiln.cli.embedded_server import free_port
from kiln.config import shared_work_root
from kiln.executors.supervised import stop_supervisor
from tests.docker_daemon import DockerDaemon, DockerMissing, docker_daemon

# A real PostgreSQL server for the tests: fixtures postgres_cluster, fresh_postgres_url, database_url.
from tests.postgres import database_url, fresh_postgres_url, postgres_cluster, server_store_flags  # noqa: F401
from tests.ray_cluster import RayCluster, start_cluster

# Test-only server settings (documented in docs/user-guide.md): timeouts may be 1 s, SIGKILL 1 s after SIGTERM.
FAST_FLAGS = ["--min-timeout-seconds", "1", "--termination-grace-seconds", "1"]
# Jobs run as root, for tests whose subject is not who runs jobs but whose jobs need what only root
# has here: Kiln's render image runs this interpreter (under /root, mode 0700, on the test machines)
# and their jobs write into pytest's private temp dirs. The default (an unprivileged job user) is
# what every other server test runs with; tests/e2e/test_job_isolation.py is about it.
JOBS_AS_ROOT = ["--job-user", "root"]
os.environ.setdefault("AWS_ACCESS_KEY_ID", "kiln-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "kiln-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown when it is disabled (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two pytest-xdist workers; each group of `worker_group` runs on one worker,
    so a module's shared server starts once, and the Ray cluster and the Docker daemon (session
    fixtures) start only in the worker that runs the tests needing them. (xdist's own loadgroup
    marks cannot do it: it renames node ids through an attribute pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return Groups(config, log)


RAY_MODULES = ("tests/ray/",)
DOCKER_MODULES = ("tests/executors/test_docker_executor.py", "tests/e2e/test_docker.py")


def worker_group(nodeid: str) -> str:
    """A test's group: "ray" or "docker" for those needing the cluster or the daemon (by module, or
    by the `runtime` parameter of tests/e2e/conftest.py), else its module."""
    module = nodeid.split("::", 1)[0]
    params = nodeid.rsplit("[", 1)[1].rstrip("]").split("-") if nodeid.endswith("]") else []
    if module.startswith(RAY_MODULES) or "ray" in params:
        return "ray"
    if module.startswith(DOCKER_MODULES) or "docker" in params:
        return "docker"
    return module


@dataclass
class KilnServer:
    """A `kiln server` child process; `restart` keeps the data dir (crash/restart tests).

    `env` adds variables to the server's environment. Its jobs inherit only Kiln's short list of
    them (kiln/executors/job_environment.py) and those `job_environment` in kiln.toml names; render
    jobs get S3 settings through a `[job_roles]` entry (tests/render/test_pipeline.py).
    """

    data_dir: Path
    port: int
    flags: list[str]
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None  # the server's working directory, where a relative data_dir is

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.cwd or Path()).joinpath(self.data_dir.parent, f"server-{self.port}.log").open("ab")
        command = [sys.executable, "-m", "kiln", "server", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        environment = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            [*command, *self.flags], stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=self.cwd
        )
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
        """Stop the server and its attempt supervisor (which would otherwise outlive it, on purpose),
        and remove its workdirs' root when that lies outside the data dir (jobs ran as another user)."""
        self.stop()
        data_dir = (self.cwd or Path()).joinpath(self.data_dir)
        stop_supervisor(data_dir / "executor", timeout=60)
        shutil.rmtree(shared_work_root(data_dir), ignore_errors=True)

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
def job_files_root() -> Iterator[Path]:
    """Where jobs leave files for tests: jobs run as an unprivileged user, and pytest's own temp
    dirs are root's alone (and hold data dirs, which no container may mount). Under /var/tmp, 0711:
    a job reaches its test's folder, lists nothing."""
    root = Path(tempfile.mkdtemp(prefix="kiln-test-jobs-", dir="/var/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def job_tmp(job_files_root: Path) -> Path:
    """A fresh folder every job may write into, whoever it runs as (Docker bind-mounts the root)."""
    path = Path(tempfile.mkdtemp(dir=job_files_root))
    path.chmod(0o777)
    return path


@dataclass(frozen=True)
class Key:
    """An access key pair made by the real `kiln keys create`."""

    access_key_id: str
    secret: str


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60, check=False
    )


def create_key(data_dir: Path) -> Key:
    result = kiln("keys", "create", "--data-dir", str(data_dir), "--description", "tests")
    assert result.returncode == 0, result.stderr
    pairs = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return Key(pairs["AWS_ACCESS_KEY_ID"], pairs["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnServer, Key]]:
    """A `kiln server --auth sigv4` with one key (module-scoped: one per module that asks)."""
    root = tmp_path_factory.mktemp("sigv4")
    key = create_key(root / "data")
    server = start_server(root, [*FAST_FLAGS, "--auth", "sigv4"])
    yield server, key
    server.close()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, empty, for one module."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


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
