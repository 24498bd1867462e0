"""The job's side of the render zygote (see `kiln.render.zygote.daemon`): a thin process that never loads
Blender, hands its job to the zygote, relays signals and ends with the render's exit status.

Correctness never depends on the zygote: whenever it is off, missing, starting, refusing or
unreachable, `render_via_zygote` returns None and the job renders in-process as it always did. It
is used only where the executor gives the job per-attempt cgroups, since those are what carry the
job's memory limit, CPU weight and termination over to the forked child; and not for jobs given
GPUs, whose CUDA set-up is left to a process of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

from kiln.render.zygote import cgroups as zygote_cgroups
from kiln.render.zygote.paths import KEY_VARIABLE_PREFIXES, UnsafeFolder, ZygotePaths
from kiln.render.zygote.protocol import receive, send

SWITCH_VARIABLE = "KILN_RENDER_ZYGOTE"  # "off" (or 0/false/no) renders every job in-process
_OFF = {"0", "off", "false", "no"}
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_ZYGOTE_VARIABLES = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV"}
_ZYGOTE_VARIABLE_PREFIXES = ("LC_", "XDG_", *KEY_VARIABLE_PREFIXES)
CONNECT_TIMEOUT_SECONDS = 2.0
START_TIMEOUT_SECONDS = 15.0  # from the request to the child's "started" (fork + joining cgroups)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether this job may go through the zygote at all (before touching any socket)."""
    if environ.get(SWITCH_VARIABLE, "").strip().lower() in _OFF:
        return False
    if environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return False
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        return False
    return zygote_cgroups.in_attempt_group()


def render_via_zygote(argv: Sequence[str]) -> int | None:
    """Run `kiln-render ARGV` in a child of the zygote; its exit status, or None to render here."""
    environ = dict(os.environ)
    if not wanted(environ):
        return None
    paths = ZygotePaths.for_this_installation(environ)
    try:
        paths.ensure_folder()
    except (OSError, UnsafeFolder):
        return None
    connection = _connect(paths)
    if connection is None:
        return None
    with connection:
        return _Relay(connection).run(list(argv), environ)


def _connect(paths: ZygotePaths) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        connection.connect(str(paths.socket))
        return connection
    except OSError:
        connection.close()
    if not paths.disabled():
        _start_zygote(paths)
    return None


def _start_zygote(paths: ZygotePaths) -> None:
    """Start the zygote for later jobs (it loads Blender meanwhile; this job renders in-process)."""
    with contextlib.suppress(OSError), open(paths.log, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "kiln.render.zygote.daemon", str(paths.folder), paths.key],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            env=zygote_environment(os.environ),
            start_new_session=True,
        )


def zygote_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the zygote keeps of the starting job's environment: what Python and Blender need to load,
    never the job's own variables (credentials among them; each forked job gets its own environment)."""
    return {
        name: value
        for name, value in environ.items()
        if name in _ZYGOTE_VARIABLES or name.startswith(_ZYGOTE_VARIABLE_PREFIXES)
    }


def _kept_warm(jobs: int) -> str:
    if jobs <= 1:
        return ""
    return f" and kept warm: its job {jobs}, with the scene and Cycles' data of the earlier ones still loaded"


class _Relay:
    """Forward the job to the zygote, signals to the child, and the child's status back."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._child: int | None = None
        self._pending: list[int] = []

    def run(self, argv: list[str], environ: dict[str, str]) -> int | None:
        previous = {signum: signal.signal(signum, self._forward) for signum in _FORWARDED}
        try:
            started = self._start(argv, environ)
            if started is None:
                return None
            self._child, jobs = started
            print(f"render process {self._child}, forked from the render zygote{_kept_warm(jobs)}", flush=True)
            for signum in self._pending:
                self._forward(signum, None)
            return self._wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._child is None:
                for signum in self._pending:  # rendering in-process: act on the signal as before
                    os.kill(os.getpid(), signum)

    def _start(self, argv: list[str], environ: dict[str, str]) -> tuple[int, int] | None:
        """(render process, the jobs it has served with this one) once it is in the job's groups."""
        self._connection.settimeout(START_TIMEOUT_SECONDS)
        try:
            umask = os.umask(0o022)
            os.umask(umask)
            request = {
                "argv": argv,
                "cwd": os.getcwd(),
                "env": environ,
                "umask": umask,
                "cpus": sorted(os.sched_getaffinity(0)),
            }
            send(self._connection, request, [0, 1, 2])
            reply, _ = receive(self._connection)
        except (OSError, ValueError):
            return None
        started, jobs = (reply or {}).get("started"), (reply or {}).get("jobs", 1)
        return (started, jobs if isinstance(jobs, int) else 1) if isinstance(started, int) else None

    def _wait(self) -> int:
        self._connection.settimeout(None)
        try:
            reply, _ = receive(self._connection)
        except (OSError, ValueError):
            reply = None
        status = (reply or {}).get("exit")
        if not isinstance(status, int):
            self._kill_child()
            print("kiln-render: error: the render zygote went away during the job", file=sys.stderr, flush=True)
            return 1
        if status < 0:  # killed by a signal: die of the same one, so the executor sees the same outcome
            signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
            return 128 - status
        return status

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if self._child is None:
            self._pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child, signum)

    def _kill_child(self) -> None:
        if self._child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, signal.SIGKILL)
