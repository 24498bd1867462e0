"""An embedded `kiln server` for commands that need one when none is running (`kiln render`).

Why a child process rather than the server inside the command: the server owns the jobs it runs,
so it must outlive a Ctrl-C aimed at the command that only watches them. Stopping an embedded
server also stops its attempt supervisor (and so its jobs): it exists only for that command.
It runs in a session of its own, which keeps the terminal's SIGINT away from it, and it is stopped
only on purpose. It talks to the command over HTTP like any other server, so `kiln render` has one
code path whether the server is embedded or not.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from kiln.config import Settings, default_data_dir
from kiln.executors.supervised import stop_supervisor
from kiln.private_files import make_private_dir, open_private_log

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STARTUP_TIMEOUT_SECONDS = 60.0
LOG_FILE_NAME = "embedded-server.log"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not start; the message says why (taken from its log)."""


def answers(endpoint: str, timeout: float = 1.0) -> bool:
    """Whether a Kiln server is up at `endpoint` (`GET /healthz` is 200)."""
    try:
        return httpx.get(f"{endpoint.rstrip('/')}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def is_loopback(endpoint: str) -> bool:
    """An endpoint on this machine: only then may a missing server be replaced by an embedded one."""
    return (urlparse(endpoint).hostname or "") in LOOPBACK_HOSTS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedServer:
    """A `kiln server` child process on 127.0.0.1 and where it keeps its state and log."""

    process: subprocess.Popen[bytes]
    endpoint: str
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM the server, as Ctrl-C on `kiln server` would, then stop its jobs' supervisor."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        stop_supervisor(Settings(data_dir=self.data_dir).executor_dir, timeout=timeout)


def start_embedded_server(data_dir: Path | None = None, job_user: str | None = None) -> EmbeddedServer:
    """Start `kiln server` on a free loopback port with `data_dir` (default: the default data dir),
    its jobs running as `job_user` (default: the server's default, see `Settings.job_user`)."""
    directory = (data_dir or default_data_dir()).expanduser().resolve()
    make_private_dir(directory)  # its log holds what jobs print, as the server's own logs do
    port = free_port()
    log_path = directory / LOG_FILE_NAME
    log_start = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to, run after run
    command = [sys.executable, "-m", "kiln", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--job-user", job_user] if job_user else []
    with open(open_private_log(log_path), "ab") as log:
        process = subprocess.Popen(
            [*command, "--data-dir", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C is for the watcher, not for the server
        )
    server = EmbeddedServer(process, f"http://127.0.0.1:{port}", directory, log_path)
    _wait_until_ready(server, log_start)
    return server


def _wait_until_ready(server: EmbeddedServer, log_start: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not server.running():
            raise EmbeddedServerError(f"{_last_error_line(server.log_path, log_start)} (log: {server.log_path})")
        if answers(server.endpoint, timeout=0.5):
            return
        time.sleep(0.1)
    server.stop()
    raise EmbeddedServerError(f"it did not answer within {STARTUP_TIMEOUT_SECONDS:.0f} s (log: {server.log_path})")


def _last_error_line(log_path: Path, start: int) -> str:
    """The server's own explanation (`error: another kiln server is already using ...`), if it gave one."""
    with log_path.open("rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["it exited at once"])[-1]
    return line.removeprefix("error:").strip()
