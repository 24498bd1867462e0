"""`kiln-render` as a container's first process (PID 1): the worker runs as its child, signals pass on.

Docker and AWS Batch start an image's entrypoint as PID 1 of the container, and the kernel gives PID
1 only the signals it has a handler for: a Python without a SIGTERM handler ignores `docker stop`,
TerminateJob and the SIGTERM that ECS sends when a Spot instance is reclaimed, renders on and is
SIGKILLed 30 s later (or finishes and exits 0 while its host goes away). A Python handler would not
do either: it runs between bytecodes, so only after Blender has finished the frame in flight, which
for a production frame is minutes. So as PID 1 `kiln-render` is a small init, as tini would be: it
runs the worker as its child, which is not PID 1 and therefore dies at once on SIGTERM (the frame in
flight is abandoned; frames already published stay, each written atomically, and a retried attempt
renders only the missing ones), forwards the signals a container gets, reaps the orphans the kernel
hands to PID 1, and exits with the worker's status: 128 + N when signal N ended it (143 for
SIGTERM), as Docker and a shell report a killed process.

Anywhere else (the local executor, `docker run --init`, Batch's `initProcessEnabled`) the worker
runs in the process itself and SIGTERM's default action ends it at once, with the same outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def is_first_process() -> bool:
    return os.getpid() == 1


def run_worker_as_child(argv: Sequence[str]) -> int:
    """Run `python -m kiln.render ARGV` as a child until it ends; its exit status (128 + N if killed)."""
    worker = 0
    pending: list[int] = []  # signals that came before the worker existed
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if worker:
            _kill(worker, signum)
        else:
            pending.append(signum)

    for forwarded in FORWARDED:
        signal.signal(forwarded, forward)
    worker = os.posix_spawn(sys.executable, [sys.executable, "-m", "kiln.render", *argv], os.environ)
    for signum in pending:
        _kill(worker, signum)
    status = _reap_until(worker)
    if signal.SIGTERM in received:
        print(
            f"kiln-render: stopped by SIGTERM (exit status {status}): frames already written stay, "
            "and a retried attempt renders only the missing ones",
            file=sys.stderr,
            flush=True,
        )
    return status


def _reap_until(worker: int) -> int:
    """Wait for every child (orphans are PID 1's to reap) until the worker ends; its exit status."""
    while True:
        pid, status = os.waitpid(-1, 0)  # retried after a signal handler ran (PEP 475)
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
