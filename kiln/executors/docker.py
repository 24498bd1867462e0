"""Run each attempt as a Docker container, the way AWS Batch (through ECS) runs it.

The job definition's `image` is passed to the daemon as it is: an image the daemon has is used,
anything else is pulled, and a failed pull fails the attempt before RUNNING with AWS's
`CannotPullContainerError: <daemon message>`. The container gets the job's command (the image's
entrypoint stays), only the job's environment (not the server's), `memory` as a hard limit with
swap equal to it (the kernel kills at the limit), CPU shares of 1,024 per vCPU (plus a CFS quota
for hard-capped compute environments), GPUs as device requests, the definition's volumes, and the
host's network, so a job reaches services on 127.0.0.1 as on the local executor.

An OOM kill anywhere in the container ends the attempt (cgroup v1 kills only the largest process;
the rest is killed too, as on the local executor), reported as AWS's `OutOfMemoryError`, exit 137.

Threads: one reads the daemon's event stream (container start, die, oom: no thread per container
waits for an exit); one fires timeouts and SIGKILLs after the grace period; a small pool makes the
blocking API calls (create, pull, start, inspect, remove); and one thread per running container
copies its output into the attempt's log file while it runs.

Containers carry labels (attempt id, job id, log path, timeout), so a restarted server
re-adopts them: attempts keep running while no server watches them, and one that ended meanwhile
reports its real exit code. A container is removed once its output is in the log file.

An `ecsProperties` attempt (`_Task`) is one container per task container, all on the host network
(they share 127.0.0.1), created together and started and stopped by task_state.py's rules as the
event stream reports their starts and deaths; labels describe each one's place in the task, so a
restarted server takes the task back too. Its results go to the attempt's own log at the end.
An `eksProperties` pod runs the same way by the pod's rules (task_state.py), each container with
its `command` as the entrypoint and its `args` as the command; its hostPath volumes are bind mounts
and its emptyDir volumes Docker volumes of the attempt's own (`kiln-<attempt id>-<volume>`, labelled
with the attempt), shared by the containers that mount them and removed with the task.

A container never sees the control plane: it runs as the definition's `user` (Docker's `--user`,
else the image's), and a volume whose host path is Kiln's data dir, inside it or above it (`/`)
is refused before anything is created.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest, Mount

from kiln.clock import now_ms
from kiln.config import Settings
from kiln.errors import KilnError
from kiln.task_results import result_line

from .base import (
    CANNOT_PULL_PREFIX,
    CANNOT_START_PREFIX,
    ESSENTIAL_CONTAINER_EXITED,
    TASK_FAILED_TO_START,
    Adoption,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    AttemptStop,
    Capacity,
    EventReporter,
    TaskContainer,
    TaskMount,
    VolumeMount,
)
from .task_state import CANNOT_START, Member, TaskState

logger = logging.getLogger(__name__)

LABEL_ATTEMPT = "kiln.attempt-id"
LABEL_JOB = "kiln.job-id"
LABEL_LOG = "kiln.log-path"
LABEL_TIMEOUT = "kiln.timeout-seconds"  # counted from the container's start, also after a restart
LABEL_CONTAINER = "kiln.task-container"  # an ecsProperties task's container: its name in the task
# ...its place in the task (index, essential, dependsOn, stopTimeout) and the attempt's own log, so
# that a restarted server can take the task back.
LABEL_TASK = "kiln.task"
LABEL_TASK_LOG = "kiln.task-log-path"
TASK_NEEDS_HOST_NETWORK = (
    "Kiln runs the containers of an ecsProperties task on the host network, where they share 127.0.0.1; "
    'set docker_network = "host" (the default) in kiln.toml'
)
CANNOT_CREATE_PREFIX = "CannotCreateContainerError"
DAEMON_PREFIX = "Error response from daemon: "
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_WORKERS = 4
JOIN_SECONDS = 10.0
RECONNECT_SECONDS = 1.0
CPU_SHARES_PER_VCPU = 1024
MIB = 1024 * 1024


class DockerUnavailable(KilnError):
    """`kiln server --executor docker` with no daemon to talk to."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"no Docker daemon answers at {url}: start dockerd or use --executor local ({detail})")


def docker_url(settings: Settings) -> str:
    """The daemon Kiln talks to: `docker_host` from the settings, else `$DOCKER_HOST`, else the default socket."""
    return settings.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def data_dir_volume(volumes: Sequence[VolumeMount], data_dir: Path) -> str | None:
    """The first volume host path that is the data dir, inside it, or a directory above it."""
    data = os.path.realpath(data_dir)
    for volume in volumes:
        if volume.host_path is None:
            continue
        host = os.path.realpath(volume.host_path)
        if host == data or data.startswith(host.rstrip(os.sep) + os.sep) or host.startswith(data + os.sep):
            return volume.host_path
    return None


def docker_time_ms(text: str | None) -> int | None:
    """Docker's RFC 3339 nanosecond times (`2026-11-25T21:00:24.39686714Z`) in epoch ms; None when unset."""
    if not text or text.startswith("0001-"):
        return None
    whole, _, fraction = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(whole + "+00:00").timestamp()
    return int(stamp * 1000) + int((fraction + "000")[:3])


