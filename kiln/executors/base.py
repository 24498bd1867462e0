"""The executor interface: start an attempt, report what happened to it, stop it.

The scheduler never blocks on an executor: `start` returns at once and outcomes arrive as events
pulled with `poll`. Every implementation (local processes, Ray, Docker) reports the same events with
the same AWS reason strings, so the domain never knows which one ran the attempt.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kiln.clock import now_ms

logger = logging.getLogger(__name__)

# Exact AWS texts an executor reports, as DescribeJobs shows them on AWS (statusReason and
# container.reason; https://docs.aws.amazon.com/batch/latest/userguide/job_states.html).
ESSENTIAL_CONTAINER_EXITED = "Essential container in task exited"
TASK_FAILED_TO_START = "Task failed to start"
CANNOT_START_PREFIX = "CannotStartContainerError"  # the container reason of an attempt that could not start
TIMEOUT_STATUS_REASON = "Job attempt duration exceeded timeout"
OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
CANNOT_PULL_PREFIX = "CannotPullContainerError"
OOM_EXIT_CODE = 137
# The host an attempt ran on went away (AWS's text; `evaluateOnExit` may match `Host EC2*`).
HOST_TERMINATED = "Host EC2 (instance {host}) terminated."


def local_host_id() -> str:
    """This machine as an AWS-style instance name, for host-lost reasons."""
    return f"kiln-{socket.gethostname()}"


@dataclass(frozen=True)
class VolumeMount:
    """One `mountPoints` entry joined with its `volumes` entry from the job definition.

    `host_path` None: a volume without `host.sourcePath`, which the container engine creates
    empty for the attempt (Docker: an anonymous volume, removed with the container).
    """

    container_path: str
    host_path: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class GangMember:
    """The attempt is node `index` of a multi-node parallel job placed as one gang of `size`.

    All members of a gang are handed to `start` in one scheduler pass, the main node first. An
    executor spanning several hosts places them together and gives the other nodes the main
    node's address in `AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS` (one host: 127.0.0.1).
    """

    gang_id: str  # the MNP job's id and attempt number: the same for every member of one gang
    index: int
    size: int
    main: int


@dataclass(frozen=True)
class TaskMount:
    """A volume an `eksProperties` pod's container mounts: `volume`'s directory (its `sub_path`
    inside it) at `container_path`. `host_path` is a hostPath volume's path; None is an emptyDir,
    which the executor makes for the attempt, shared by every container that mounts it."""

    container_path: str
    volume: str
    host_path: str | None = None
    sub_path: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class TaskContainer:
    """One container of an attempt that runs an `ecsProperties` task (several containers).

    `environment` is the container's own, `AWS_BATCH_*` included (already merged); `log_path` is
    where its output goes (its own log stream). `depends_on` holds (container name, START |
    COMPLETE | SUCCESS) pairs; `stop_timeout` its grace between SIGTERM and SIGKILL, if it sets one.
    """

    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    log_path: Path
    essential: bool = True
    depends_on: tuple[tuple[str, str], ...] = ()
    stop_timeout: int | None = None
    # Its own share of the job's resources, where it gives one: the Docker executor limits each
    # container by it (else by the job's); the local executor limits the attempt as a whole.
    vcpus: float | None = None
    memory_mib: int | None = None
    gpus: int = 0
    # A pod's container (`eksProperties`): its `command`, which replaces the image's entrypoint
    # (None: the image's, then `command` as the arguments), and its volume mounts.
    entrypoint: list[str] | None = None
    mounts: tuple[TaskMount, ...] = ()


@dataclass(frozen=True)
class AttemptSpec:
    """Everything needed to run one attempt, already resolved by the domain."""

    attempt_id: str  # unique task id; also the last part of the log stream name
    job_id: str
    image: str
    command: list[str]  # after Ref:: substitution; the image entrypoint is the executor's business
    environment: dict[str, str]  # definition env < overrides < AWS_BATCH_* (already merged)
    vcpus: float
    memory_mib: int
    log_path: Path  # stdout and stderr of the attempt, appended as they come
    workdir: Path  # created by the executor, removed when the attempt ends
    gpus: int = 0
    timeout_seconds: int | None = None
    cpu_hard_cap: bool = False  # also set a CFS quota of `vcpus` CPUs, not just a weight
    volumes: tuple[VolumeMount, ...] = ()  # container executors only: the local one runs on the host's paths
    # Start only once this attempt (same resources, same compute environment) has ended: it hands
    # its place over without a round trip through the scheduler. Only for executors whose
    # `Capacity.start_after` is True.
    start_after: str | None = None
    gang: GangMember | None = None  # a node of a multi-node parallel job
    # containerProperties.user: who the job runs as (None: the executor's default job user).
    user: str | None = None
    # An `ecsProperties` job: its containers, run together as this one attempt (`image` and
    # `command` are then the first essential container's, for messages only). Executors that cannot
    # run them fail the attempt's start saying so.
    task: tuple[TaskContainer, ...] = ()
    # The task is an `eksProperties` pod: no container's end stops the others, and the attempt
    # fails with the first container that fails (kiln/executors/task_state.py).
    pod: bool = False


@dataclass(frozen=True)
class AttemptRunning:
    """The attempt's process is up (STARTING -> RUNNING)."""

    attempt_id: str
    at_ms: int
    host: str | None = None  # the node it runs on, for executors with several (Ray)


