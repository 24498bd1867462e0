"""The Kiln agent on one Ray node: the local executor's engine, driven through Ray actor calls.

One actor per node (pinned there with hard node affinity, no Ray restarts) hosts a
`LocalExecutor`, so an attempt on a Ray node gets exactly the local executor's behaviour - cgroup
memory hard limit and OOM outcome, CPU weight, timeout with SIGTERM then SIGKILL, workdir, image
entrypoints, log capture - written once. The attempt's workdir and log live on the node (its temp
dir): the server pulls new log bytes with `report`, so logs stream back even when the server and
the node share no filesystem.

The actor takes no Ray resources itself (`num_cpus=0`): the attempt's resources are held by the
placement group the server creates for it, which is also how Ray picks the node.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.config import Settings
from kiln.render import image as render_image

from .base import AttemptEvent, AttemptExited, AttemptSpec
from .images import ImageCatalogue
from .local import LocalExecutor, remove_workdir

LOG_CHUNK_BYTES = 1024 * 1024  # most log bytes one `report` carries per attempt (the rest comes next time)
# The server's variables that describe its own machine, not the job: the node keeps its own.
HOST_SPECIFIC = frozenset(
    {"PATH", "HOME", "PWD", "OLDPWD", "SHELL", "HOSTNAME", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV"}
)


@dataclass
class NodeReport:
    """What happened on the node since the last report: log bytes per attempt, then events.

    An attempt's exit is reported only once its whole log has been handed over.
    """

    logs: dict[str, bytes] = field(default_factory=dict)
    events: list[AttemptEvent] = field(default_factory=list)


def job_environment(node: dict[str, str], server: dict[str, str]) -> dict[str, str]:
    """The node's environment with the server's on top (as on the local executor), except what
    only makes sense on the server's machine and Ray's own variables."""
    forwarded = {k: v for k, v in server.items() if k not in HOST_SPECIFIC and not k.startswith("RAY_")}
    own = {k: v for k, v in node.items() if not k.startswith("RAY_")}
    return {**own, **forwarded}


class NodeAgent:
    """A Ray actor class (wrapped with `ray.remote` by the server): one per node and server."""

    def __init__(self, node_id: str, tag: str) -> None:
        self._node_id = node_id
        self._root = Path(tempfile.gettempdir()) / "kiln-ray" / f"{tag}-{node_id[:12]}"
        self._logs_dir = self._root / "logs"
        self._work_dir = self._root / "work"
        self._executor: LocalExecutor | None = None
        self._offsets: dict[str, int] = {}  # attempt id -> log bytes already reported
        self._pending: list[AttemptEvent] = []  # exits waiting for the rest of their log

    def configure(self, settings: Settings, server_environment: dict[str, str]) -> str:
        """Take the (re)connecting server's settings; returns this node's id."""
        catalogue = ImageCatalogue(settings.images)
        catalogue.register(render_image.IMAGE, render_image.entrypoint())  # Kiln's render worker, this node's venv
        environment = job_environment(dict(os.environ), server_environment)
        settings = replace(settings, gpus=None)  # the server's `gpus` is its own host's: each node finds its own
        if self._executor is None:
            self._executor = LocalExecutor(settings, catalogue)
        self._executor.reconfigure(settings, catalogue, environment)
        return self._node_id

    def describe(self) -> list[str]:
        return self._engine().describe()

    def start(self, spec: AttemptSpec) -> None:
        local = replace(
            spec, log_path=self._logs_dir / f"{spec.attempt_id}.log", workdir=self._work_dir / spec.attempt_id
        )
        self._offsets[spec.attempt_id] = 0
        self._engine().start(local)

    def terminate(self, attempt_id: str, reason: str) -> None:
        self._engine().terminate(attempt_id, reason)

    def running(self) -> list[str]:
        return sorted(self._engine().running())

    def report(self) -> NodeReport:
        report = NodeReport()
        self._pending.extend(self._engine().poll())
        for attempt_id in list(self._offsets):
            chunk = self._read_log(attempt_id)
            if chunk:
                report.logs[attempt_id] = chunk
        waiting: list[AttemptEvent] = []
        for event in self._pending:
            if isinstance(event, AttemptExited) and (waiting or report.logs.get(event.attempt_id)):
                waiting.append(event)  # more log may follow: the exit goes out once it is all read
            else:
                report.events.append(event)
                if isinstance(event, AttemptExited):
                    self._forget(event.attempt_id)
        self._pending = waiting
        return report

    def stop_all(self, grace_seconds: float) -> None:
        """Stop every attempt of this node (a server leaving, or one that lost track of them)."""
        engine = self._engine()
        for attempt_id in engine.running():
            engine.terminate(attempt_id, "Terminated because the Kiln server is shutting down")
        engine.shutdown(grace_seconds)
        self._executor = None
        for attempt_id in list(self._offsets):
            self._forget(attempt_id)
        self._pending = []

    def _engine(self) -> LocalExecutor:
        if self._executor is None:
            raise RuntimeError("the node agent has not been configured")
        return self._executor

    def _read_log(self, attempt_id: str) -> bytes:
        path = self._logs_dir / f"{attempt_id}.log"
        try:
            with path.open("rb") as log:
                log.seek(self._offsets[attempt_id])
                chunk = log.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            return b""
        self._offsets[attempt_id] += len(chunk)
        return chunk

    def _forget(self, attempt_id: str) -> None:
        self._offsets.pop(attempt_id, None)
        (self._logs_dir / f"{attempt_id}.log").unlink(missing_ok=True)
        remove_workdir(self._work_dir / attempt_id)
