"""The server's side of the attempt supervisor: the local `Executor`, with attempts in another process.

The server connects to the supervisor of its data dir (starting one when none answers), hands it
placements and reads events back on a thread. Because the supervisor, not the server, parents the
attempts, the server can crash or restart at any moment: `adopt` collects what happened meanwhile.
If the supervisor itself dies, a new one is started, and attempts it cannot account for are
reported as a lost host (AWS's wording), so their jobs are retried per their strategy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.config import Settings
from kiln.errors import ServerError
from kiln.private_files import create_private_file, make_private_dir

from .base import HOST_TERMINATED, Adoption, AttemptEvent, AttemptExited, AttemptSpec, Capacity, EventReporter
from .images import ImageCatalogue
from .job_environment import inherited_environment
from .job_mounts import openings, paths_jobs_need
from .job_users import JobUsers, blocked_on_the_way
from .supervisor_wire import (
    LOG_NAME,
    SOCKET_NAME,
    LineReader,
    encode,
    event_from_wire,
    socket_address,
    spec_to_wire,
)
from .workdirs import prepare_work_root

log = logging.getLogger(__name__)

CONNECT_SECONDS = 20.0
REPLY_SECONDS = 60.0


class SupervisorUnavailable(ServerError):
    """No attempt supervisor could be started or reached (the server cannot run jobs)."""


def prepare_for_jobs(settings: Settings, catalogue: ImageCatalogue) -> None:
    """Check the job users (an unknown one refuses the start), make the workdirs' root, and warn
    when the default job user cannot run an image's program even with the private directories the
    supervisor shows jobs (job_mounts.py; a server not running as root can show none)."""
    users = JobUsers(settings.job_user, settings.allowed_job_users, job_uids=settings.job_uids)
    prepare_work_root(settings.work_dir, shared=not users.only_this_process_user)
    user = users.default
    entries = {image: entry for image, entry in sorted(catalogue.entries().items()) if entry}
    shown = openings(paths_jobs_need(entry[0] for entry in entries.values()), [user]) if os.geteuid() == 0 else {}
    for image, entrypoint in entries.items():
        for path in paths_jobs_need([entrypoint[0]]):
            blocked = blocked_on_the_way(path, user, lambda directory, child: child in shown.get(directory, ()))
            if blocked is not None:
                log.warning(
                    "jobs run as %s, which cannot use %s (needed by image %s): the %s. Attempts of "
                    "that image will fail to start. Install it outside private directories (e.g. a venv "
                    "under /opt), make the path reachable for that user, or set job_user in kiln.toml.",
                    users.described, path, image, blocked,
                )  # fmt: skip
                break


def connect(state_dir: Path) -> socket.socket | None:
    """A connection to the supervisor of `state_dir`, or None when none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(state_dir / SOCKET_NAME) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


def spawn_supervisor(state_dir: Path) -> subprocess.Popen[bytes]:
    """Start a supervisor in its own session, so signals meant for the server never reach it."""
    make_private_dir(state_dir)
    create_private_file(state_dir / LOG_NAME)
    with (state_dir / LOG_NAME).open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "kiln.executors.supervisor", "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, close_fds=True,
        )  # fmt: skip


def connect_or_spawn(state_dir: Path) -> socket.socket:
    sock = connect(state_dir)
    if sock is not None:
        return sock
    process = spawn_supervisor(state_dir)
    threading.Thread(target=process.wait, name="kiln-supervisor-reaper", daemon=True).start()
    deadline = time.monotonic() + CONNECT_SECONDS
    while time.monotonic() < deadline:
        sock = connect(state_dir)
        if sock is not None:
            return sock
        if process.poll() is not None and connect(state_dir) is None:
            process = spawn_supervisor(state_dir)  # lost a race with an exiting one: try again
        time.sleep(0.02)
    raise SupervisorUnavailable(f"the attempt supervisor did not start; see {state_dir / LOG_NAME}")


