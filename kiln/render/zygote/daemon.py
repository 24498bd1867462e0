"""The render zygote: one process per user and installation that has already imported `bpy`, and
forks a render process per job, so 1-frame jobs stop paying Blender's start-up (docs/performance.md).

Each job still starts as its own process, placed by the executor in the job's cgroups, with its
log, timeout and termination exactly as before. That process (`kiln.render.zygote.client`) hands
the zygote its stdin/stdout/stderr (SCM_RIGHTS), working directory, environment and arguments over
a Unix socket; the zygote forks a render process (`kiln.render.zygote.worker`) that first moves
itself into the job's cgroups (read from /proc/<job pid>/cgroup; the job's pid comes from the
kernel, SO_PEERCRED), then becomes the job: the job's descriptors, directory and environment, and
runs `kiln-render`. The zygote reports the render's exit status back, and SIGKILLs the render
process if the job's process goes away. A render process that finished a job cleanly may be kept
warm for the next job of the same scene and settings, which is then handed to it instead of a
fresh fork (`kiln.render.zygote.warm` says when).

Protocol (SOCK_SEQPACKET, one JSON object per message, `zygote_protocol`): the job sends
`{"argv": [...], "cwd": "...", "env": {...}, "umask": n, "cpus": [...]}` with its three descriptors
(stdin, stdout, stderr); the render process answers `{"started": pid, "jobs": n}` once it is in the
job's groups (n: the jobs it has served, this one included), or `{"refused": why}` before doing
anything (the job then renders in-process); the zygote finally sends `{"exit": status}`, where
status is `os.waitstatus_to_exitcode`'s (negative: killed by that signal). Between the zygote and
each render process runs a control socket: `{"warm": status, "needed": bytes}` from a process that
finished its job and waits warm, `{"client_pid": pid, "request": {...}}` (with the job's connection
and descriptors) to hand it the next job; closing it dismisses the process.

The zygote starts on demand (the job that finds none starts it and renders in-process meanwhile),
leaves the per-attempt groups it was started in (and forks once more, so the serving process was
never in them), serves only its own user (socket in a 0700 folder, peer uid checked) and exits
after `KILN_RENDER_ZYGOTE_IDLE_SECONDS` (default 300) without jobs; its render processes die with it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kiln.render.vcpus import job_vcpus, thread_pools_sized
from kiln.render.zygote import cgroups as zygote_cgroups
from kiln.render.zygote.paths import ZygotePaths
from kiln.render.zygote.protocol import receive, send, socket_peer
from kiln.render.zygote.warm import DEFAULT_WARM_SECONDS, WARM_SECONDS_VARIABLE, WarmKey, WarmPool, warm_key

IDLE_SECONDS_VARIABLE = "KILN_RENDER_ZYGOTE_IDLE_SECONDS"
# A scene the zygote opens is in memory shared with the job, not charged to the job's memory limit:
# only small files are opened ahead; a larger one is opened by the job, inside its limit.
OPEN_AHEAD_VARIABLE = "KILN_RENDER_ZYGOTE_OPEN_AHEAD_MAX_MIB"
DEFAULT_OPEN_AHEAD_MAX_MIB = 64.0
DEFAULT_IDLE_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class _Worker:
    """A forked render process: serving a job (`client` set) or idle in the warm pool."""

    pid: int
    pidfd: int
    control: socket.socket  # the zygote's end of the process's control socket
    key: WarmKey | None  # what it has loaded, when a later job may reuse it
    client: socket.socket | None  # the connection of the job it serves
    needed_bytes: int = 0


@dataclass(frozen=True)
class ZygoteSettings:
    idle_seconds: float
    open_ahead_max_bytes: int
    warm_seconds: float
    warm_capacity: int  # idle warm processes kept at most


class Zygote:
    """The serving loop: accept jobs, fork or hand them to warm processes, report exits, exit when idle."""

    def __init__(self, paths: ZygotePaths, settings: ZygoteSettings, lock_fd: int) -> None:
        from kiln.render.blender_fork import BlenderThreadPools  # after `import bpy` (done by the caller)

        self._paths = paths
        self._settings = settings
        self._lock_fd = lock_fd  # held for the zygote's life; a child must not keep it
        self._pools = BlenderThreadPools()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._workers: dict[int, _Worker] = {}  # by pidfd
        self._warm: WarmPool[_Worker] = WarmPool(settings.warm_capacity, settings.warm_seconds)

    def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._paths.socket.unlink()  # a dead zygote's (we hold the lock)
        self._listener.bind(str(self._paths.socket))
        self._listener.listen(64)
        self._selector.register(self._listener, selectors.EVENT_READ)
        idle_since = time.monotonic()
        try:
            while self._busy() or time.monotonic() - idle_since < self._settings.idle_seconds:
                for key, _ in self._selector.select(self._timeout(idle_since)):
                    if key.fileobj is self._listener:
                        self._accept()
                        continue
                    what, worker = cast(tuple[str, _Worker], key.data)
                    if self._workers.get(worker.pidfd) is not worker:
                        continue  # an event of a process forgotten earlier in this batch
                    if what == "exit":
                        self._reap(worker)
                    elif what == "control":
                        self._on_control(worker)
                    else:
                        self._client_gone(worker)
                for worker in self._warm.stale(self._opened_ahead(), time.monotonic()):
                    self._dismiss(worker)
                if self._busy():
                    idle_since = time.monotonic()
        finally:
            with contextlib.suppress(OSError):
                self._paths.socket.unlink()
            self._listener.close()

    def _busy(self) -> bool:
        return any(worker.client is not None for worker in self._workers.values())

    def _timeout(self, idle_since: float) -> float | None:
        now = time.monotonic()
        deadlines = [] if self._busy() else [idle_since + self._settings.idle_seconds]
        expiry = self._warm.next_expiry()
        if expiry is not None:
            deadlines.append(expiry)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _accept(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:  # out of descriptors, or the client gave up: it renders in-process
            return
        try:
            connection.settimeout(REQUEST_TIMEOUT_SECONDS)
            pid, uid, _ = socket_peer(connection)
            request, fds = receive(connection, max_fds=3)
            if request is None:
                connection.close()
                return
        except (OSError, ValueError):
            connection.close()
            return
        try:
            problem = self._refusal(pid, uid, request, fds)
            if problem:
                send(connection, {"refused": problem})
                connection.close()
                return
            arguments = render_arguments(request)  # None: not one to open ahead; the job reports it
            cwd = str(request.get("cwd") or "/")
            self._open_scene_ahead(arguments, cwd)
            key = self._warm_key(arguments, cwd, request["env"])
            # (the job's memory limit is read only for a job a warm process could serve)
            warm = self._warm.take(key, zygote_cgroups.memory_limit_bytes(pid)) if key is not None else None
            if warm is None or not self._hand_over(warm, connection, pid, request, fds):
                self._fork(connection, pid, request | {"keep_warm": key is not None}, fds, key)
        except Exception as error:  # the zygote must outlive any one job's surprise
            with contextlib.suppress(OSError):
                send(connection, {"refused": f"zygote error: {error}"})
            connection.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _refusal(self, pid: int, uid: int, request: dict[str, Any], fds: list[int]) -> str | None:
        if uid != os.getuid():
            return "the zygote serves only its own user"
        if len(fds) != 3:
            return "expected the job's stdin, stdout and stderr"
        if not zygote_cgroups.in_attempt_group(pid):
            return "the job is not in per-attempt cgroups"
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino:
                return "the job runs in another mount namespace"
        if not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
            return "malformed request"
        return None

    def _open_scene_ahead(self, arguments: argparse.Namespace | None, cwd: str) -> None:
        """Open a render job's local .blend here, before forking it: the next jobs of the same scene
        then start with it open (~0.15 s per job on Pottery). A problem is the job's to report."""
        from kiln.render.blender import is_open_ahead, open_ahead
        from kiln.render.render_frames import check_blend

        blend_file = render_input_file(arguments, cwd)
        if blend_file is None or is_open_ahead(blend_file):
            return
        try:
            if os.stat(blend_file).st_size > self._settings.open_ahead_max_bytes:
                return  # the job opens it, inside its own memory limit
            check_blend(blend_file, str(blend_file))
            open_ahead(blend_file)
        except Exception as error:  # the job opens (or fails to open) its input itself
            print(f"kiln-render zygote: {blend_file} not opened ahead: {error}", file=sys.stderr, flush=True)

    def _warm_key(self, arguments: argparse.Namespace | None, cwd: str, environ: dict[str, str]) -> WarmKey | None:
        if arguments is None or self._settings.warm_seconds <= 0 or self._settings.warm_capacity <= 0:
            return None
        return warm_key(arguments, cwd, environ, self._opened_ahead())

    @staticmethod
    def _opened_ahead() -> tuple[Path, tuple[int, ...]] | None:
        """The scene opened ahead, only while its file is still the one that was opened."""
        from kiln.render.blender import is_open_ahead, opened_ahead

        opened = opened_ahead()
        return opened if opened is not None and is_open_ahead(opened[0]) else None

    def _fork(
        self, connection: socket.socket, pid: int, request: dict[str, Any], fds: list[int], key: WarmKey | None
    ) -> None:
        from kiln.render.zygote.worker import ZygoteWorker

        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._pools.stop()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            child = os.fork()
            if child == 0:
                control.close()
                self._detach_from_zygote(connection)
                ZygoteWorker(child_control, self._pools).serve(connection, pid, request, fds)  # never returns
        finally:
            child_control.close()
        worker = _Worker(child, os.pidfd_open(child), control, key, connection)
        self._workers[worker.pidfd] = worker
        self._selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        self._selector.register(control, selectors.EVENT_READ, ("control", worker))
        self._selector.register(connection, selectors.EVENT_READ, ("client", worker))

    def _hand_over(
        self, worker: _Worker, connection: socket.socket, pid: int, request: dict[str, Any], fds: list[int]
    ) -> bool:
        """Give the job to a warm process; False when it has gone meanwhile (the job is forked then)."""
        try:
            send(
                worker.control,
                {"client_pid": pid, "request": request | {"keep_warm": True}},
                [connection.fileno(), *fds],
            )
        except OSError:
            self._dismiss(worker)
            return False
        worker.client = connection
        self._selector.register(connection, selectors.EVENT_READ, ("client", worker))
        return True

    def _detach_from_zygote(self, connection: socket.socket) -> None:
        """Drop the zygote's listener and other processes, restore default signals, die with the zygote."""
        self._selector.close()
        self._listener.close()
        os.close(self._lock_fd)
        for worker in self._workers.values():
            os.close(worker.pidfd)
            worker.control.close()
            if worker.client is not None:
                worker.client.close()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        zygote = os.getppid()
        _set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != zygote:  # the zygote died before the request took effect
            os._exit(1)
        connection.settimeout(None)

    def _on_control(self, worker: _Worker) -> None:
        """A render process finished its job and waits warm: the job's status goes to the job."""
        try:
            message, _ = receive(worker.control)
        except (OSError, ValueError):
            message = None
        if message is None or not isinstance(message.get("warm"), int) or worker.client is None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.control)  # it is exiting: its exit is reaped
            return
        self._end_job(worker, message["warm"])
        needed = message.get("needed")
        worker.needed_bytes = needed if isinstance(needed, int) else 0
        for dismissed in self._warm.park(worker, time.monotonic()):
            self._dismiss(dismissed)

    def _end_job(self, worker: _Worker, status: int) -> None:
        client, worker.client = worker.client, None
        if client is None:
            return
        with contextlib.suppress(OSError):
            send(client, {"exit": status})
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client)
        client.close()

    def _dismiss(self, worker: _Worker) -> None:
        """An idle warm process is not needed: closing its control socket makes it exit."""
        self._warm.discard(worker)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.control)
        worker.control.close()

    def _reap(self, worker: _Worker) -> None:
        _, wait_status = os.waitpid(worker.pid, 0)
        self._end_job(worker, os.waitstatus_to_exitcode(wait_status))
        self._warm.discard(worker)
        self._selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        del self._workers[worker.pidfd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.control)
        worker.control.close()

    def _client_gone(self, worker: _Worker) -> None:
        """The job's process exited or was killed: its render must not outlive it."""
        worker.key = None  # killed: never parked, even if it reports its job done before it dies
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        if worker.client is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.client)