@dataclass(frozen=True)
class AttemptExited:
    """The attempt is over and nothing of it is left running.

    `status_reason` is the attempt's AWS status reason (`Essential container in task exited`,
    `Task failed to start`, `Job attempt duration exceeded timeout`, or the terminate reason);
    `reason` is the container reason (`OutOfMemoryError: ...`, `CannotPullContainerError: ...`).
    `started` is False when the attempt never reached RUNNING (e.g. unknown image).
    """

    attempt_id: str
    at_ms: int
    exit_code: int | None
    status_reason: str
    reason: str | None = None
    started: bool = True
    oom: bool = False
    timed_out: bool = False
    terminated: bool = False
    # When it began running, if known: lets a server that missed the `AttemptRunning` (it was
    # down) still record the real start.
    started_at: int | None = None
    host: str | None = None  # the node it ran on, for executors with several (Ray)

    @classmethod
    def failed_to_start(cls, attempt_id: str, reason: str) -> AttemptExited:
        """It never ran: `reason` (`CannotStartContainerError: ...`) says why."""
        return cls(attempt_id, now_ms(), None, TASK_FAILED_TO_START, reason, started=False)

    @classmethod
    def stopped_before_start(cls, attempt_id: str, at_ms: int, reason: str) -> AttemptExited:
        """Terminated (`reason`) while it waited, before any process of it existed."""
        return cls(attempt_id, at_ms, None, reason, started=False, terminated=True)


AttemptEvent = AttemptRunning | AttemptExited


def attempt_ended(
    attempt_id: str,
    at_ms: int,
    exit_code: int | None,
    *,
    oom: bool = False,
    timed_out: bool = False,
    terminated: bool = False,
    terminate_reason: str = "",
) -> AttemptExited:
    """What an attempt that ran reports at its end, in AWS's words: the terminate reason, else the
    timeout's, else `Essential container in task exited`; an OOM kill is exit code 137 with AWS's
    container reason, whatever code the kernel's kill left."""
    if terminated:
        status_reason = terminate_reason
    elif timed_out:
        status_reason = TIMEOUT_STATUS_REASON
    else:
        status_reason = ESSENTIAL_CONTAINER_EXITED
    return AttemptExited(
        attempt_id=attempt_id,
        at_ms=at_ms,
        exit_code=OOM_EXIT_CODE if oom else exit_code,
        status_reason=status_reason,
        reason=OOM_REASON if oom else None,
        oom=oom,
        timed_out=timed_out,
        terminated=terminated,
    )


@dataclass
class AttemptStop:
    """Why and how far an attempt is being stopped: what every executor keeps per attempt, so that
    the first stop wins (a terminate after the timeout fired changes nothing, and the reason stays
    the timeout's) and the end is reported in AWS's words. Times are on the executor's own clock
    (monotonic for processes, the epoch for containers that outlive the server)."""

    timeout_seconds: float | None = None
    deadline: float | None = None  # set when the attempt starts running: AWS counts from startedAt
    timed_out: bool = False
    terminated: bool = False
    terminate_reason: str = ""
    oom: bool = False
    kill_at: float | None = None  # when the grace after SIGTERM is over and SIGKILL follows

    @property
    def stopping(self) -> bool:
        return self.oom or self.timed_out or self.terminated

    def running_since(self, at: float) -> None:
        """The attempt runs from `at`: its timeout (if any) is due `timeout_seconds` later."""
        if self.timeout_seconds:
            self.deadline = at + self.timeout_seconds

    def terminate(self, reason: str) -> bool:
        """A terminate request; True when it is the stop to carry out (no other is under way)."""
        if self.stopping:
            return False
        self.terminated, self.terminate_reason = True, reason
        return True

    def time_out(self, now: float) -> bool:
        """True once: when the deadline has passed and no other stop is under way."""
        if self.deadline is None or now < self.deadline or self.stopping:
            return False
        self.timed_out = True
        return True

    def grace(self, now: float, seconds: float) -> None:
        """SIGTERM was sent at `now`: SIGKILL is due `seconds` later (never later than already due)."""
        kill_at = now + seconds
        self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)

    def kill_due(self, now: float) -> bool:
        return self.kill_at is not None and now >= self.kill_at

    def ended(self, attempt_id: str, at_ms: int, exit_code: int | None, *, oom: bool = False) -> AttemptExited:
        """The attempt's `AttemptExited`; `oom` adds what the executor learnt only at the end."""
        return attempt_ended(
            attempt_id, at_ms, exit_code, oom=self.oom or oom, timed_out=self.timed_out,
            terminated=self.terminated, terminate_reason=self.terminate_reason,
        )  # fmt: skip


