"""The render zygote: one process per user and installation that has already imported `bpy`, and
forks a child per render job, so 1-frame jobs stop paying Blender's start-up (docs/performance.md).

Each job still starts as its own process, placed by the executor in the job's cgroups, with its
log, timeout and termination exactly as before. That process (`kiln.render.zygote_client`) hands
the zygote its stdin/stdout/stderr (SCM_RIGHTS), working directory, environment and arguments over
a Unix socket; the zygote forks a child that first moves itself into the job's cgroups (read from
/proc/<job pid>/cgroup; the job's pid comes from the kernel, SO_PEERCRED), then becomes the job:
its own session, the job's descriptors, directory and environment, and runs `kiln-render`. The
zygote reports the child's exit status back, and SIGKILLs the child if the job's process goes away.

Protocol (SOCK_SEQPACKET, one JSON object per message): the job sends
`{"argv": [...], "cwd": "...", "env": {...}, "umask": n, "cpus": [...]}` with its three descriptors
(stdin, stdout, stderr); the child answers
`{"started": pid}` once it is in the job's groups, or `{"refused": why}` before doing anything (the
job then renders in-process); the zygote finally sends `{"exit": status}`, where status is
`os.waitstatus_to_exitcode`'s (negative: killed by that signal).

The zygote starts on demand (the job that finds none starts it and renders in-process meanwhile),
leaves the per-attempt groups it was started in (and forks once more, so the serving process was
never in them), serves only its own user (socket in a 0700
folder, peer uid checked) and exits after `KILN_RENDER_ZYGOTE_IDLE_SECONDS` (default 300) without jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from . import zygote_cgroups
from .vcpus import job_vcpus, thread_pools_sized
from .zygote_paths import ZygotePaths

IDLE_SECONDS_VARIABLE = "KILN_RENDER_ZYGOTE_IDLE_SECONDS"
# A scene the zygote opens is in memory shared with the job, not charged to the job's memory limit:
# only small files are opened ahead; a larger one is opened by the job, inside its limit.
OPEN_AHEAD_VARIABLE = "KILN_RENDER_ZYGOTE_OPEN_AHEAD_MAX_MIB"
DEFAULT_OPEN_AHEAD_MAX_MIB = 64.0
DEFAULT_IDLE_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_MESSAGE = 1 << 20  # a job's environment and arguments; far more than any real one
_PR_SET_PDEATHSIG = 1


def send(connection: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(connection, [data], fds)
    else:
        connection.send(data)


def receive(connection: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and any descriptors that came with it; (None, []) when the peer has gone."""
    data, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, max_fds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a zygote message must be a JSON object")
    return message, fds


@dataclass
class _Job:
    connection: socket.socket
    pid: int
    pidfd: int