def render_arguments(request: dict[str, Any]) -> argparse.Namespace | None:
    """The parsed `kiln-render` arguments of a request; None when they do not parse (the job reports them)."""
    from kiln.render.cli import UsageError, build_parser

    try:
        return build_parser().parse_args([str(argument) for argument in request["argv"]])
    except (UsageError, SystemExit):  # (`--help` exits)
        return None


def render_input_file(arguments: argparse.Namespace | None, cwd: str) -> Path | None:
    """The local .blend a `render` job names (relative to the job's directory); None otherwise."""
    from kiln.render.uris import local_path

    if arguments is None or arguments.action != "render":
        return None
    return local_path(arguments.input, cwd=cwd)


def _set_parent_death_signal(signum: int) -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def warm_up() -> None:
    """Render an 8x8 Cycles frame on the CPU, so the first real frame finds Cycles' set-up done."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.render.resolution_x = scene.render.resolution_y = 8
    scene.render.threads_mode = "FIXED"
    scene.render.threads = 1
    camera = bpy.data.objects.new("warm-up camera", bpy.data.cameras.new("warm-up camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    with tempfile.TemporaryDirectory(prefix="kiln-zygote-") as folder:
        scene.render.filepath = str(Path(folder) / "warm-up.png")
        bpy.ops.render.render(write_still=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)


def run(paths: ZygotePaths) -> int:
    """The daemon's life: take the lock, leave the job's groups, load Blender, serve, exit when idle."""
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another zygote for this installation is starting or serving
    try:
        zygote_cgroups.leave_attempt_groups()
    except zygote_cgroups.CgroupError as error:
        paths.disable(f"cannot leave the job's cgroups: {error}")
        return 1
    # Out of the groups, the executor no longer counts this process as the job's. Forking once more
    # also makes the server nobody's child and not the job's session's: the child serves and this
    # process exits at once (before Blender is loaded: forking is still safe here).
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # who serves (for operators and tests)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # SIGTERM: remove the socket on the way out
    try:
        with thread_pools_sized(job_vcpus(os.environ)):  # children keep a worker pool of the job's size
            import bpy  # noqa: F401 - the point of the zygote

            from kiln.render import render_frames  # noqa: F401 - what each job runs, imported once

            warm_up()
        Zygote(paths, settings_from(os.environ), lock).serve()
    except Exception as error:
        paths.disable(f"the zygote failed: {error!r}")
        raise
    return 0


def settings_from(environ: Mapping[str, str]) -> ZygoteSettings:
    """The zygote's settings from its environment (the variables are part of its key)."""
    threads = job_vcpus(environ)
    return ZygoteSettings(
        idle_seconds=float(environ.get(IDLE_SECONDS_VARIABLE, "") or DEFAULT_IDLE_SECONDS),
        open_ahead_max_bytes=int(float(environ.get(OPEN_AHEAD_VARIABLE, "") or DEFAULT_OPEN_AHEAD_MAX_MIB) * 2**20),
        warm_seconds=float(environ.get(WARM_SECONDS_VARIABLE, "") or DEFAULT_WARM_SECONDS),
        warm_capacity=max(1, len(os.sched_getaffinity(0)) // threads),  # one per job slot of this size
    )


def _exit_on_signal(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)


def main() -> None:
    """`python -m kiln.render.zygote.daemon SOCKET_FOLDER KEY`, started by the first job that needs it."""
    folder, key = sys.argv[1:3]
    sys.exit(run(ZygotePaths(Path(folder), key)))


if __name__ == "__main__":
    main()