class EventReporter:
    """What every executor shares towards the scheduler: events queued in the order they happened
    for `poll`, and the listener (the scheduler's wake) called the moment one is queued, from
    whichever thread saw it."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[AttemptEvent] = queue.SimpleQueue()
        self._listener: Callable[[], None] = lambda: None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener` is called whenever `poll` has new events."""
        self._listener = listener

    def poll(self) -> list[AttemptEvent]:
        """Everything queued so far, in order, without waiting."""
        drained: list[AttemptEvent] = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except queue.Empty:
                return drained

    def _emit(self, event: AttemptEvent) -> None:
        self._events.put(event)
        self._listener()

    def start(self, spec: AttemptSpec) -> None:
        raise NotImplementedError  # each executor's own

    def start_many(self, specs: Sequence[AttemptSpec]) -> None:
        """One `start` after another; a start that raises (an executor's bug) fails that attempt
        alone, as an exit that never started, and the others still start."""
        for spec in specs:
            try:
                self.start(spec)
            except Exception as exc:
                logger.exception("cannot start attempt %s", spec.attempt_id)
                self._emit(AttemptExited.failed_to_start(spec.attempt_id, f"{CANNOT_START_PREFIX}: {exc}"))


@dataclass
class Capacity:
    """What an executor can run at once on its hosts."""

    vcpus: float
    memory_mib: int
    gpus: int = 0
    notes: list[str] = field(default_factory=list)
    start_after: bool = False  # honours `AttemptSpec.start_after`
    # (vcpus, memory MiB, gpus) of the largest single host, where there are several (Ray): a job
    # larger than it never fits, however much the hosts have together.
    largest_host: tuple[float, int, int] | None = None


@dataclass(frozen=True)
class Adoption:
    """What an executor could account for of the attempts a previous server placed.

    `known`: still running (their events arrive through `poll` as usual) or already over (their
    `AttemptExited`, with the real exit status and time, is queued for `poll`). `never_started`:
    provably never received (the server died between committing a placement and handing it
    over), so starting them now is not a second run.
    """

    known: frozenset[str] = frozenset()
    never_started: frozenset[str] = frozenset()


class Executor(Protocol):
    """What the scheduler needs from anything that runs attempts."""

    def capacity(self) -> Capacity:
        """Total resources of the hosts this executor places on."""
        ...

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from any thread) whenever `poll` has new events: the scheduler wakes."""
        ...

    def start(self, spec: AttemptSpec) -> None:
        """Begin the attempt and return at once; failures to start arrive as `AttemptExited`."""
        ...

    def start_many(self, specs: Sequence[AttemptSpec]) -> None:
        """`start` each, in order (a tick's placements); an executor that talks to another process
        sends them together."""
        ...

    def terminate(self, attempt_id: str, reason: str) -> None:
        """SIGTERM the attempt's whole process tree, SIGKILL after the grace period.

        The resulting `AttemptExited` carries `terminated=True` and `status_reason=reason`.
        Unknown or finished attempts are ignored.
        """
        ...

    def poll(self) -> list[AttemptEvent]:
        """Events since the last call, in the order they happened."""
        ...

    def running(self) -> set[str]:
        """Attempt ids that are still alive."""
        ...

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        """The server has durably recorded these attempts' exits: the executor may forget them."""
        ...

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Take back attempts a previous server process placed (restart after a crash or a stop).

        See `Adoption`. Ids neither known nor never-started are lost: the executor makes sure
        nothing of them is left running, and the scheduler fails them as a lost host.
        """
        ...

    def shutdown(self) -> None:
        """Stop watching (server exit); attempts keep running for the next server to `adopt`.

        Safe to call twice.
        """
        ...
