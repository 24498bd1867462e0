"""Run attempts as processes on this host, with the limits and outcomes AWS Batch would give them.

Each attempt is one process tree that is inside its cgroups from its first instruction. The
child joins the attempt's groups itself, between fork and exec, on the job's CPU time: moving the
server's own thread in and out of the groups instead was measured slower, because cgroup migration
is slow and it serialised on the server. The C extension `_spawn` does that in a vfork child; where
it was not built (no C compiler at install), a tiny `/bin/sh` wrapper joins the groups and `exec`s
the job (same pid), which costs every job a second exec. A program that cannot be found, or a step
before its exec that fails, fails to start (`CannotStartContainerError`), as in a container.

Processes are started in the order `start` was called, by a thread that does only that: a vfork
parent waits until its child has exec'd, which on a busy host (the child waits for a CPU) is most of
a start. In `driven` mode (the attempt supervisor's) that thread is the C launcher's own, which never
takes the GIL, and everything else runs on the owner's one thread; otherwise it is a Python spawner
thread, beside a monitor thread.

The monitor watches every attempt (a thread per attempt would not scale to many small
jobs). It sleeps on the attempts' pidfds, so an exit is seen at once, not at the next poll; a
periodic pass turns the kernel's OOM kills (or the watchdog's verdict) into AWS's OOM outcome and
enforces timeouts and terminate requests (SIGTERM the tree, SIGKILL after the grace). An attempt's
exit is reported only once no process of it is left - like a container, whose other processes die
with its essential one - and the listener (the scheduler) is woken at once.

A job runs as its user (job_users.py: by default under a root supervisor, a uid of its own lent for
the attempt, so that no job reads or signals another's processes), in a workdir it owns, with the
short inherited environment of job_environment.py: it cannot read or write the data dir, the
supervisor's socket or other jobs' logs. The launcher switches user last, after joining the cgroups
and opening the log, which need the supervisor's rights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import psutil

from kiln.clock import now_ms
from kiln.config import Settings
from kiln.errors import KilnError, ValidationError
from kiln.private_files import PRIVATE_FILE_MODE, open_private_log

from .base import (
    CANNOT_START_PREFIX,
    TASK_FAILED_TO_START,
    Adoption,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    AttemptStop,
    Capacity,
    EventReporter,
)
from .cgroup_pool import CgroupPool
from .cgroups import MIB, AttemptCgroups, CgroupSupport, attempt_group_name, detect_cgroups
from .gpu_devices import GpuAllocator, NotEnoughGpus, host_gpus
from .images import ImageCatalogue, ImageNotFound
from .job_environment import identity_environment, inherited_environment
from .job_mounts import JobMounts, paths_jobs_need
from .job_users import JobUser, JobUsers, UidPool, UserRefused, blocked_on_the_way
from .log_files import LogFilePool
from .process_tree import ChildrenMap, ProcessTree, children_snapshot, exit_code_from_returncode
from .task_runner import FIRST_LOG_FD, plan_of, runner_argv
from .workdirs import WorkdirPool

native_spawn: ModuleType | None
try:
    from . import _spawn as native_spawn
except ImportError:  # built without a C compiler: the /bin/sh wrapper below does the same job
    native_spawn = None

logger = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.05
PROGRAM_CACHE = 256
SHUTDOWN_GRACE_SECONDS = 1.0
SHUTDOWN_REASON = "Terminated because the Kiln server is shutting down"
NO_COMMAND_REASON = f"{CANNOT_START_PREFIX}: Error response from daemon: No command specified"
DEFAULT_SIGNALS = frozenset(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP}  # every one a job may catch
WRAPPER_EXIT_CODE = 125  # Docker's code for "the container runtime itself failed"
TASK_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW

# The portable launcher, `sh -c WRAPPER_SCRIPT kiln-attempt WORKDIR [PROCS_FILE ...] -- ARGV...`:
# enter the workdir, join every cgroup listed, then become the job (same pid, nothing left behind);
# ARGV starts with `setpriv --reuid ...` when the job runs as another user.
WRAPPER_SCRIPT = (
    f'cd "$1" || exit {WRAPPER_EXIT_CODE}; shift; '
    'while [ "$#" -gt 0 ] && [ "$1" != -- ]; do '
    f'echo $$ > "$1" || {{ echo "kiln: cannot join cgroup $1" >&2; exit {WRAPPER_EXIT_CODE}; }}; '
    'shift; done; shift; exec "$@"'
)


class NoCommand(KilnError):
    """A container of a task has neither an entrypoint nor a command."""


class ProgramUnreachable(OSError):
    """The job's user may not execute its program (a directory on the way is closed to it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class SpawnedProcess:
    """The `Popen` subset the monitor needs, for a child started with `os.posix_spawn`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap without blocking; like `Popen.poll`, -N means killed by signal N."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: report an unknown failure
                self.returncode = WRAPPER_EXIT_CODE
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass
class _Attempt:
    """One running attempt and what has happened to it so far (guarded by the executor's lock)."""

    spec: AttemptSpec
    process: SpawnedProcess
    tree: ProcessTree
    cgroups: AttemptCgroups
    stop: AttemptStop  # on the monotonic clock
    pidfd: int | None = None  # readable once the essential process has exited
    exit_code: int | None = None  # of the essential process, once reaped (128 + N for signal N)

    @property
    def stopping(self) -> bool:
        """A stop is under way (or the job ended): later stop requests change nothing."""
        return self.stop.stopping or self.exit_code is not None

    def exit_event(self) -> AttemptExited:
        return self.stop.ended(self.spec.attempt_id, now_ms(), self.exit_code)


class LocalExecutor(EventReporter):
    """The `Executor` for this host: processes, cgroup limits where possible, fallbacks elsewhere.

    `use_cgroups=False` forces the fallbacks (psutil watchdog, process-group tracking), for tests
    and for hosts where cgroups misbehave; `shell_launcher=True` forces the `/bin/sh` wrapper
    instead of the C launcher (tests; it is also what runs when the extension was not built).

    `driven=True` runs no thread of its own: `start` launches at once in the caller's thread, and
    the owner's event loop watches `fileno()` and calls `service()` when it is readable or
    `seconds_to_next_pass()` has passed. The attempt supervisor runs it so: with the spawner and
    monitor threads, every attempt crossed three threads, and the waits for the GIL and the
    executor's lock between them were most of the supervisor's time on the path from one child's
    exit to the next one's start.
    """

    def __init__(
        self,
        settings: Settings,
        catalogue: ImageCatalogue | None = None,
        *,
        use_cgroups: bool = True,
        shell_launcher: bool = False,
        driven: bool = False,
    ) -> None:
        super().__init__()
        self._driven = driven
        self._next_pass = 0.0  # monotonic time of the next periodic pass (OOM, timeouts, stragglers)
        self._settings = settings
        self._catalogue = catalogue or ImageCatalogue.from_settings(settings)
        self._support = detect_cgroups(enabled=use_cgroups)
        self._attempts: dict[str, _Attempt] = {}
        # Handed to the spawner, not yet running -> why it was stopped meanwhile (None: it was not).
        self._starting: dict[str, str | None] = {}
        self._to_spawn: queue.SimpleQueue[tuple[AttemptSpec, list[str], JobUser] | None] = queue.SimpleQueue()
        self._spawner: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._closed = False
        self._epoll = select.epoll()
        self._by_pidfd: dict[int, _Attempt] = {}
        self._log_dirs: set[Path] = set()
        self._programs: dict[tuple[str, str | None, int], str] = {}  # (name, PATH, uid) -> where it was found
        self._workdirs = WorkdirPool()
        self._cgroups = CgroupPool(self._support)
        self._native = None if shell_launcher else native_spawn
        # `driven`: the C launcher's thread does the vfork (its caller would wait for every exec).
        self._launcher = self._native.Launcher() if driven and self._native is not None else None
        self._launching: dict[str, tuple[AttemptSpec, AttemptCgroups]] = {}  # handed to the launcher
        # `driven`: logs left empty are recycled (log_files.py); one owner thread, as the pool needs.
        self._log_files = LogFilePool() if driven else None
        self._launcher_fd = -1 if self._launcher is None else self._launcher.fileno()
        if self._launcher is not None:
            self._epoll.register(self._launcher_fd, select.EPOLLIN)
        close_inherited_descriptors_on_exec()  # the shell launcher (also every task's) would pass them on
        self._setpriv = shutil.which("setpriv")  # the shell launcher's way to switch user
        self._base_environment = inherited_environment(os.environ, settings.job_environment)
        self._users = job_users_or_refusal(settings)
        self._uids = UidPool(self._users.uids if isinstance(self._users, JobUsers) else None)
        self._blocked: dict[tuple[str, int], str | None] = {}  # (program, uid) -> why it cannot run it
        self._nsenter = shutil.which("nsenter")  # the shell launcher's way into the jobs' mount namespace
        self._nsenter_wdns = self._nsenter is not None and nsenter_has_wdns(self._nsenter)
        self._mounts = self._retired_mounts = JobMounts()
        self._prepare_mounts()
        self._gpus = GpuAllocator(host_gpus(settings.gpus))
        logger.info("local executor: %s", "; ".join(self.describe()))

    def reconfigure(self, settings: Settings, catalogue: ImageCatalogue, environment: dict[str, str]) -> None:
        """Take a (re)connecting server's settings, images and the environment its jobs inherit
        (already reduced to what jobs may see: the supervisor outlives servers, and attempts inherit
        the environment of the server that placed them)."""
        self._wait_for_launches()  # a launch not yet made may still use the mount namespace replaced below
        self._settings, self._catalogue, self._base_environment = settings, catalogue, dict(environment)
        self._users = job_users_or_refusal(settings)
        if isinstance(self._users, JobUsers):
            with self._lock:
                self._uids = self._uids.resized(self._users.uids)
        self._blocked.clear()
        self._prepare_mounts()
        self._gpus.reconfigure(host_gpus(settings.gpus))

    def _prepare_mounts(self) -> None:
        """Show jobs the private directories Kiln's images need (job_mounts.py). Prepared anew each
        time a server (re)connects, so that what was mounted on the host meanwhile reaches jobs
        where the host's mounts do not propagate (private mounts)."""
        paths: tuple[str, ...] = ()
        users: tuple[JobUser, ...] = ()
        if isinstance(self._users, JobUsers) and not self._users.only_this_process_user:
            entrypoints = [entry[0] for entry in self._catalogue.entries().values() if entry]
            paths, users = tuple(paths_jobs_need(entrypoints)), tuple(self._users.allowed)
        # The one replaced stays open a generation more: the spawner thread may be handing its
        # descriptor to a child right now.
        self._retired_mounts.close()
        self._retired_mounts, self._mounts = self._mounts, JobMounts.prepare(paths, users)

    @property
    def catalogue(self) -> ImageCatalogue:
        return self._catalogue

    @property
    def cgroup_support(self) -> CgroupSupport:
        return self._support

    def mechanisms(self) -> dict[str, str]:
        """What enforces memory, CPU and process tracking on this host."""
        return self._support.mechanisms()

    def describe(self) -> list[str]:
        """Mechanisms and the reasons for any fallback, one line each (logs, docs, capacity notes)."""
        launcher = "C launcher (vfork, no shell)" if self._native else "/bin/sh wrapper (C launcher not built)"
        lines = [f"{what}: {how}" for what, how in self.mechanisms().items()] + [f"start: {launcher}"]
        if isinstance(self._users, JobUsers):
            lines.append(f"jobs run as: {self._users.described}")
        if self._mounts.note:
            lines.append(self._mounts.note)
        return lines + list(self._support.notes) + [self._gpus.inventory.note]

    def attempt_cgroups(self, attempt_id: str) -> AttemptCgroups | None:
        """The cgroups of a live attempt (for diagnostics and tests), None when it is not running."""
        with self._lock:
            attempt = self._attempts.get(attempt_id)
            return attempt.cgroups if attempt else None

    def capacity(self) -> Capacity:
        return Capacity(
            vcpus=float(self._settings.host_vcpus),
            memory_mib=self._settings.host_memory_mib,
            gpus=len(self._gpus.inventory.devices),
            notes=self.describe(),
        )

    def start(self, spec: AttemptSpec) -> None:
        """Hand the attempt to the spawner; every failure to start arrives as an event."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the local executor has been shut down")
            if spec.attempt_id in self._attempts or spec.attempt_id in self._starting:
                raise ValueError(f"attempt {spec.attempt_id} is already running")
        try:
            argv = self._task_argv(spec) if spec.task else self._catalogue.resolve(spec.image) + list(spec.command)
            if not isinstance(self._users, JobUsers):
                raise self._users
            user = self._users.resolve(spec.user)
        except (ImageNotFound, UserRefused, NoCommand) as exc:
            self._not_started(spec, exc.message)
            return
        if not argv:
            self._not_started(spec, NO_COMMAND_REASON)
            return
        try:
            spec = self._gpus.confine(spec)  # its own devices, in its environment
        except NotEnoughGpus as exc:
            self._not_started(spec, f"{CANNOT_START_PREFIX}: {exc}")
            return
        with self._lock:
            self._starting[spec.attempt_id] = None
            if not self._driven and self._spawner is None:
                self._spawner = threading.Thread(target=self._spawn_loop, name="kiln-local-spawner", daemon=True)
                self._spawner.start()
        if self._driven:
            self._spawn_one(spec, argv, user)
        else:
            self._to_spawn.put((spec, argv, user))

    def _task_argv(self, spec: AttemptSpec) -> list[str]:
        """An `ecsProperties` task: the runner (task_runner.py) and its plan, each container's image
        resolved here, its log handed over as a descriptor (`task_logs`); `ImageNotFound` as for one."""
        descriptors = {path: FIRST_LOG_FD + i for i, path in enumerate(task_logs(spec))}
        containers = []
        for container in spec.task:
            entrypoint = self._catalogue.resolve(container.image)  # an unknown image fails even when replaced
            if container.entrypoint is not None:  # a pod's container: its `command` replaces the image's
                entrypoint = list(container.entrypoint)
            argv = entrypoint + list(container.command)
            if not argv:
                raise NoCommand(f"{NO_COMMAND_REASON} (container {container.name})")
            containers.append({
                "name": container.name, "argv": argv, "environment": container.environment,
                "essential": container.essential, "dependsOn": [list(pair) for pair in container.depends_on],
                "logFd": descriptors.get(container.log_path, 1), "stopTimeout": container.stop_timeout,
                "mounts": [dataclasses.asdict(mount) for mount in container.mounts],
            })  # fmt: skip
        return runner_argv(plan_of(containers, self._settings.termination_grace_seconds, pod=spec.pod))

    def terminate(self, attempt_id: str, reason: str) -> None:
        with self._lock:
            if attempt_id in self._starting:  # stopped before its process exists: it never starts
                self._starting[attempt_id] = self._starting[attempt_id] or reason
                return
            attempt = self._attempts.get(attempt_id)
            if attempt is None or attempt.exit_code is not None or not attempt.stop.terminate(reason):
                return
            self._begin_stop(attempt, self._settings.termination_grace_seconds)

    def running(self) -> set[str]:
        with self._lock:
            return set(self._attempts) | set(self._starting)

    def is_running(self, attempt_id: str) -> bool:
        """`attempt_id in running()` without copying both sets."""
        with self._lock:
            return attempt_id in self._attempts or attempt_id in self._starting

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        """Nothing to forget: exits are handed over once, through `poll`."""

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Attempts of a previous server process died with it: remove what is left of them."""
        self.discard_leftovers(attempt_ids)
        return Adoption()

    def discard_leftovers(self, attempt_ids: Collection[str]) -> None:
        """Kill and remove what is left of attempts another process started, in groups named after
        them (Kiln before pool names for life; a dead executor's pool groups are removed, and their
        processes killed, when this one's `CgroupPool` starts)."""
        support = self._support
        parents = (support.memory_parent, support.cpu_parent, support.tracking_parent)
        for attempt_id in attempt_ids:
            name = attempt_group_name(attempt_id)
            paths = [None if parent is None or not (parent / name).is_dir() else parent / name for parent in parents]
            AttemptCgroups(*paths).remove()

    def shutdown(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop every attempt (SIGTERM, SIGKILL after `grace_seconds`), wait for them, stop the thread.

        The attempts' `AttemptExited` events (terminated, `SHUTDOWN_REASON`) stay available to `poll`.
        """
        with self._lock:
            self._closed = True
            for attempt_id, reason in self._starting.items():
                self._starting[attempt_id] = reason or SHUTDOWN_REASON
            for attempt in self._attempts.values():
                self._stop_for_shutdown(attempt, grace_seconds)
            spawner, self._spawner = self._spawner, None
        if spawner is not None:
            self._to_spawn.put(None)
            spawner.join(timeout=5.0)
        deadline = time.monotonic() + grace_seconds + 5.0
        while self.running() and time.monotonic() < deadline and (self._driven or self._monitor_alive()):
            if self._driven:
                self._service(POLL_INTERVAL_SECONDS)
            else:
                time.sleep(POLL_INTERVAL_SECONDS)
        if self._launcher is not None:
            self._launcher.close()  # every launch handed over has started by now
            self._collect_launches()
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5.0)
        with self._lock:
            self._cgroups.close()
        if self._log_files is not None:
            self._log_files.close()
        self._mounts.close()
        self._retired_mounts.close()
        if self.running():
            logger.warning("attempts still running at shutdown: %s", ", ".join(sorted(self.running())))

    def gpu_holders(self) -> dict[str, tuple[str, ...]]:
        """Live attempts' GPU devices (diagnostics and tests)."""
        return self._gpus.held()

    # -- starting ---------------------------------------------------------------------------------

    def _spawn_loop(self) -> None:
        """The spawner thread: start what `start` queued, in order, until `shutdown` says stop."""
        while (item := self._to_spawn.get()) is not None:
            self._spawn_one(*item)

    def _spawn_one(self, spec: AttemptSpec, argv: list[str], user: JobUser) -> None:
        with self._lock:
            stopped = self._starting.get(spec.attempt_id)
        if stopped is not None:
            self._gpus.release(spec.attempt_id)
            self._stopped_before_start(spec, stopped)
            return
        try:
            self._launch(spec, argv, user)
        except Exception as exc:  # nothing may stay "starting" forever, nor end the spawner thread
            logger.exception("cannot start attempt %s", spec.attempt_id)
            self._failed_to_start(spec, f"{CANNOT_START_PREFIX}: {exc}")

    def _launch(self, spec: AttemptSpec, argv: list[str], user: JobUser) -> None:
        try:
            attempt = self._spawn(spec, argv, user)
        except OSError as exc:
            self._failed_to_start(spec, f"{CANNOT_START_PREFIX}: {exc}")
            return
        except UserRefused as exc:  # no uid left to lend
            self._failed_to_start(spec, exc.message)
            return
        if attempt is not None:  # else the launcher thread reports it (`_collect_launches`)
            self._running(attempt)

    def _running(self, attempt: _Attempt, pidfd: int = -1) -> None:
        """The attempt's process exists: watch it and report it running."""
        attempt_id = attempt.spec.attempt_id
        with self._lock:
            stopped = self._starting.pop(attempt_id, None)
            self._attempts[attempt_id] = attempt
            self._watch_exit(attempt, pidfd)
            self._emit(AttemptRunning(attempt_id, now_ms()))
            if stopped is not None and attempt.stop.terminate(stopped):  # terminated while being made
                self._begin_stop(attempt, self._settings.termination_grace_seconds)
        self._ensure_monitor()

    def _collect_launches(self) -> None:
        """The launcher thread's outcomes: each attempt runs now, or failed a step before its exec."""
        assert self._launcher is not None
        for attempt_id, pid, pidfd, error in self._launcher.collect():
            launching = self._launching.pop(attempt_id, None)
            if launching is None:  # never handed over here: nothing to account for but its descriptor
                logger.error("the launcher reported an attempt it was not given: %s", attempt_id)
                if pidfd >= 0:
                    os.close(pidfd)
                continue
            spec, cgroups = launching
            try:
                if error is not None:
                    self._unlaunched(spec, cgroups)
                    self._failed_to_start(spec, f"{CANNOT_START_PREFIX}: {error}")
                else:
                    self._running(self._attempt_of(spec, SpawnedProcess(pid), cgroups), pidfd)
            except Exception:  # the outcomes after it were collected too: they must not be lost
                logger.exception("cannot take attempt %s over from the launcher", attempt_id)

    def _wait_for_launches(self, timeout_seconds: float = 5.0) -> None:
        """Collect every launch handed over (`driven` mode): its mount namespace may be closed next."""
        deadline = time.monotonic() + timeout_seconds
        while self._launching and time.monotonic() < deadline:
            self._service(POLL_INTERVAL_SECONDS)

    def _failed_to_start(self, spec: AttemptSpec, reason: str) -> None:
        self._gpus.release(spec.attempt_id)
        self._workdirs.release(spec.workdir)
        self._release_log(spec)
        with self._lock:
            self._uids.give_back(spec.attempt_id)
            self._starting.pop(spec.attempt_id, None)
        self._not_started(spec, reason)

    def _release_log(self, spec: AttemptSpec) -> None:
        """Nothing of the attempt writes its log any more: an empty one is a spare for the next."""
        if self._log_files is not None and not spec.task:
            self._log_files.release(spec.log_path)

    def _stopped_before_start(self, spec: AttemptSpec, reason: str) -> None:
        with self._lock:
            self._starting.pop(spec.attempt_id, None)
        self._emit(AttemptExited.stopped_before_start(spec.attempt_id, now_ms(), reason))

    def _watch_exit(self, attempt: _Attempt, pidfd: int = -1) -> None:
        """Register the process's pidfd (opened here unless the launcher did) so the monitor wakes
        the moment it exits."""
        try:
            attempt.pidfd = pidfd if pidfd >= 0 else os.pidfd_open(attempt.process.pid)
        except (OSError, AttributeError):  # kernels before 5.3: the periodic pass still sees it
            return
        self._by_pidfd[attempt.pidfd] = attempt
        self._epoll.register(attempt.pidfd, select.EPOLLIN)

    def _spawn(self, spec: AttemptSpec, argv: list[str], user: JobUser) -> _Attempt | None:
        """Create the workdir, log and cgroups, then the process; cleans up after itself on error.
        None: the launcher thread starts the process (`_collect_launches` takes it from there)."""
        program = self._find_program(argv[0], spec.environment.get("PATH", self._base_environment.get("PATH")), user)
        with self._lock:
            user = self._uids.lend(spec.attempt_id, user)  # back in _finish or _failed_to_start
        self._make_dirs(spec, user)
        if self._log_files is not None and not spec.task:  # a task's runner is given its logs open
            self._log_files.claim(spec.log_path)
        with self._lock:
            cgroups = self._cgroups.acquire(
                spec.attempt_id, memory_mib=spec.memory_mib, vcpus=spec.vcpus, cpu_hard_cap=spec.cpu_hard_cap
            )
        self._launching[spec.attempt_id] = (spec, cgroups)  # before the launcher can report it
        try:
            # The child joins the groups itself, on the job's CPU time, not the server's.
            process = self._start_process(spec, program, argv, cgroups.procs_files(), user)
        except OSError:
            self._launching.pop(spec.attempt_id, None)
            self._unlaunched(spec, cgroups)
            raise
        if process is None:
            return None  # the launcher thread starts it: `_collect_launches` takes it from here
        self._launching.pop(spec.attempt_id, None)
        return self._attempt_of(spec, process, cgroups)

    def _unlaunched(self, spec: AttemptSpec, cgroups: AttemptCgroups) -> None:
        """A start failed before the job's exec: its groups are removed, not kept (joining one may be
        what failed, and a spare is reused as it is)."""
        with self._lock:
            self._cgroups.discard(spec.attempt_id, cgroups)
        self._programs.clear()  # perhaps a program that was found before has gone

    @staticmethod
    def _attempt_of(spec: AttemptSpec, process: SpawnedProcess, cgroups: AttemptCgroups) -> _Attempt:
        tracker = cgroups.pids if cgroups.tracks_processes else None
        stop = AttemptStop(spec.timeout_seconds)
        stop.running_since(time.monotonic())
        return _Attempt(spec, process, ProcessTree(process.pid, tracker), cgroups, stop)

    def _find_program(self, name: str, search_path: str | None, user: JobUser) -> str:
        """`name` looked up in `search_path` like a container runtime, as the job's user would: a
        match that user cannot execute (a directory on the way is closed to it) is passed over, as
        `execvp` passes it over. Found ones are remembered (an array's thousands of children would
        otherwise stat every PATH entry each)."""
        key = (name, search_path, user.uid)
        program = self._programs.get(key)
        if program is None:
            candidates = (
                [name]
                if os.sep in name
                else [
                    os.path.join(d or ".", name)
                    for d in (os.defpath if search_path is None else search_path).split(os.pathsep)
                ]
            )
            found = [c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)]
            if not found:
                raise FileNotFoundError(f'exec: "{name}": executable file not found in $PATH')
            program = next((c for c in found if self._blocked_for(c, user) is None), None)
            if program is None:
                self._refuse(found[0], user)
            if len(self._programs) >= PROGRAM_CACHE:
                self._programs.clear()
            self._programs[key] = program
        return program

    def _blocked_for(self, program: str, user: JobUser) -> str | None:
        """Why `user` may not execute `program` (None: it may), remembered per program and user."""
        key = (program, user.uid)
        if key not in self._blocked:
            if len(self._blocked) >= PROGRAM_CACHE:
                self._blocked.clear()
            self._blocked[key] = (
                None if user.uid == os.geteuid() else blocked_on_the_way(program, user, self._mounts.admits)
            )
        return self._blocked[key]

    def _refuse(self, program: str, user: JobUser) -> NoReturn:
        """Fail the start saying which directory is closed to the job's user: without this the
        exec fails in the child as a bare "permission denied" on a path that looks fine to the
        operator (root)."""
        blocked = self._blocked_for(program, user)
        raise ProgramUnreachable(
            f'exec: "{program}": permission denied: the job runs as {user.described} '
            f"and the {blocked}; make that path reachable for it (or install Kiln and the job's "
            "programs outside private directories such as /root), or pick another user with "
            "job_user in kiln.toml"
        )

    def _make_dirs(self, spec: AttemptSpec, user: JobUser) -> None:
        """The attempt's workdir (the job user's own), and its log directory the first time it is seen
        (the supervisor's only: the job writes its log through the descriptor it is given)."""
        self._workdirs.make(spec.workdir, (user.uid, user.gid))
        for log_path in (spec.log_path, *task_logs(spec)):
            if log_path.parent in self._log_dirs:
                continue
            missing, directory = [], log_path.parent
            while not directory.is_dir():
                missing.append(directory)
                directory = directory.parent
            for directory in reversed(missing):  # each level 0700 (`parents=True` would make them 0755)
                directory.mkdir(mode=0o700, exist_ok=True)
            self._log_dirs.add(log_path.parent)

    def _start_process(
        self, spec: AttemptSpec, program: str, argv: list[str], procs: list[str], user: JobUser
    ) -> SpawnedProcess | None:
        """Own session (so the tree can be signalled as a group), log as stdout and stderr, no stdin,
        the job's user. None: handed to the launcher thread (`driven` mode), which reports later.

        Both launchers are vfork-like: they cost the supervisor a fraction of `subprocess.Popen`,
        which matters when thousands of short jobs run back to back.
        """
        # KILN_VCPUS: how many threads a job may use (the render worker sizes Blender by it).
        env = {
            **self._base_environment,
            **identity_environment(user, spec.workdir),
            "KILN_VCPUS": f"{spec.vcpus:g}",
            **spec.environment,
        }
        switch = user.differs_from_this_process()
        mount_ns = self._mounts.fd if switch and self._mounts.fd is not None else -1
        umask = -1 if user.umask is None else user.umask
        if self._native is None or spec.task:  # the C launcher hands over one log, a task needs one per container
            if switch:
                argv = self._setpriv_prefix(user) + argv
            if mount_ns >= 0:
                argv = self._nsenter_prefix(mount_ns, spec.workdir) + argv
            return self._posix_spawn(spec, env, wrapped_command(spec.workdir, procs, argv, user.umask))
        identity = (user.uid, user.gid, user.groups) if switch else (-1, -1, ())
        job = (
            os.fsencode(program),
            [os.fsencode(arg) for arg in argv],
            [os.fsencode(f"{key}={value}") for key, value in env.items()],
            os.fsencode(spec.workdir),
            os.fsencode(spec.log_path),
            [os.fsencode(path) for path in procs],
            *identity,
            mount_ns,
            umask,
        )
        if self._launcher is not None:
            self._launcher.submit(spec.attempt_id, *job)
            return None
        return SpawnedProcess(self._native.spawn(*job))

    def _nsenter_prefix(self, mount_ns: int, workdir: Path) -> list[str]:
        """`nsenter` enters the jobs' mount namespace in the shell launcher (util-linux), through
        this process's descriptor of it, then the workdir again (entering moves to its root), by its
        path inside the namespace (`--wdns`)."""
        if self._nsenter is None:
            raise FileNotFoundError(
                "cannot start the job in the jobs' mount namespace: the shell launcher needs nsenter "
                "(util-linux), which is not installed, and the C launcher was not built"
            )
        enter = [self._nsenter, f"--mount=/proc/{os.getpid()}/fd/{mount_ns}"]
        if self._nsenter_wdns:
            return [*enter, f"--wdns={workdir}", "--"]
        # util-linux before 2.38 has only --wd, which opens the directory before entering: the old
        # namespace's, "(unreachable)" for getcwd() inside. A shell enters the workdir instead.
        return [*enter, "--", "/bin/sh", "-c", 'cd "$0" && exec "$@"', str(workdir)]

    def _setpriv_prefix(self, user: JobUser) -> list[str]:
        """`setpriv` switches user in the shell launcher (util-linux; the C launcher needs none)."""
        if self._setpriv is None:
            raise FileNotFoundError(
                f"cannot start the job as {user.described}: the shell launcher needs setpriv (util-linux), "
                "which is not installed, and the C launcher was not built"
            )
        groups = ["--groups", ",".join(map(str, user.groups))] if user.groups else ["--clear-groups"]
        return [self._setpriv, "--reuid", str(user.uid), "--regid", str(user.gid), *groups, "--"]

    def _posix_spawn(self, spec: AttemptSpec, env: dict[str, str], command: list[str]) -> SpawnedProcess:
        """The portable launcher. Kiln's own descriptors are close-on-exec (PEP 446), so none leak."""
        log = open_private_log(spec.log_path)
        try:
            actions: list[tuple[Any, ...]] = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ]
            # A task's containers' logs, as descriptors 3, 4, ...: opened with the supervisor's rights
            # before the job's user takes over (the runner writes them through the descriptors only).
            actions += [
                (os.POSIX_SPAWN_OPEN, FIRST_LOG_FD + i, str(path), TASK_LOG_FLAGS, PRIVATE_FILE_MODE)
                for i, path in enumerate(task_logs(spec))
            ]
            return SpawnedProcess(
                os.posix_spawn(
                    command[0],
                    command,
                    env,
                    file_actions=actions,
                    setsid=True,
                    setsigmask=(),
                    setsigdef=DEFAULT_SIGNALS,  # like a container; Python ignores SIGPIPE, for one
                )
            )
        finally:
            os.close(log)

    def _not_started(self, spec: AttemptSpec, reason: str) -> None:
        self._emit(
            AttemptExited(
                attempt_id=spec.attempt_id,
                at_ms=now_ms(),
                exit_code=None,
                status_reason=TASK_FAILED_TO_START,
                reason=reason,
                started=False,
            )
        )

    # -- monitoring -------------------------------------------------------------------------------

    def fileno(self) -> int:
        """Readable when an attempt's process has exited (`driven` mode: the owner watches it)."""
        return self._epoll.fileno()

    def seconds_to_next_pass(self) -> float | None:
        """When `service()` is next due for the periodic pass (`driven` mode); None: nothing runs."""
        with self._lock:
            if not self._attempts:
                return None
        return max(0.0, self._next_pass - time.monotonic())

    def service(self) -> None:
        """`driven` mode: take the exits that are ready, and run the periodic pass when it is due."""
        self._service(0.0)

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._driven or self._monitor_alive():
                return
            self._monitor = threading.Thread(target=self._watch, name="kiln-local-executor", daemon=True)
            self._monitor.start()

    def _monitor_alive(self) -> bool:
        return self._monitor is not None and self._monitor.is_alive()

    def _watch(self) -> None:
        """The monitor thread (unless `driven`)."""
        while not self._stop.is_set():
            self._service(max(0.0, self._next_pass - time.monotonic()))

    def _service(self, wait_seconds: float) -> None:
        """Wake on exits (pidfds) at once; a periodic pass covers OOM, timeouts and stragglers."""
        ready = self._epoll.poll(wait_seconds)
        if self._launcher is not None and any(fd == self._launcher_fd for fd, _ in ready):
            self._collect_launches()  # before exits: an attempt runs before it ends
        if ready:
            with self._lock:
                exited = [self._by_pidfd[fd] for fd, _ in ready if fd in self._by_pidfd]
            self._tick(exited)
        if time.monotonic() >= self._next_pass:
            self._tick(None)
            self._next_pass = time.monotonic() + POLL_INTERVAL_SECONDS

    def _tick(self, only: list[_Attempt] | None) -> None:
        with self._lock:
            attempts = list(self._attempts.values()) if only is None else only
        needs_snapshot = any(not attempt.tree.uses_cgroups for attempt in attempts)
        children = children_snapshot() if needs_snapshot else None
        for attempt in attempts:
            try:
                with self._lock:
                    finished = self._check(attempt, time.monotonic(), children)
                if finished:
                    self._finish(attempt)
            except Exception:  # the monitor must outlive any one attempt's surprise
                logger.exception("monitoring attempt %s failed", attempt.spec.attempt_id)

    def _check(self, attempt: _Attempt, now: float, children: ChildrenMap | None) -> bool:
        """One look at an attempt; True when it is over and nothing of it is left."""
        if attempt.exit_code is None:
            returncode = attempt.process.poll()
            if returncode is not None:
                attempt.exit_code = exit_code_from_returncode(returncode)
        live = attempt.tree.live(children)
        self._check_memory(attempt, live)
        if attempt.exit_code is None:
            self._check_timeout(attempt, now)
            if attempt.stop.kill_due(now):
                self._kill(attempt, live)
            return False
        if live:
            self._kill(attempt, live)  # the essential process is gone: the "container" stops
            return False
        return True

    def _check_memory(self, attempt: _Attempt, live: list[psutil.Process]) -> None:
        """OOM = the kernel killed something in the memory cgroup, or the watchdog's sum passed the limit.

        Cgroup v1 kills only the largest process, so everything else is killed here as well.
        """
        if attempt.stop.oom:
            return
        if attempt.cgroups.memory is not None:
            attempt.stop.oom = attempt.cgroups.oom_kills() > 0
        elif live:
            attempt.stop.oom = attempt.tree.rss_bytes(live) > attempt.spec.memory_mib * MIB
        if attempt.stop.oom:
            logger.info("attempt %s ran out of memory", attempt.spec.attempt_id)
            self._kill(attempt, live)

    def _check_timeout(self, attempt: _Attempt, now: float) -> None:
        if attempt.stop.time_out(now):
            self._begin_stop(attempt, self._settings.termination_grace_seconds)

    def _begin_stop(self, attempt: _Attempt, grace_seconds: float) -> None:
        attempt.stop.grace(time.monotonic(), grace_seconds)
        attempt.tree.signal(signal.SIGTERM)

    def _stop_for_shutdown(self, attempt: _Attempt, grace_seconds: float) -> None:
        if attempt.exit_code is None and attempt.stop.terminate(SHUTDOWN_REASON):
            self._begin_stop(attempt, grace_seconds)
        elif attempt.stop.kill_at is not None:
            attempt.stop.grace(time.monotonic(), grace_seconds)

    def _kill(self, attempt: _Attempt, live: list[psutil.Process]) -> None:
        attempt.cgroups.kill()
        attempt.tree.signal(signal.SIGKILL, live)

    def _finish(self, attempt: _Attempt) -> None:
        """Remove what the attempt owned, then report it; it stays in `running()` until reported."""
        # The last check read the OOM count after the group was found empty, unless it had seen an
        # OOM already (and stopped reading): only then is a read needed before the group is reused.
        settled = None if attempt.stop.oom else attempt.cgroups.last_oom_count
        with self._lock:
            self._cgroups.release(attempt.spec.attempt_id, attempt.cgroups, settled_oom_count=settled)
        self._workdirs.release(attempt.spec.workdir)
        self._release_log(attempt.spec)
        self._gpus.release(attempt.spec.attempt_id)  # before the exit is reported: the place is free
        with self._lock:
            self._uids.give_back(attempt.spec.attempt_id)  # no process of it is left to use the uid
            if attempt.pidfd is not None and self._by_pidfd.pop(attempt.pidfd, None) is not None:
                self._epoll.unregister(attempt.pidfd)
                os.close(attempt.pidfd)
            if self._attempts.pop(attempt.spec.attempt_id, None) is not None:
                self._emit(attempt.exit_event())