@dataclass
class _Attempt:
    """One container and what has happened to it (fields guarded by the executor's lock)."""

    attempt_id: str
    log_path: Path
    stop: AttemptStop  # on the epoch clock: a container's timeout outlives a server restart
    container_id: str | None = None
    started: bool = False  # the daemon reported `start` (or the container was adopted running)
    started_ms: int = 0  # the time reported with AttemptRunning
    finishing: bool = False  # an exit is being collected: later die events change nothing
    launched: threading.Event = field(default_factory=threading.Event)  # create/start call returned
    log_thread: threading.Thread | None = None
    log_stream: Any = None  # the daemon's follow stream, closed at shutdown

    @property
    def stopping(self) -> bool:
        return self.stop.stopping or self.finishing


@dataclass
class _Member:
    """One container of an `ecsProperties` task."""

    spec: TaskContainer
    container_id: str | None = None
    oom: bool = False
    log_thread: threading.Thread | None = None
    log_stream: Any = None


@dataclass
class _Task:
    """An `ecsProperties` attempt: its containers, run by task_state.py's rules (fields guarded by
    the executor's lock). Its own log gets what happened and the containers' results at the end."""

    attempt_id: str
    log_path: Path
    stop: AttemptStop
    state: TaskState
    members: dict[str, _Member]
    grace: float
    created: bool = False  # every container exists: starts may begin
    started: bool = False  # a container started (the attempt is RUNNING)
    started_ms: int = 0
    signalled: bool = False  # the running containers were told to stop
    finishing: bool = False
    notes: list[str] = field(default_factory=list)  # what the attempt's own log says at the end
    launching: set[str] = field(default_factory=set)  # containers whose start call was made


