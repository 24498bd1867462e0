"""A render process forked from the zygote: it becomes a job, and may stay warm for the next ones.

For each job it joins the job's cgroups first (memory limit, CPU weight, the executor's tracking
and kill), then takes the job's descriptors, directory, environment, umask and CPUs, answers
`{"started": pid, "jobs": n}` to the job's process and runs `kiln-render`. When the zygote marked
the job as one whose state a later job may reuse (`warm`) and the render succeeded, the
process leaves the job's groups (the tracking group last, so the executor sees the attempt end only
once nothing of it is left), drops the job's descriptors, directory and environment, and reports
`{"warm": status, "needed": peak bytes}` to the zygote instead of exiting; the zygote relays the
status to the job. It then waits on its control socket for the next job (`{"client_pid": pid,
"request": {...}}` with the job's connection and stdin/stdout/stderr), or exits when the zygote
closes it. Anything unexpected ends the process: a warm process is an optimisation, never needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from typing import Any, NoReturn

from kiln.render.blender_fork import BlenderThreadPools
from kiln.render.zygote import cgroups as zygote_cgroups
from kiln.render.zygote.protocol import receive, send

# After this many jobs a warm process exits: it bounds what a slow leak in Blender could gather, memory
# charged to earlier jobs' groups rather than to the job at hand.
MAX_JOBS_PER_PROCESS = 100


class _Refused(Exception):
    """The job could not be joined; its process was told, and renders in-process."""


class ZygoteWorker:
    """The forked process's life: one job, then (when allowed) more jobs of the same scene."""

    def __init__(self, control: socket.socket, pools: BlenderThreadPools) -> None:
        self._control = control
        self._pools = pools
        self._jobs = 0
        self._needed_bytes = 0

    def serve(self, connection: socket.socket, client_pid: int, request: dict[str, Any], fds: list[int]) -> NoReturn:
        status = 1
        try:
            while True:
                keep_warm = bool(request.get("keep_warm"))
                status = 1  # what the job's process hears should anything below raise
                status = self._run_job(connection, client_pid, request, fds)
                if status != 0 or not keep_warm or self._jobs >= MAX_JOBS_PER_PROCESS or not self._park(status):
                    break
                status = 0  # between jobs: the last one's status has been reported already
                job = self._next_job()
                if job is None:
                    break
                connection, client_pid, request, fds = job
        except _Refused:
            status = 1
        except BaseException as error:  # report anything, then exit without unwinding
            with contextlib.suppress(Exception):
                print(f"kiln-render: error: zygote child failed: {error!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _run_job(self, connection: socket.socket, client_pid: int, request: dict[str, Any], fds: list[int]) -> int:
        try:
            zygote_cgroups.join(zygote_cgroups.memberships(client_pid))
        except zygote_cgroups.CgroupError as error:
            with contextlib.suppress(OSError):
                send(connection, {"refused": str(error)})
            raise _Refused from None
        self._jobs += 1
        if self._jobs == 1:
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request.get("cwd") or "/")
        os.environ.clear()
        os.environ.update({str(name): str(value) for name, value in request["env"].items()})
        tempfile.tempdir = None  # cached from an earlier environment; the job's TMPDIR counts
        if isinstance(request.get("umask"), int):
            os.umask(request["umask"])
        if request.get("cpus"):
            _set_affinity([int(cpu) for cpu in request["cpus"]])
        argv = [str(argument) for argument in request["argv"]]
        sys.argv = ["kiln-render", *argv]
        if self._jobs == 1:
            self._pools.restore()
        send(connection, {"started": os.getpid(), "jobs": self._jobs})
        connection.close()
        from kiln.render.cli import main

        return main(argv, use_zygote=False)

    def _park(self, status: int) -> bool:
        """Leave the finished job (groups, descriptors, directory, environment); tell the zygote."""
        sys.stdout.flush()
        sys.stderr.flush()
        peak = zygote_cgroups.memory_peak_bytes()
        if peak is None:
            return False  # no memory group: nothing to judge the next job's limit by
        self._needed_bytes = max(self._needed_bytes, peak)
        try:
            zygote_cgroups.leave_attempt_groups()
        except zygote_cgroups.CgroupError:
            return False
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        os.chdir("/")
        os.environ.clear()
        try:
            send(self._control, {"warm": status, "needed": self._needed_bytes})
        except OSError:
            return False
        return True

    def _next_job(self) -> tuple[socket.socket, int, dict[str, Any], list[int]] | None:
        """Wait for the zygote's next job; None when it dismisses this process (or sends nonsense)."""
        message, fds = receive(self._control, max_fds=4)
        request = (message or {}).get("request")
        client_pid = (message or {}).get("client_pid")
        if len(fds) != 4 or not isinstance(request, dict) or not isinstance(client_pid, int):
            for fd in fds:
                os.close(fd)
            return None
        return socket.socket(fileno=fds[0]), client_pid, request, fds[1:]


def _set_affinity(cpus: list[int]) -> None:
    """The job's CPUs for every thread: a warm process has Blender's and Cycles' threads running."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)