def task_logs(spec: AttemptSpec) -> list[Path]:
    """The log files of a task's containers other than the attempt's own, in container order: the
    runner gets them as descriptors 3, 4, ... (a container whose stream is the attempt's writes to 1)."""
    return [container.log_path for container in spec.task if container.log_path != spec.log_path]


def job_users_or_refusal(settings: Settings) -> JobUsers | UserRefused:
    """The job-user policy, or why no job can start (a supervisor begins with default settings
    until its server says hello; a host without `nobody` must not end it)."""
    try:
        return JobUsers(settings.job_user, settings.allowed_job_users, job_uids=settings.job_uids)
    except ValidationError as exc:
        return UserRefused(f"{CANNOT_START_PREFIX}: {exc.message}")


def nsenter_has_wdns(nsenter: str) -> bool:
    """Whether this nsenter can set the working directory inside the namespace (util-linux 2.38+)."""
    try:
        found = subprocess.run([nsenter, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--wdns" in found.stdout


def close_inherited_descriptors_on_exec() -> None:
    """Descriptors this process inherited open across exec (its parent's, not Kiln's: Python's own
    are close-on-exec) would reach every job of the shell launcher, which has no `close_range`."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for descriptor in descriptors:
        if descriptor > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(descriptor, False)


def wrapped_command(workdir: Path, procs_files: list[str], argv: list[str], umask: int | None = None) -> list[str]:
    """`argv` behind the shell wrapper that enters the workdir, joins the cgroups and sets `umask`."""
    script = WRAPPER_SCRIPT if umask is None else f"umask {umask:03o}; {WRAPPER_SCRIPT}"
    return ["/bin/sh", "-c", script, "kiln-attempt", str(workdir), *procs_files, "--", *argv]
