"""The Kiln agent on one Ray node: the local executor's engine, driven through Ray actor calls.

One actor per node (pinned there with hard node affinity, no Ray restarts) hosts a
`LocalExecutor`, so an attempt on a Ray node gets exactly the local executor's behaviour - cgroup
memory hard limit and OOM outcome, CPU weight, timeout with SIGTERM then SIGKILL, workdir, image
entrypoints, log capture - written once. The attempt's workdir and log live on the node (its temp
dir): the server pulls new log bytes with `report`, so logs stream back even when the server and
the node share no filesystem.

The actor takes no Ray resources itself (`num_cpus=0`): the attempt's resources are held by a
placement group of the server's (a reusable *slot*), which is also how Ray picks the node.

Start-ahead chains live here, as in the local executor's supervisor: an attempt sent
`start_after` a running one waits beside it and a thread of the agent starts it the moment its
predecessor's exit comes out of the engine, without a round trip to the server. Starts come in
batches (one call per node and server pass), and only from the server that configured the agent
last (`epoch`), so a hand-over a dead server left in flight can never start after its successor
has taken stock.

The agent is detached: it outlives its server, and so do the attempts it runs. It keeps every
attempt's exit (and log) until the server acknowledges having recorded it, so a restarted server
`adopt`s what is still running and what ended meanwhile, with the log from where its own copy stops
(the supervisor's contract for local attempts, see supervisor.py).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.clock import now_ms
from kiln.config import Settings

from .base import AttemptEvent, AttemptExited, AttemptRunning, AttemptSpec
from .chains import StartChains
from .images import ImageCatalogue
from .job_environment import inherited_environment
from .local import LocalExecutor
from .workdirs import remove_tree

LOG_CHUNK_BYTES = 1024 * 1024  # most log bytes one `report` carries per attempt (the rest comes next time)
ORPHAN_REASON = "Terminated because its Kiln server no longer knows the attempt"
# The server's variables that describe its own machine, not the job: the node keeps its own.
HOST_SPECIFIC = frozenset(
    {"PATH", "HOME", "PWD", "OLDPWD", "SHELL", "HOSTNAME", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV"}
)


@dataclass
class NodeReport:
    """What happened on the node since the last report: log bytes per attempt, then events.

    An attempt's exit is reported only once its whole log has been handed over.
    """

    logs: dict[str, bytes] = field(default_factory=dict)  # by `log_keys` key
    events: list[AttemptEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Handed:
    """An attempt as the server handed it over: its spec and the slot (placement group) it uses."""

    spec: AttemptSpec
    slot: str


@dataclass(frozen=True)
class Known:
    """What an agent knows of an attempt a restarted server claims."""

    spec: AttemptSpec
    slot: str
    started_at: int | None  # None: not running yet (still queued behind its predecessor)


def log_keys(spec: AttemptSpec) -> list[str]:
    """The logs of an attempt as `NodeReport.logs` keys: the attempt's own (its id), then each
    `ecsProperties` container's with a stream of its own (`<attempt id>/<container name>`)."""
    return [spec.attempt_id] + [f"{spec.attempt_id}/{c.name}" for c in spec.task if c.log_path != spec.log_path]


def attempt_of(key: str) -> str:
    """The attempt a `log_keys` key belongs to."""
    return key.split("/", 1)[0]


def job_environment(node: dict[str, str], server: dict[str, str], extra_names: tuple[str, ...] = ()) -> dict[str, str]:
    """What a job on this node inherits: the part of the node's environment every job may see
    (job_environment.py, plus `extra_names`), with the server's (already reduced the same way) on
    top, except what only makes sense on the server's machine and Ray's own variables."""
    forwarded = {k: v for k, v in server.items() if k not in HOST_SPECIFIC and not k.startswith("RAY_")}
    own = {k: v for k, v in inherited_environment(node, extra_names).items() if not k.startswith("RAY_")}
    return {**own, **forwarded}


