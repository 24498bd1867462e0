"""A real PostgreSQL server for the tests, started once per session in a temporary directory.

The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (`make test` installs the
`postgresql` package when neither has them). PostgreSQL refuses to run as root, so as root the
cluster belongs to the `postgres` user (or `nobody`) and the tools run through `runuser`. The server
listens on 127.0.0.1 on a free port (and a unix socket inside the cluster's directory only), trusts
local connections, and skips fsync: the tests kill Kiln servers, never PostgreSQL itself.

Fixtures: `postgres_cluster` (session), `fresh_postgres_url` (an empty database per test) and
`database_url`, parametrized over SQLite and PostgreSQL for suites that must pass on both.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from kiln.cli.embedded_server import free_port

SUPERUSER = "postgres"
_DEBIAN_BIN = Path("/usr/lib/postgresql")
_database_numbers = itertools.count(1)


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(on_path).resolve().parent
    versions = sorted(
        (d for d in _DEBIAN_BIN.glob("*/bin") if (d / "initdb").exists() and (d / "pg_ctl").exists()),
        key=lambda d: [int(part) for part in re.findall(r"\d+", d.parent.name)] or [0],
    )
    return versions[-1] if versions else None


def _owner() -> str | None:
    """The account the cluster runs as when we are root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists to own the cluster")


@dataclass
class PostgresCluster:
    """One running PostgreSQL server; `create_database` hands out empty databases."""

    root: Path
    bin_dir: Path
    port: int
    owner: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL Kiln takes (`--database-url`)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True)

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"kiln_test_{os.getpid()}_{next(_database_numbers)}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def _tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        initdb = self._tool(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "--no-locale", "--encoding=UTF8"
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        started = self._tool(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o", options,
            "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n{log}")

    def stop(self) -> None:
        self._tool("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")


def start_cluster() -> PostgresCluster:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("initdb/pg_ctl not found on PATH or under /usr/lib/postgresql/*/bin")
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    if owner is not None:
        shutil.chown(root, user=owner)
    cluster = PostgresCluster(root, bin_dir, free_port(), owner)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


_shared: PostgresCluster | None = None


def shared_cluster() -> PostgresCluster:
    """The session's one cluster, started on first use and stopped when the test process exits."""
    global _shared
    if _shared is None:
        _shared = start_cluster()
        atexit.register(_stop_shared)
    return _shared


def _stop_shared() -> None:
    if _shared is not None:
        _shared.stop()
        shutil.rmtree(_shared.root, ignore_errors=True)


def server_store_flags() -> list[str]:
    """`KILN_TEST_STORE=postgresql` puts every test server (tests/conftest.py `start_server`) on a
    fresh PostgreSQL database, so the whole end-to-end suite can be run against PostgreSQL too."""
    if os.environ.get("KILN_TEST_STORE", "sqlite") != "postgresql":
        return []
    cluster = shared_cluster()
    return ["--database-url", cluster.url(cluster.create_database())]


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed here (no initdb/pg_ctl); `make test` installs Debian's package")
    return shared_cluster()


@pytest.fixture
def fresh_postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_cluster.url(postgres_cluster.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each store Kiln supports: the test runs once per store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/kiln.db"
    return str(request.getfixturevalue("fresh_postgres_url"))
