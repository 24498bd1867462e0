"""How many CPU threads a render job may use: as many as the vCPUs its job asked for.

Kiln's executor can announce a job's vCPU reservation in `KILN_VCPUS`; when that is absent (an
older executor, a job run by hand) the CPUs this process may run on (`sched_getaffinity`, which
honours `taskset` and cpusets) are the best estimate. Blender's own default would take every core
of the host and starve jobs placed beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import RenderError

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