class _StartFailure(Exception):
    """A task's container could not be created: the attempt fails to start with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answering_client(settings: Settings, **options: Any) -> docker.DockerClient:
    """A client of the daemon that answered a ping, or `DockerUnavailable` with what to do about it."""
    url = docker_url(settings)
    try:
        client = docker.DockerClient(base_url=url, version="auto", **options)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerUnavailable(url, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return client


class DockerExecutor(EventReporter):
    """The `Executor` on a Docker daemon (local socket or any `DOCKER_HOST`)."""

    def __init__(self, settings: Settings, client: docker.DockerClient) -> None:
        super().__init__()
        self._settings = settings
        self._client = client
        self._api = client.api
        self._url = docker_url(settings)
        self._attempts: dict[str, _Attempt] = {}
        self._tasks: dict[str, _Task] = {}  # ecsProperties attempts, by attempt id
        self._lock = threading.Lock()
        self._closed = False
        self._pool = ThreadPoolExecutor(API_WORKERS, thread_name_prefix="kiln-docker-api")
        self._timers: list[tuple[float, int, str, str]] = []  # (epoch seconds, tiebreak, action, attempt id)
        self._timer_ids = itertools.count()
        self._timer_wake = threading.Condition(self._lock)
        info = self._api.info()
        self._info = info
        # Subscribe before anything starts, so no container's start or death can be missed.
        self._event_stream = self._subscribe(since=None)
        self._watcher = threading.Thread(target=self._watch_events, name="kiln-docker-events", daemon=True)
        self._watcher.start()
        self._timer_thread = threading.Thread(target=self._run_timers, name="kiln-docker-timers", daemon=True)
        self._timer_thread.start()
        logger.info("docker executor: daemon %s at %s", info.get("ServerVersion", "?"), self._url)

    @classmethod
    def connect(cls, settings: Settings) -> DockerExecutor:
        """Connect to the daemon, or `DockerUnavailable` with what to do about it."""
        return cls(settings, answering_client(settings, max_pool_size=64, timeout=60))

    # -- the Executor protocol ----------------------------------------------------------------

    def capacity(self) -> Capacity:
        return Capacity(
            vcpus=float(self._info.get("NCPU") or self._settings.host_vcpus),
            memory_mib=int(self._info.get("MemTotal") or 0) // MIB or self._settings.host_memory_mib,
            gpus=self._settings.docker_gpus,
            notes=self.describe(),
        )

    def describe(self) -> list[str]:
        return [
            f"containers: Docker {self._info.get('ServerVersion', '?')} at {self._url}",
            "memory: container hard limit, swap equal (the kernel kills at the limit)",
            "cpu: cpu.shares 1024 per vCPU; CFS quota for hard-capped compute environments",
            f"network: {self._settings.docker_network}",
        ]

    def start(self, spec: AttemptSpec) -> None:
        """Register the attempt and create/start its container(s) on the API pool; returns at once."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the docker executor has been shut down")
            if spec.attempt_id in self._attempts or spec.attempt_id in self._tasks:
                raise ValueError(f"attempt {spec.attempt_id} is already running")
            if spec.task:
                task = self._new_task(spec)
                self._tasks[spec.attempt_id] = task
            else:
                attempt = _Attempt(spec.attempt_id, spec.log_path, AttemptStop(spec.timeout_seconds))
                self._attempts[spec.attempt_id] = attempt
        if spec.task:
            self._pool.submit(self._launch_task, task, spec)
        else:
            self._pool.submit(self._launch, attempt, spec)

    def terminate(self, attempt_id: str, reason: str) -> None:
        with self._lock:
            task = self._tasks.get(attempt_id)
            if task is not None:
                if task.finishing or not task.stop.terminate(reason):
                    return
                self._pool_submit(self._stop_task, task)
                return
            attempt = self._attempts.get(attempt_id)
            if attempt is None or attempt.finishing or not attempt.stop.terminate(reason):
                return
        self._pool.submit(self._stop, attempt)

    def running(self) -> set[str]:
        with self._lock:
            return set(self._attempts) | set(self._tasks)

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        """Nothing to forget: a container is removed once its exit is reported."""

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Find the attempts' containers by label: running ones are watched again (their output
        is copied from the start once more), ended ones report their real exit, never-started ones
        (created, never run) are removed and may be started again."""
        wanted = set(attempt_ids)
        if not wanted:
            return Adoption()
        adopted: set[str] = set()
        never_started: set[str] = set()
        tasks: dict[str, list[dict[str, Any]]] = {}
        for summary in self._api.containers(all=True, filters={"label": LABEL_ATTEMPT}):
            labels = summary.get("Labels") or {}
            attempt_id = labels.get(LABEL_ATTEMPT)
            if attempt_id not in wanted or attempt_id in adopted:
                continue
            if labels.get(LABEL_CONTAINER) is not None:  # an ecsProperties task's: taken back as a whole below
                tasks.setdefault(attempt_id, []).append(summary)
                continue
            container_id = summary["Id"]
            timeout = float(labels[LABEL_TIMEOUT]) if labels.get(LABEL_TIMEOUT) else None
            log = Path(labels.get(LABEL_LOG) or os.devnull)
            attempt = _Attempt(attempt_id, log, AttemptStop(timeout), container_id=container_id)
            attempt.started = True
            attempt.launched.set()
            with self._lock:
                self._attempts[attempt_id] = attempt  # before the inspection: a death from now on is seen
            try:
                state = self._api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                self._forget(attempt)
                continue
            if state["Status"] in {"running", "paused", "restarting"}:
                started_ms = attempt.started_ms = docker_time_ms(state.get("StartedAt")) or now_ms()
                self._emit(AttemptRunning(attempt_id, started_ms))
                self._follow_logs(attempt)
                self._schedule_timeout(attempt, started_ms / 1000)
                adopted.add(attempt_id)
            elif state["Status"] in {"exited", "dead"}:
                if self._claim_exit(attempt):  # unless its die event got there first
                    self._finish(attempt)
                adopted.add(attempt_id)
            else:  # created but never started: the previous server died while starting it
                self._remove(container_id)
                self._forget(attempt)
                never_started.add(attempt_id)
        for attempt_id, summaries in tasks.items():
            outcome = self._adopt_task(attempt_id, summaries)
            if outcome == "adopted":
                adopted.add(attempt_id)
            elif outcome == "never started":
                never_started.add(attempt_id)
        return Adoption(frozenset(adopted), frozenset(never_started))

    def _adopt_task(self, attempt_id: str, summaries: list[dict[str, Any]]) -> str:
        """Take back a task from its containers' labels and states: "adopted" (its events and
        timeout from now on as if it had been started here), "never started" (no container ran:
        removed, may start again) or "lost" (its labels do not describe a whole task: removed)."""
        try:
            found = sorted(((json.loads(s["Labels"][LABEL_TASK]), s) for s in summaries), key=lambda p: p[0]["index"])
            specs = [
                TaskContainer(s["Labels"][LABEL_CONTAINER], str(s.get("Image") or ""), [], {}, Path(s["Labels"][LABEL_LOG]),
                              essential=bool(place["essential"]),
                              depends_on=tuple((name, condition) for name, condition in place["dependsOn"]),
                              stop_timeout=place["stopTimeout"])
                for place, s in found
            ]  # fmt: skip
            names = {spec.name for spec in specs}
            if any(name not in names for spec in specs for name, _ in spec.depends_on):
                raise ValueError("a container of the task is missing")
            labels = found[0][1]["Labels"]
            log_path = Path(labels[LABEL_TASK_LOG])
            timeout = float(labels[LABEL_TIMEOUT]) if labels.get(LABEL_TIMEOUT) else None
        except (KeyError, ValueError, TypeError, IndexError):
            for summary in summaries:
                self._remove(summary["Id"])
            return "lost"
        members = [Member(spec.name, spec.essential, spec.depends_on) for spec in specs]
        pod = bool(found[0][0].get("pod"))
        grace = max(float(c.stop_timeout) if c.stop_timeout is not None else self._settings.termination_grace_seconds
                    for c in specs)  # fmt: skip
        task = _Task(attempt_id, log_path, AttemptStop(timeout), TaskState(members, pod=pod),
                     {spec.name: _Member(spec, container_id=s["Id"]) for spec, (_, s) in zip(specs, found, strict=True)},
                     grace, created=True)  # fmt: skip
        with self._lock:
            self._tasks[attempt_id] = task  # before the inspections: a death from now on is seen
        started: list[int] = []
        for member in task.members.values():
            assert member.container_id is not None
            try:
                state = self._api.inspect_container(member.container_id)["State"]
            except docker.errors.NotFound:
                state = {"Status": "dead", "ExitCode": None, "StartedAt": None}
            began = docker_time_ms(state.get("StartedAt"))
            with self._lock:
                if state["Status"] in {"running", "paused", "restarting"}:
                    task.state.start_began(member.spec.name)
                elif began is not None and task.state.members[member.spec.name].exit_code is None:
                    member.oom = bool(state.get("OOMKilled"))
                    code = state.get("ExitCode")
                    task.state.exited(member.spec.name, int(code) if code is not None else 1)
            if began is not None:
                started.append(began)
                self._follow_member_logs(task, member)
        if not started:  # the previous server died between creating and starting it
            with self._lock:
                self._tasks.pop(attempt_id, None)
            self._remove_members(task)
            return "never started"
        with self._lock:
            task.started, task.started_ms = True, min(started)
            self._emit(AttemptRunning(attempt_id, task.started_ms))
        self._schedule_timeout(task, task.started_ms / 1000)
        self._pool_submit(self._advance, task)
        return "adopted"

    def shutdown(self) -> None:
        """Stop watching; containers keep running for the next server to adopt."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams = [a.log_stream for a in self._attempts.values() if a.log_stream is not None]
            streams += [m.log_stream for t in self._tasks.values() for m in t.members.values() if m.log_stream]
            self._timer_wake.notify_all()
        self._close(self._event_stream)
        for stream in streams:
            self._close(stream)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._watcher.join(timeout=5.0)
        self._timer_thread.join(timeout=5.0)
        self._client.close()

    # -- starting ---------------------------------------------------------------------------

    def _launch(self, attempt: _Attempt, spec: AttemptSpec) -> None:
        exposed = data_dir_volume(spec.volumes, self._settings.data_dir)
        if exposed is not None:
            self._not_started(
                attempt,
                f"{CANNOT_CREATE_PREFIX}: {DAEMON_PREFIX}invalid mount config: the host path {exposed} would "
                f"expose Kiln's data dir ({self._settings.data_dir}), which no container may mount",
            )
            return
        try:
            self._create_and_start(attempt, spec)
        except Exception as exc:  # the daemon went away mid-call: the attempt must not hang in STARTING
            logger.exception("cannot start attempt %s", attempt.attempt_id)
            if attempt.container_id is not None:
                self._remove(attempt.container_id)
            self._not_started(attempt, f"{CANNOT_START_PREFIX}: {exc}")

    def _create_and_start(self, attempt: _Attempt, spec: AttemptSpec) -> None:
        """Create (pulling the image if the daemon lacks it) and start the container."""
        try:
            try:
                container_id = self._create(spec)
            except docker.errors.ImageNotFound:
                try:
                    self._pull(spec.image)
                except docker.errors.APIError as exc:
                    self._not_started(attempt, f"{CANNOT_PULL_PREFIX}: {DAEMON_PREFIX}{_explain(exc)}")
                    return
                container_id = self._create(spec)
        except docker.errors.APIError as exc:
            self._not_started(attempt, f"{CANNOT_CREATE_PREFIX}: {DAEMON_PREFIX}{_explain(exc)}")
            return
        attempt.container_id = container_id
        try:
            self._api.start(container_id)
        except docker.errors.APIError as exc:  # e.g. the command is not in the image
            self._remove(container_id)
            self._not_started(attempt, f"{CANNOT_START_PREFIX}: {DAEMON_PREFIX}{_explain(exc)}")
            return
        self._schedule_timeout(attempt, time.time())
        self._follow_logs(attempt)
        attempt.launched.set()
        with self._lock:
            stop = attempt.stop.terminated  # TerminateJob arrived while the container was being created
        if stop:
            self._stop(attempt)

    def _create(self, spec: AttemptSpec) -> str:
        labels = {LABEL_ATTEMPT: spec.attempt_id, LABEL_JOB: spec.job_id, LABEL_LOG: str(spec.log_path)}
        if spec.timeout_seconds:
            labels[LABEL_TIMEOUT] = str(spec.timeout_seconds)
        host_config = self._api.create_host_config(
            mem_limit=spec.memory_mib * MIB,
            memswap_limit=spec.memory_mib * MIB,
            cpu_shares=max(2, int(CPU_SHARES_PER_VCPU * spec.vcpus)),
            nano_cpus=int(spec.vcpus * 1e9) if spec.cpu_hard_cap else None,
            device_requests=[DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])] if spec.gpus else None,
            mounts=[
                Mount(m.container_path, m.host_path, type="bind" if m.host_path else "volume", read_only=m.read_only)
                for m in spec.volumes
            ],
            network_mode=self._settings.docker_network,
        )
        # KILN_VCPUS: how many threads the job may use, as on the local executor (the render worker reads it).
        environment = {"KILN_VCPUS": f"{spec.vcpus:g}", **spec.environment}
        created = self._api.create_container(
            spec.image,
            command=list(spec.command) or None,  # none: the image's CMD, as on AWS
            environment=environment,
            labels=labels,
            host_config=host_config,
            name=f"kiln-{spec.attempt_id}",
            user=spec.user or None,  # none: the image's user, as on AWS
        )
        return str(created["Id"])

    def _pull(self, image: str) -> None:
        repository, tag = _split_tag(image)
        self._api.pull(repository, tag=tag)

    def _not_started(self, attempt: _Attempt, reason: str) -> None:
        logger.info("attempt %s failed to start: %s", attempt.attempt_id, reason)
        attempt.launched.set()
        with self._lock:
            if self._attempts.pop(attempt.attempt_id, None) is None:
                return
        event = AttemptExited(attempt.attempt_id, now_ms(), None, TASK_FAILED_TO_START, reason, started=False)
        self._emit(event)

    # -- output -----------------------------------------------------------------------------

    def _follow_logs(self, attempt: _Attempt) -> None:
        """Copy the container's output (stdout and stderr, as they come) into the attempt's log.

        Always from the first byte, written over the file from its start: after a restart the
        file gets the same bytes again, so a reader's offsets stay valid and nothing is lost.
        """
        assert attempt.container_id is not None
        try:
            stream = self._api.logs(attempt.container_id, stream=True, follow=True, stdout=True, stderr=True)
        except docker.errors.APIError as exc:
            logger.warning("cannot follow the output of %s: %s", attempt.attempt_id, _explain(exc))
            return
        attempt.log_stream = stream
        thread = threading.Thread(
            target=_copy_output,
            args=(stream, attempt.log_path),
            name=f"kiln-docker-log-{attempt.attempt_id}",
            daemon=True,
        )
        attempt.log_thread = thread
        thread.start()

    # -- events, timeouts, stops -----------------------------------------------------------

    def _subscribe(self, since: float | None) -> Any:
        filters = {"type": "container", "label": [LABEL_ATTEMPT], "event": ["start", "die", "oom"]}
        return self._api.events(decode=True, filters=filters, since=since)

    def _watch_events(self) -> None:
        """The one thread that learns of starts and exits; reconnects if the stream breaks."""
        stream = self._event_stream
        while True:
            last = time.time()
            try:
                for event in stream:
                    last = event.get("time", last)
                    self._on_event(event)
            except Exception:  # a broken connection: reconnect below, unless shutting down
                logger.debug("docker event stream broke", exc_info=True)
            with self._lock:
                if self._closed:
                    return
            time.sleep(RECONNECT_SECONDS)
            try:
                stream = self._event_stream = self._subscribe(since=last)
            except docker.errors.DockerException as exc:
                logger.warning("docker event stream lost (%s); retrying", exc)

    def _on_event(self, event: dict[str, Any]) -> None:
        attributes = (event.get("Actor") or {}).get("Attributes", {})
        attempt_id = attributes.get(LABEL_ATTEMPT)
        with self._lock:
            task = self._tasks.get(attempt_id or "")
            if task is not None:
                self._on_task_event(task, attributes.get(LABEL_CONTAINER), event.get("status") or event.get("Action"))
                return
            attempt = self._attempts.get(attempt_id or "")
            if attempt is None:
                return
            action = event.get("status") or event.get("Action")
            if action == "start" and not attempt.started:
                attempt.started = True
                attempt.started_ms = int(event.get("timeNano", time.time_ns())) // 1_000_000
                self._emit(AttemptRunning(attempt.attempt_id, attempt.started_ms))
            elif action == "die" and not attempt.finishing and (attempt.started or attempt.launched.is_set()):
                if not attempt.started:  # its start event was lost (a reconnect): the order still holds
                    attempt.started, attempt.started_ms = True, now_ms()
                    self._emit(AttemptRunning(attempt.attempt_id, attempt.started_ms))
                attempt.finishing = True
                self._pool_submit(self._finish, attempt)
            elif action == "oom" and not attempt.finishing:
                # The kernel killed one process (the largest); like the local executor, and like
                # a container whose essential process died, nothing else of the attempt runs on.
                self._pool_submit(self._kill, attempt)

    def _claim_exit(self, attempt: _Attempt) -> bool:
        """True for the one caller that collects the attempt's exit (die event or adoption)."""
        with self._lock:
            if attempt.finishing:
                return False
            attempt.finishing = True
            return True

    def _pool_submit(self, work: Callable[[Any], None], attempt: _Attempt | _Task) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: the next server adopts the container
            self._pool.submit(work, attempt)

    def _schedule_timeout(self, attempt: _Attempt | _Task, started: float) -> None:
        attempt.stop.running_since(started)
        if attempt.stop.deadline is not None:
            self._add_timer(attempt.stop.deadline, "timeout", attempt.attempt_id)

    def _add_timer(self, when: float, action: str, attempt_id: str) -> None:
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._timer_ids), action, attempt_id))
            self._timer_wake.notify()

    def _run_timers(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._timers or self._timers[0][0] > time.time()):
                    wait = None if not self._timers else max(0.0, self._timers[0][0] - time.time())
                    self._timer_wake.wait(wait)
                if self._closed:
                    return
                _, _, action, attempt_id = heapq.heappop(self._timers)
                attempt: _Attempt | _Task | None = self._attempts.get(attempt_id) or self._tasks.get(attempt_id)
                if attempt is None or attempt.finishing:
                    continue
                if action == "timeout" and not attempt.stop.time_out(time.time()):
                    continue  # another stop came first
            if isinstance(attempt, _Task):
                self._pool_submit(self._stop_task if action == "timeout" else self._kill_task, attempt)
            elif action == "timeout":
                self._pool_submit(self._stop, attempt)
            else:
                self._pool_submit(self._kill, attempt)

    def _stop(self, attempt: _Attempt) -> None:
        """SIGTERM now, SIGKILL after the grace period (Docker's `stop`, without holding a thread)."""
        if not attempt.launched.is_set() or attempt.container_id is None:
            return  # still being created: `_launch` stops it once it runs
        self._signal(attempt, signal.SIGTERM)
        self._add_timer(time.time() + self._settings.termination_grace_seconds, "kill", attempt.attempt_id)

    def _kill(self, attempt: _Attempt) -> None:
        self._signal(attempt, signal.SIGKILL)

    def _signal(self, attempt: _Attempt, signum: signal.Signals) -> None:
        try:
            self._api.kill(attempt.container_id, signal=signum.name)
        except docker.errors.APIError as exc:  # already stopped: its die event follows
            logger.debug("signal %s to %s: %s", signum.name, attempt.attempt_id, _explain(exc))

    # -- exits ------------------------------------------------------------------------------

    def _finish(self, attempt: _Attempt) -> None:
        try:
            self._collect_exit(attempt)
        except Exception as exc:  # the daemon went away: report the exit without its code rather than hang
            logger.exception("cannot read the exit of attempt %s", attempt.attempt_id)
            event = AttemptExited(attempt.attempt_id, now_ms(), None, ESSENTIAL_CONTAINER_EXITED,
                                  f"kiln: cannot read the container's exit: {exc}")  # fmt: skip
            with self._lock:
                if self._attempts.pop(attempt.attempt_id, None) is not None:
                    self._emit(event)

    def _collect_exit(self, attempt: _Attempt) -> None:
        """Wait for the output to be copied, read the exit, remove the container, report."""
        attempt.launched.wait(JOIN_SECONDS)
        if attempt.log_thread is None and attempt.container_id is not None:  # adopted after it ended
            self._follow_logs(attempt)
        if attempt.log_thread is not None:
            attempt.log_thread.join(JOIN_SECONDS)
        assert attempt.container_id is not None
        try:
            state = self._api.inspect_container(attempt.container_id)["State"]
        except docker.errors.NotFound:
            state = {"ExitCode": None, "OOMKilled": False}
        with self._lock:
            if self._closed:
                return  # the next server adopts it and reads the same exit
        self._remove(attempt.container_id)
        event = attempt.stop.ended(
            attempt.attempt_id,
            # The daemon's start event can come after a quick container already finished: never stop before starting.
            max(docker_time_ms(state.get("FinishedAt")) or now_ms(), attempt.started_ms),
            state.get("ExitCode"),
            oom=bool(state.get("OOMKilled")),
        )
        with self._lock:
            if self._attempts.pop(attempt.attempt_id, None) is not None:
                self._emit(event)

    def _remove(self, container_id: str) -> None:
        try:
            self._api.remove_container(container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            logger.warning("cannot remove container %s: %s", container_id[:12], _explain(exc))

    def _forget(self, attempt: _Attempt) -> None:
        with self._lock:
            self._attempts.pop(attempt.attempt_id, None)

    @staticmethod
    def _close(stream: Any) -> None:
        try:
            stream.close()
        except Exception:  # already closed or broken: nothing left to release
            logger.debug("closing a docker stream", exc_info=True)

    # -- ecsProperties tasks: one container per task container ---------------------------------

    def _new_task(self, spec: AttemptSpec) -> _Task:
        members = [Member(c.name, c.essential, c.depends_on) for c in spec.task]
        state = TaskState(members, pod=spec.pod)
        grace = max(
            float(c.stop_timeout) if c.stop_timeout is not None else self._settings.termination_grace_seconds
            for c in spec.task
        )
        return _Task(spec.attempt_id, spec.log_path, AttemptStop(spec.timeout_seconds), state,
                     {c.name: _Member(c) for c in spec.task}, grace)  # fmt: skip

    def _launch_task(self, task: _Task, spec: AttemptSpec) -> None:
        """Create every container first (a missing image fails the start before anything runs),
        then start those whose dependsOn conditions hold. All of them are on the host's network,
        so 127.0.0.1 is the same for every container (another mode would need one of them to run
        before, and as long as, all the others, which dependsOn does not promise)."""
        if self._settings.docker_network != "host":
            self._task_ended_unstarted(task, TASK_FAILED_TO_START, f"{CANNOT_START_PREFIX}: {TASK_NEEDS_HOST_NETWORK} "
                                       f"(this server's docker_network is {self._settings.docker_network})")  # fmt: skip
            return
        sub_path = next((m for c in spec.task for m in c.mounts if m.host_path is None and m.sub_path), None)
        if sub_path is not None:  # older daemons ignore a volume subpath: refused rather than mounted whole
            self._task_ended_unstarted(task, TASK_FAILED_TO_START, f"{CANNOT_CREATE_PREFIX}: Kiln's Docker executor "
                                       f"cannot mount a subPath ({sub_path.sub_path}) of emptyDir volume "
                                       f"{sub_path.volume}; mount the whole volume")  # fmt: skip
            return
        host_paths = [VolumeMount(m.container_path, m.host_path) for c in spec.task for m in c.mounts if m.host_path]
        exposed = data_dir_volume(host_paths, self._settings.data_dir)
        if exposed is not None:
            self._task_ended_unstarted(task, TASK_FAILED_TO_START, f"{CANNOT_CREATE_PREFIX}: {DAEMON_PREFIX}invalid "
                                       f"mount config: the host path {exposed} would expose Kiln's data dir "
                                       f"({self._settings.data_dir}), which no container may mount")  # fmt: skip
            return
        try:
            for name in sorted({m.volume for c in spec.task for m in c.mounts if m.host_path is None}):
                self._api.create_volume(_pod_volume(spec.attempt_id, name), labels={LABEL_ATTEMPT: spec.attempt_id})
            for member in task.members.values():
                member.container_id = self._create_member(spec, member.spec, "host")
        except Exception as exc:  # the daemon's refusal, or the daemon went away
            reason = exc.reason if isinstance(exc, _StartFailure) else f"{CANNOT_START_PREFIX}: {exc}"
            if not isinstance(exc, _StartFailure):
                logger.exception("cannot start attempt %s", task.attempt_id)
            self._remove_members(task)
            self._task_ended_unstarted(task, TASK_FAILED_TO_START, reason)
            return
        with self._lock:
            task.created = True
            if task.stop.terminated:  # TerminateJob arrived while the containers were being created
                task.signalled = True
                task.state.stop()
        self._advance(task)

    def _create_member(self, spec: AttemptSpec, member: TaskContainer, network: str) -> str:
        place = {
            "index": [c.name for c in spec.task].index(member.name),
            "essential": member.essential,
            "dependsOn": [list(pair) for pair in member.depends_on],
            "stopTimeout": member.stop_timeout,
            "pod": spec.pod,
        }
        labels = {
            LABEL_ATTEMPT: spec.attempt_id,
            LABEL_JOB: spec.job_id,
            LABEL_LOG: str(member.log_path),
            LABEL_CONTAINER: member.name,
            LABEL_TASK: json.dumps(place),
            LABEL_TASK_LOG: str(spec.log_path),
        }
        if spec.timeout_seconds:
            labels[LABEL_TIMEOUT] = str(spec.timeout_seconds)
        memory = member.memory_mib or spec.memory_mib  # its own limit, as ECS gives a container with memory
        vcpus = member.vcpus or spec.vcpus
        host_config = self._api.create_host_config(
            mem_limit=memory * MIB,
            memswap_limit=memory * MIB,
            cpu_shares=max(2, int(CPU_SHARES_PER_VCPU * vcpus)),
            nano_cpus=int(vcpus * 1e9) if spec.cpu_hard_cap else None,
            device_requests=[DeviceRequest(count=member.gpus, capabilities=[["gpu"]])] if member.gpus else None,
            network_mode=network,
            mounts=[_pod_mount(spec.attempt_id, mount) for mount in member.mounts] or None,
        )

        def create() -> str:
            created = self._api.create_container(
                member.image, command=list(member.command) or None,
                environment={"KILN_VCPUS": f"{vcpus:g}", **member.environment}, labels=labels,
                host_config=host_config, name=f"kiln-{spec.attempt_id}-{member.name}", user=spec.user or None,
                entrypoint=member.entrypoint,  # a pod's container's `command`; None: the image's
            )  # fmt: skip
            return str(created["Id"])

        try:
            try:
                return create()
            except docker.errors.ImageNotFound:
                try:
                    self._pull(member.image)
                except docker.errors.APIError as exc:
                    raise _StartFailure(f"{CANNOT_PULL_PREFIX}: {DAEMON_PREFIX}{_explain(exc)}") from None
                return create()
        except docker.errors.APIError as exc:
            raise _StartFailure(f"{CANNOT_CREATE_PREFIX}: {DAEMON_PREFIX}{_explain(exc)}") from None

    def _on_task_event(self, task: _Task, name: str | None, action: str | None) -> None:
        """A task container's start, death or OOM kill (called with the lock held)."""
        member = task.members.get(name or "")
        if member is None or task.finishing:
            return
        if action == "start" and not task.started:
            task.started, task.started_ms = True, now_ms()
            self._emit(AttemptRunning(task.attempt_id, task.started_ms))
            self._pool_submit(lambda t: self._schedule_timeout(t, time.time()), task)
        elif action == "die":
            self._pool_submit(lambda t: self._member_died(t, member), task)
        elif action == "oom":  # as for one container: nothing of the task runs on
            self._pool_submit(self._kill_task, task)

    def _member_died(self, task: _Task, member: _Member) -> None:
        assert member.container_id is not None
        try:
            state = self._api.inspect_container(member.container_id)["State"]
        except docker.errors.NotFound:
            state = {}
        with self._lock:
            if task.state.members[member.spec.name].exit_code is not None:
                return
            if not task.started:  # its start event was lost (a reconnect): the order still holds
                task.started, task.started_ms = True, now_ms()
                self._emit(AttemptRunning(task.attempt_id, task.started_ms))
            member.oom = bool(state.get("OOMKilled"))
            code = state.get("ExitCode")
            task.state.exited(member.spec.name, int(code) if code is not None else 1)
            task.notes.append(f"container {member.spec.name} exited with code {code}")
        self._advance(task)

    def _advance(self, task: _Task) -> None:
        """Start what may start, stop the rest once the task ends, finish once nothing runs."""
        while True:
            with self._lock:
                if task.finishing or not task.created:
                    return
                batch = [state for state in task.state.ready() if state.name not in task.launching]
                task.launching.update(state.name for state in batch)  # another thread's pass leaves them
            if not batch:
                break
            for state in batch:
                member = task.members[state.name]
                assert member.container_id is not None
                try:
                    self._api.start(member.container_id)
                except docker.errors.APIError as exc:  # e.g. the command is not in the image
                    with self._lock:
                        task.state.skip(state, f"{CANNOT_START}: {DAEMON_PREFIX}{_explain(exc)}")
                    continue
                with self._lock:
                    task.state.start_began(state.name)
                    task.notes.append(f"container {state.name} started")
                self._follow_member_logs(task, member)
        with self._lock:
            signal_now = task.state.stopping and not task.signalled
            running = task.state.stop() if signal_now else []
            task.signalled = task.signalled or signal_now
            finish = task.state.all_done and not task.finishing
            task.finishing = task.finishing or finish
        if signal_now:
            self._signal_members(task, running, signal.SIGTERM)
            self._add_timer(time.time() + task.grace, "kill", task.attempt_id)
        if finish:
            self._finish_task(task)

    def _follow_member_logs(self, task: _Task, member: _Member) -> None:
        assert member.container_id is not None
        try:
            stream = self._api.logs(member.container_id, stream=True, follow=True, stdout=True, stderr=True)
        except docker.errors.APIError as exc:
            logger.warning("cannot follow the output of %s/%s: %s", task.attempt_id, member.spec.name, _explain(exc))
            return
        member.log_stream = stream
        member.log_thread = threading.Thread(target=_copy_output, args=(stream, member.spec.log_path),
                                             name=f"kiln-docker-log-{task.attempt_id}-{member.spec.name}",
                                             daemon=True)  # fmt: skip
        member.log_thread.start()

    def _stop_task(self, task: _Task) -> None:
        """TerminateJob or the timeout: every running container gets SIGTERM, SIGKILL after the grace."""
        with self._lock:
            if task.signalled or task.finishing:
                return
            task.signalled = True
            running = task.state.stop()
        self._signal_members(task, running, signal.SIGTERM)
        self._add_timer(time.time() + task.grace, "kill", task.attempt_id)
        self._advance(task)

    def _kill_task(self, task: _Task) -> None:
        with self._lock:
            running = [m for m in task.state.members.values() if m.running]
        self._signal_members(task, running, signal.SIGKILL)

    def _signal_members(self, task: _Task, running: list[Member], signum: signal.Signals) -> None:
        for state in running:
            container_id = task.members[state.name].container_id
            try:
                self._api.kill(container_id, signal=signum.name)
            except docker.errors.APIError as exc:  # already stopped: its die event follows
                logger.debug("signal %s to %s/%s: %s", signum.name, task.attempt_id, state.name, _explain(exc))

    def _finish_task(self, task: _Task) -> None:
        """Every container is done: copy the last output, write the results, remove, report."""
        for member in task.members.values():
            if member.log_thread is not None:
                member.log_thread.join(JOIN_SECONDS)
        with self._lock:
            if self._closed:
                return
            lines = [f"kiln: {note}" for note in task.notes]
            lines += [f"kiln: container {m.name} not started: {m.reason}" for m in task.state.members.values()
                      if m.skipped]  # fmt: skip
            lines.append(result_line(task.state.results()))
            ending = task.state.ending
        try:
            task.log_path.parent.mkdir(parents=True, exist_ok=True)
            with task.log_path.open("a") as log:
                log.write("".join(line + "\n" for line in lines))
        except OSError:
            logger.exception("cannot write the results of attempt %s", task.attempt_id)
        self._remove_members(task)
        if not task.started:  # nothing ever ran: stopped while being created, or no essential one could start
            reason = None if ending is None or task.stop.terminated else ending.reason
            self._task_ended_unstarted(task, task.stop.terminate_reason or TASK_FAILED_TO_START, reason)
            return
        event = task.stop.ended(task.attempt_id, max(now_ms(), task.started_ms), task.state.exit_code,
                                oom=any(m.oom for m in task.members.values()))  # fmt: skip
        with self._lock:
            if self._tasks.pop(task.attempt_id, None) is not None:
                self._emit(event)

    def _task_ended_unstarted(self, task: _Task, status_reason: str, reason: str | None) -> None:
        with self._lock:
            if self._tasks.pop(task.attempt_id, None) is None:
                return
        terminated = task.stop.terminated
        self._emit(AttemptExited(task.attempt_id, now_ms(), None, status_reason, reason, started=False,
                                 terminated=terminated))  # fmt: skip

    def _remove_members(self, task: _Task) -> None:
        for member in task.members.values():
            if member.container_id is not None:
                self._remove(member.container_id)
        if not task.state.pod:
            return
        try:  # a pod's emptyDir volumes, found by their label (also after a restart)
            listed = self._api.volumes(filters={"label": f"{LABEL_ATTEMPT}={task.attempt_id}"}) or {}
            for volume in listed.get("Volumes") or []:
                self._api.remove_volume(volume["Name"], force=True)
        except docker.errors.APIError as exc:
            logger.warning("cannot remove the volumes of attempt %s: %s", task.attempt_id, _explain(exc))


def _pod_volume(attempt_id: str, volume: str) -> str:
    """The Docker volume of a pod's emptyDir volume, the attempt's own."""
    return f"kiln-{attempt_id}-{volume}"


def _pod_mount(attempt_id: str, mount: TaskMount) -> Mount:
    """A pod container's volume mount: a bind mount of a hostPath volume (its subPath joined), or
    the attempt's Docker volume for an emptyDir (whole: a subPath of it is refused at start)."""
    if mount.host_path is not None:
        source = os.path.join(mount.host_path, mount.sub_path) if mount.sub_path else mount.host_path
        return Mount(mount.container_path, source, type="bind", read_only=mount.read_only)
    return Mount(mount.container_path, _pod_volume(attempt_id, mount.volume), type="volume", read_only=mount.read_only)


def _copy_output(stream: Iterator[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    written = 0
    try:
        for chunk in stream:
            os.write(fd, chunk)
            written += len(chunk)
        os.ftruncate(fd, written)  # the whole output is in: nothing stale may follow it
    except Exception:  # stream closed at shutdown or the daemon went away: the next server copies again
        logger.debug("output copy to %s stopped", path, exc_info=True)
    finally:
        os.close(fd)


def _explain(exc: docker.errors.APIError) -> str:
    """The daemon's own message (what AWS puts after `Error response from daemon:`)."""
    return str(exc.explanation or exc)


def _split_tag(image: str) -> tuple[str, str]:
    """`repo[:tag]` or `repo@digest` -> (repository, tag or digest); `latest` when none, as Docker does."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"
