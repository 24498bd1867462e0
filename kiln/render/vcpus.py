"""How many CPU threads a render job may use: as many as the vCPUs its job asked for.

Kiln's executor can announce a job's vCPU reservation in `KILN_VCPUS`; when that is absent (an
older executor, a job run by hand) the CPUs this process may run on (`sched_getaffinity`, which
honours `taskset` and cpusets) are the best estimate. Blender's own default would take every core
of the host and starve jobs placed beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from kiln.render.errors import RenderError

VCPUS_VARIABLE = "KILN_VCPUS"


def job_vcpus(environ: Mapping[str, str]) -> int:
    """`KILN_VCPUS` when set (a positive integer), else the number of CPUs this process may use."""
    raw = environ.get(VCPUS_VARIABLE, "").strip()
    if raw:
        try:
            vcpus = float(raw)
        except ValueError:
            raise RenderError(f"{VCPUS_VARIABLE}={raw!r} is not a number of vCPUs") from None
        if vcpus <= 0:
            raise RenderError(f"{VCPUS_VARIABLE}={raw!r} is not a number of vCPUs")
        return max(1, round(vcpus))
    return len(os.sched_getaffinity(0))


@contextmanager
def thread_pools_sized(threads: int) -> Iterator[None]:
    """While Blender loads, let this process run on `threads` CPUs only; on all of them again after.

    Blender's task scheduler (oneTBB) sizes its worker pool from the CPUs the process may use when
    it starts, whatever `render.threads` says later. A 1-thread job on a 2-core host then kept the
    second core busy with a worker spinning in `sched_yield`: a Pottery job of 6.7 s took 12.6 s of
    CPU, 5.3 s of it system time, taken from the job beside it. Sized at load, the same job took
    6.7 s of CPU in the same 6.7 s. The CPUs are only narrowed for the load (picked by pid, so jobs
    loading side by side tend to differ): the render threads may run anywhere, under the job's
    own CPU share.
    """
    allowed = os.sched_getaffinity(0)
    if threads >= len(allowed):
        yield
        return
    cpus = sorted(allowed)
    first = os.getpid() % len(cpus)
    os.sched_setaffinity(0, {cpus[(first + i) % len(cpus)] for i in range(threads)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)