def stop_supervisor(state_dir: Path, timeout: float = 60.0) -> bool:
    """Terminate every attempt of the supervisor of `state_dir` and wait until it has exited.

    True when it is gone (or none was running). Used by `kiln executor stop`, an embedded server's
    exit and the tests' teardown.
    """
    sock = connect(state_dir)
    if sock is None:
        return True
    with sock:
        sock.sendall(encode({"op": "stop"}))
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            while sock.recv(1 << 16):  # the supervisor closes the connection when it exits
                pass
    deadline = time.monotonic() + 5.0
    while connect(state_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    return connect(state_dir) is None


class SupervisedExecutor(EventReporter):
    """`Executor` whose attempts are started, reaped and journaled by the supervisor process."""

    def __init__(self, settings: Settings, catalogue: ImageCatalogue, host_id: str) -> None:
        super().__init__()
        prepare_for_jobs(settings, catalogue)
        self._settings = settings
        self._catalogue = catalogue
        self._state_dir = settings.executor_dir
        self._lost_reason = HOST_TERMINATED.format(host=host_id)
        self._replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._outstanding: dict[str, AttemptSpec | None] = {}  # handed over, not yet reported over
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = False
        self._notes: list[str] = []
        self._gpus = 0
        self._sock, self._reader = self._connect()
        self._thread = threading.Thread(target=self._read, name="kiln-supervisor-client", daemon=True)
        self._thread.start()

    # -- connection --------------------------------------------------------------------------------
    def _connect(self) -> tuple[socket.socket, LineReader]:
        sock = connect_or_spawn(self._state_dir)
        reader = LineReader()
        sock.sendall(encode({
            "op": "hello",
            "termination_grace_seconds": self._settings.termination_grace_seconds,
            "images": self._catalogue.entries(),
            "built_in_images": self._catalogue.built_in(),
            "environment": inherited_environment(os.environ, self._settings.job_environment),
            "gpus": self._settings.gpus,
            "job_user": self._settings.job_user,
            "allowed_job_users": list(self._settings.allowed_job_users),
            "job_uids": self._settings.job_uids,
        }))  # fmt: skip
        sock.settimeout(REPLY_SECONDS)
        pending: list[dict[str, Any]] = []
        while not pending:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SupervisorUnavailable(
                    f"the attempt supervisor closed the connection; see {self._state_dir / LOG_NAME}"
                )
            pending = reader.feed(chunk)
        sock.settimeout(None)
        self._notes = list(pending[0].get("notes", []))
        self._gpus = int(pending[0].get("gpus", 0))  # the supervisor's engine finds and hands out GPUs
        for message in pending[1:]:
            self._dispatch(message)
        return sock, reader

    def _read(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                if self._closed or not self._reconnect():
                    return
                continue
            for message in self._reader.feed(chunk):
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("op") != "event":
            self._replies.put(message)
            return
        message.pop("op")
        self._deliver(event_from_wire(message))

    def _deliver(self, event: AttemptEvent) -> None:
        if isinstance(event, AttemptExited):
            with self._lock:
                self._outstanding.pop(event.attempt_id, None)
        self._emit(event)

    def _reconnect(self) -> bool:
        """The supervisor went away: start another and account for every attempt placed here."""
        log.error("the attempt supervisor went away; starting a new one")
        with contextlib.suppress(OSError):
            self._sock.close()
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                self._sock, self._reader = self._connect()
                break
            except (OSError, SupervisorUnavailable):  # e.g. reset by the dying one's listener
                if time.monotonic() >= deadline:
                    log.exception("cannot restart the attempt supervisor")
                    return False
                time.sleep(0.05)
        with self._lock:
            placed = dict(self._outstanding)
        self._send({"op": "adopt", "ids": sorted(placed)})
        reply: dict[str, Any] | None = None
        while reply is None:  # the reply comes on this very thread: read it inline
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                return True
            for message in self._reader.feed(chunk):
                if message.get("op") == "adopted":
                    reply = message
                else:
                    self._dispatch(message)
        known, unseen = set(reply["ids"]), set(reply["never_started"])
        for attempt_id in sorted(placed.keys() - known):
            spec = placed[attempt_id]
            if attempt_id in unseen and spec is not None:
                self._send({"op": "start", "specs": [spec_to_wire(replace(spec, start_after=None))]})
            else:
                self._deliver(AttemptExited(attempt_id, int(time.time() * 1000), None, self._lost_reason))
        return True

    def _send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            try:
                self._sock.sendall(encode(message))
            except OSError:
                log.warning("cannot reach the attempt supervisor (%s dropped)", message["op"])

    # -- Executor ----------------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        return Capacity(
            vcpus=float(self._settings.host_vcpus),
            memory_mib=self._settings.host_memory_mib,
            gpus=self._gpus,
            notes=list(self._notes),
            start_after=True,
        )

    def start(self, spec: AttemptSpec) -> None:
        self.start_many([spec])

    def start_many(self, specs: Sequence[AttemptSpec]) -> None:
        """One message for a tick's placements: one send, and one wake-up of the supervisor."""
        message = {"op": "start", "specs": [spec_to_wire(spec) for spec in specs]}
        with self._lock:
            self._outstanding.update((spec.attempt_id, spec) for spec in specs)
        self._send(message)

    def terminate(self, attempt_id: str, reason: str) -> None:
        self._send({"op": "terminate", "id": attempt_id, "reason": reason})

    def running(self) -> set[str]:
        with self._lock:
            return set(self._outstanding)

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        if attempt_ids:
            self._send({"op": "acknowledge", "ids": list(attempt_ids)})

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        self._send({"op": "adopt", "ids": list(attempt_ids)})
        try:
            reply = self._replies.get(timeout=REPLY_SECONDS)
        except queue.Empty:
            log.error("the attempt supervisor did not answer an adopt request")
            return Adoption()
        known = frozenset(reply.get("ids", []))
        with self._lock:
            self._outstanding.update(dict.fromkeys(known))
        return Adoption(known, frozenset(reply.get("never_started", [])))

    def shutdown(self) -> None:
        """Disconnect; the supervisor keeps every attempt running for the next server."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()