class NodeAgent:
    """A Ray actor class (wrapped with `ray.remote` by the server): one per node and server."""

    def __init__(self, node_id: str, tag: str) -> None:
        self._node_id = node_id
        self._root = Path(tempfile.gettempdir()) / "kiln-ray" / f"{tag}-{node_id[:12]}"
        self._logs_dir = self._root / "logs"
        self._work_dir = self._root / "work"
        self._executor: LocalExecutor | None = None
        self._offsets: dict[str, int] = {}  # log key (`log_keys`) -> log bytes already reported
        self._pending: list[AttemptEvent] = []  # exits waiting for the rest of their log
        # Attempts received and not yet acknowledged, as the server sent them (its log paths).
        self._specs: dict[str, AttemptSpec] = {}
        self._started: dict[str, int] = {}  # attempt id -> when it began running
        self._held: dict[str, AttemptExited] = {}  # exits reported, kept until acknowledged
        self._orphans: set[str] = set()  # stopped because no server claims them: not reported
        self._slots: dict[str, str] = {}  # attempt id -> the slot it uses (told back on adoption)
        self._live: set[str] = set()  # given to the engine, exit not taken from it yet
        self._chains = StartChains()
        self._epoch: str | None = None  # the server that configured this agent last
        # Ray runs one method at a time; the pump thread (chains) shares the state with them.
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def configure(self, settings: Settings, server_environment: dict[str, str], epoch: str) -> str:
        """Take the (re)connecting server's settings; from now on only its starts are taken.
        Returns this node's id."""
        catalogue = ImageCatalogue.from_settings(settings)  # Kiln's render worker: this node's venv
        environment = job_environment(dict(os.environ), server_environment, settings.job_environment)
        settings = replace(settings, gpus=None)  # the server's `gpus` is its own host's: each node finds its own
        with self._lock:
            self._epoch = epoch
            if self._executor is None:
                self._executor = LocalExecutor(settings, catalogue)
                self._executor.subscribe(self._wake.set)  # never takes our lock: the engine emits under its own
                threading.Thread(target=self._pump, name="kiln-agent-chains", daemon=True).start()
            self._executor.reconfigure(settings, catalogue, environment)
        return self._node_id

    def describe(self) -> list[str]:
        return self._engine().describe()

    def start(self, attempts: list[Handed], epoch: str) -> None:
        """Run `attempts` (in order; one `start_after` a live one waits for it). Ignored unless
        `epoch` is the server that configured the agent last: a dead server's late hand-over."""
        with self._lock:
            if epoch != self._epoch:
                return
            for handed in attempts:
                spec = handed.spec
                if spec.attempt_id in self._specs:
                    continue  # sent twice: already ours
                self._specs[spec.attempt_id] = spec
                self._slots[spec.attempt_id] = handed.slot
                self._offsets.update(dict.fromkeys(log_keys(spec), 0))
                if not self._chains.hold(spec, self._live):
                    self._launch(spec)

    def terminate(self, attempt_id: str, reason: str) -> None:
        with self._lock:
            if self._chains.drop(attempt_id):  # still queued: it never starts
                self._pending.append(AttemptExited.stopped_before_start(attempt_id, now_ms(), reason))
                return
        self._engine().terminate(attempt_id, reason)

    def report(self) -> NodeReport:
        with self._lock:
            return self._report()

    def _report(self) -> NodeReport:
        report = NodeReport()
        self._absorb()
        for key in list(self._offsets):
            if attempt_of(key) not in self._held:
                chunk = self._read_log(key)
                if chunk:
                    report.logs[key] = chunk
        read = {attempt_of(key) for key in report.logs}
        waiting: list[AttemptEvent] = []
        for event in self._pending:
            if isinstance(event, AttemptExited) and (waiting or event.attempt_id in read):
                waiting.append(event)  # more log may follow: the exit goes out once it is all read
            else:
                report.events.append(event)
                if isinstance(event, AttemptExited):
                    self._held[event.attempt_id] = event  # until the server has recorded it
        self._pending = waiting
        return report

    def acknowledge(self, attempt_ids: list[str]) -> None:
        """The server has durably recorded these exits: forget them, their logs and workdirs."""
        with self._lock:
            for attempt_id in attempt_ids:
                if self._held.pop(attempt_id, None) is not None:
                    self._forget(attempt_id)

    def adopt(self, attempt_ids: list[str]) -> dict[str, Known]:
        """A (re)started server claims `attempt_ids`: which of them this node knows, with the spec
        the server sent, its slot and when it began running. Attempts the server does not claim
        are over for it (it recorded their end, or lost them): they are stopped and forgotten here."""
        with self._lock:
            if self._executor is None:
                return {}  # a new agent: it has run nothing yet
            self._absorb()
            claimed = set(attempt_ids)
            for attempt_id in sorted(set(self._specs) - claimed):
                if self._chains.drop(attempt_id):
                    self._drop(attempt_id)  # queued, never started
                elif attempt_id in self._live:
                    self._orphans.add(attempt_id)
                    self._pending = [e for e in self._pending if e.attempt_id != attempt_id]
                    self._engine().terminate(attempt_id, ORPHAN_REASON)
                else:
                    self._drop(attempt_id)
            return {
                a: Known(self._specs[a], self._slots[a], self._started.get(a))
                for a in sorted(claimed & set(self._specs))
            }

    def resume(self, offsets: dict[str, int]) -> None:
        """Report adopted attempts again: their log from `offsets` (what the server already has),
        a start it may have missed, and any exit it had not recorded."""
        with self._lock:
            self._resume(offsets)

    def _resume(self, offsets: dict[str, int]) -> None:
        replay: list[AttemptEvent] = []
        exits: list[AttemptEvent] = []
        for key, offset in offsets.items():
            if attempt_of(key) in self._specs:
                self._offsets[key] = offset
        for attempt_id in offsets:
            if attempt_id not in self._specs:
                continue  # not an attempt (a container's log key), or not known here
            held = self._held.pop(attempt_id, None)
            if held is not None:
                exits.append(held)
            elif attempt_id in self._started:
                replay.append(AttemptRunning(attempt_id, self._started[attempt_id]))
        rest = [e for e in self._pending if not (isinstance(e, AttemptRunning) and e.attempt_id in offsets)]
        self._pending = [*replay, *rest, *exits]

    def idle(self) -> bool:
        """Nothing runs here and no exit waits for a server: the agent may be removed."""
        with self._lock:
            if self._executor is None:
                return True
            self._absorb()
            return not self._specs and not self._engine().running()

    def _pump(self) -> None:
        """Take the engine's events as they come, so that who waits for an exit starts at once."""
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                self._absorb()

    def _launch(self, spec: AttemptSpec) -> None:
        self._live.add(spec.attempt_id)
        own = self._log_path(spec.attempt_id)
        task = tuple(  # an ecsProperties task's containers log here too, each to its own file
            replace(c, log_path=own if c.log_path == spec.log_path else self._log_path(f"{spec.attempt_id}/{c.name}"))
            for c in spec.task
        )
        self._engine().start(replace(spec, log_path=own, workdir=self._work_dir / spec.attempt_id, task=task))

    def _log_path(self, key: str) -> Path:
        """This node's file of a log key (`log_keys`): `<attempt id>[.<container name>].log`."""
        return self._logs_dir / f"{key.replace('/', '.')}.log"

    def _absorb(self) -> None:
        """Take the engine's new events: an exit starts who waited for it; exits of attempts no
        server claims are dropped here."""
        for event in self._engine().poll():
            if isinstance(event, AttemptRunning):
                self._started[event.attempt_id] = event.at_ms
            else:
                self._live.discard(event.attempt_id)
                for follower in self._chains.released(event.attempt_id):
                    self._launch(follower)
                if event.started and event.started_at is None:
                    event = replace(event, started_at=self._started.get(event.attempt_id))
            if event.attempt_id in self._orphans:
                if isinstance(event, AttemptExited):
                    self._drop(event.attempt_id)
                continue
            self._pending.append(event)

    def _drop(self, attempt_id: str) -> None:
        self._orphans.discard(attempt_id)
        self._held.pop(attempt_id, None)
        self._pending = [e for e in self._pending if e.attempt_id != attempt_id]
        self._forget(attempt_id)

    def _engine(self) -> LocalExecutor:
        if self._executor is None:
            raise RuntimeError("the node agent has not been configured")
        return self._executor

    def _read_log(self, key: str) -> bytes:
        try:
            with self._log_path(key).open("rb") as log:
                log.seek(self._offsets[key])
                chunk = log.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            return b""
        self._offsets[key] += len(chunk)
        return chunk

    def _forget(self, attempt_id: str) -> None:
        for key in [key for key in self._offsets if attempt_of(key) == attempt_id] or [attempt_id]:
            self._offsets.pop(key, None)
            self._log_path(key).unlink(missing_ok=True)
        self._specs.pop(attempt_id, None)
        self._slots.pop(attempt_id, None)
        self._started.pop(attempt_id, None)
        remove_tree(self._work_dir / attempt_id)