class Zygote:
    """The serving loop: accept jobs, fork them, report their exits, exit when idle."""

    def __init__(self, paths: ZygotePaths, idle_seconds: float, lock_fd: int, open_ahead_max_bytes: int) -> None:
        from .blender_fork import BlenderThreadPools  # after `import bpy` (done by the caller)

        self._paths = paths
        self._idle_seconds = idle_seconds
        self._open_ahead_max_bytes = open_ahead_max_bytes
        self._lock_fd = lock_fd  # held for the zygote's life; a child must not keep it
        self._pools = BlenderThreadPools()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._jobs: dict[int, _Job] = {}  # by pidfd

    def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._paths.socket.unlink()  # a dead zygote's (we hold the lock)
        self._listener.bind(str(self._paths.socket))
        self._listener.listen(64)
        self._selector.register(self._listener, selectors.EVENT_READ)
        idle_since = time.monotonic()
        try:
            while self._jobs or time.monotonic() - idle_since < self._idle_seconds:
                timeout = None if self._jobs else max(0.0, self._idle_seconds - (time.monotonic() - idle_since))
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                        continue
                    what, job = cast(tuple[str, _Job], key.data)
                    if self._jobs.get(job.pidfd) is not job:
                        continue  # an event of a job forgotten earlier in this batch
                    if what == "exit":
                        self._reap(job)
                    else:
                        self._client_gone(job)
                if self._jobs:
                    idle_since = time.monotonic()
        finally:
            with contextlib.suppress(OSError):
                self._paths.socket.unlink()
            self._listener.close()

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
            self._open_scene_ahead(request)
            self._pools.stop()
            sys.stdout.flush()
            sys.stderr.flush()
            child = os.fork()
            if child == 0:
                self._become_job(connection, pid, request, fds)  # never returns
        except Exception as error:  # the zygote must outlive any one job's surprise
            with contextlib.suppress(OSError):
                send(connection, {"refused": f"zygote error: {error}"})
            connection.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        job = _Job(connection, child, os.pidfd_open(child))
        self._jobs[job.pidfd] = job
        self._selector.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        self._selector.register(connection, selectors.EVENT_READ, ("client", job))

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

    def _open_scene_ahead(self, request: dict[str, Any]) -> None:
        """Open a render job's local .blend here, before forking it: the next jobs of the same scene
        then start with it open (~0.15 s per job on Pottery). A problem is the job's to report."""
        from .blender import is_open_ahead, open_ahead
        from .render_frames import check_blend

        blend_file = render_input_file(request)
        if blend_file is None or is_open_ahead(blend_file):
            return
        try:
            if os.stat(blend_file).st_size > self._open_ahead_max_bytes:
                return  # the job opens it, inside its own memory limit
            check_blend(blend_file, str(blend_file))
            open_ahead(blend_file)
        except Exception as error:  # the job opens (or fails to open) its input itself
            print(f"kiln-render zygote: {blend_file} not opened ahead: {error}", file=sys.stderr, flush=True)

    def _become_job(self, connection: socket.socket, client_pid: int, request: dict[str, Any], fds: list[int]) -> None:
        """In the forked child: join the job's groups, take its place, render, exit."""
        status = 1
        try:
            zygote_cgroups.join(zygote_cgroups.memberships(client_pid))
        except zygote_cgroups.CgroupError as error:
            with contextlib.suppress(OSError):
                send(connection, {"refused": str(error)})
            os._exit(status)
        try:
            self._detach_from_zygote(connection)
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(request.get("cwd") or "/")
            os.environ.clear()
            os.environ.update({str(name): str(value) for name, value in request["env"].items()})
            tempfile.tempdir = None  # cached from the zygote's environment; the job's TMPDIR counts
            if isinstance(request.get("umask"), int):
                os.umask(request["umask"])
            if request.get("cpus"):
                os.sched_setaffinity(0, [int(cpu) for cpu in request["cpus"]])
            argv = [str(argument) for argument in request["argv"]]
            sys.argv = ["kiln-render", *argv]
            self._pools.restore()
            send(connection, {"started": os.getpid()})
            connection.close()
            from .cli import main

            status = main(argv, use_zygote=False)
        except BaseException as error:  # report anything, then exit without unwinding
            with contextlib.suppress(Exception):
                print(f"kiln-render: error: zygote child failed: {error!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _detach_from_zygote(self, connection: socket.socket) -> None:
        """Drop the zygote's listener and other jobs, restore default signals, die with the zygote."""
        self._selector.close()
        self._listener.close()
        os.close(self._lock_fd)
        for job in self._jobs.values():
            os.close(job.pidfd)
            job.connection.close()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        zygote = os.getppid()
        _set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != zygote:  # the zygote died before the request took effect
            os._exit(1)
        connection.settimeout(None)

    def _reap(self, job: _Job) -> None:
        _, wait_status = os.waitpid(job.pid, 0)
        with contextlib.suppress(OSError):
            send(job.connection, {"exit": os.waitstatus_to_exitcode(wait_status)})
        self._forget(job)

    def _client_gone(self, job: _Job) -> None:
        """The job's process exited or was killed: its render must not outlive it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGKILL)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(job.connection)

    def _forget(self, job: _Job) -> None:
        self._selector.unregister(job.pidfd)
        os.close(job.pidfd)
        del self._jobs[job.pidfd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(job.connection)
        job.connection.close()


def render_input_file(request: dict[str, Any]) -> Path | None:
    """The local .blend a `render` request names (relative to the job's directory); None otherwise."""
    from .cli import UsageError, build_parser
    from .uris import local_path

    cwd = request.get("cwd")
    try:
        arguments = build_parser().parse_args([str(argument) for argument in request["argv"]])
    except (UsageError, SystemExit):  # (`--help` exits) the job reports its own arguments
        return None
    if arguments.action != "render" or not isinstance(cwd, str):
        return None
    return local_path(arguments.input, cwd=cwd)


def socket_peer(connection: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel knows them."""
    import struct

    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


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
    # The executor remembers every process it ever saw in an attempt's groups and kills them all when
    # the attempt ends. This process was born inside them; a child forked now never was, so the child
    # serves and this process exits at once (before Blender is loaded: forking is still safe here).
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # who serves (for operators and tests)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # SIGTERM: remove the socket on the way out
    try:
        with thread_pools_sized(job_vcpus(os.environ)):  # children keep a worker pool of the job's size
            import bpy  # noqa: F401 - the point of the zygote

            from . import render_frames  # noqa: F401 - what each job runs, imported once

            warm_up()
        idle = float(os.environ.get(IDLE_SECONDS_VARIABLE, "") or DEFAULT_IDLE_SECONDS)
        open_ahead_mib = float(os.environ.get(OPEN_AHEAD_VARIABLE, "") or DEFAULT_OPEN_AHEAD_MAX_MIB)
        Zygote(paths, idle, lock, int(open_ahead_mib * 2**20)).serve()
    except Exception as error:
        paths.disable(f"the zygote failed: {error!r}")
        raise
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)


def main() -> None:
    """`python -m kiln.render.zygote SOCKET_FOLDER KEY`, started by the first job that needs it."""
    folder, key = sys.argv[1:3]
    sys.exit(run(ZygotePaths(Path(folder), key)))


if __name__ == "__main__":
    main()
