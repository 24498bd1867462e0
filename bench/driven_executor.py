"""The attempt supervisor's engine alone: `true` attempts, `--slots` at a time, through a driven
`LocalExecutor` (the supervisor's mode, without its socket and journal), against the xargs floor.

Prints, per child, the wall time and the executor's own CPU (this process: preparing, launching,
reaping and tidying each attempt) beside the jobs' CPU, so a change to the executor's path shows
in the CPU column even when the machine is noisy; the floor is measured in the same run:

    .venv/bin/python bench/driven_executor.py [--size 3000] [--slots 2]

Run it as the server's user (root here: real cgroups, as in `kiln server`).
"""

from __future__ import annotations

import argparse
import resource
import select
import tempfile
import time
from pathlib import Path

from array_overhead import floor_seconds

from kiln.config import Settings
from kiln.executors.base import AttemptExited, AttemptSpec
from kiln.executors.local import LocalExecutor

DEADLINE_SECONDS = 600


def spec(root: Path, index: int) -> AttemptSpec:
    attempt_id = f"bench{index}-1"
    return AttemptSpec(
        attempt_id=attempt_id, job_id=f"bench{index}", image="host", command=["true"], environment={},
        vcpus=1.0, memory_mib=16, log_path=root / "logs" / f"{attempt_id}.log", workdir=root / "work" / attempt_id,
    )  # fmt: skip


def run(root: Path, size: int, slots: int) -> tuple[float, float, float]:
    """(wall, executor CPU, jobs' CPU) seconds for `size` attempts, `slots` at a time."""
    executor = LocalExecutor(Settings(data_dir=root / "data", host_vcpus=slots), driven=True)
    jobs_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, cpu_started = time.perf_counter(), time.process_time()
    launched = ended = 0
    while launched < min(slots, size):
        executor.start(spec(root, launched))
        launched += 1
    deadline = time.monotonic() + DEADLINE_SECONDS
    with select.epoll() as wake:
        wake.register(executor.fileno(), select.EPOLLIN)
        while ended < size and time.monotonic() < deadline:  # as the supervisor's loop does
            wake.poll(0.05)
            executor.service()
            for event in executor.poll():
                if isinstance(event, AttemptExited):
                    ended += 1
                    if launched < size:
                        executor.start(spec(root, launched))
                        launched += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    jobs_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    executor.shutdown(grace_seconds=0.1)
    if ended < size:
        raise SystemExit(f"only {ended} of {size} attempts ended within {DEADLINE_SECONDS} s")
    jobs = (jobs_after.ru_utime - jobs_before.ru_utime) + (jobs_after.ru_stime - jobs_before.ru_stime)
    return wall, cpu, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        floor_wall, floor_cpu = floor_seconds(args.size, args.slots)
        wall, cpu, jobs = run(Path(tmp), args.size, args.slots)
    per_child = 1000 / args.size
    print(f"{args.size} `true` attempts, {args.slots} at a time, through a driven LocalExecutor")
    print(
        f"  floor (xargs -P{args.slots}):  {floor_wall * per_child:.3f} ms per child, {floor_cpu * per_child:.3f} ms CPU"
    )
    print(f"  executor:            {wall * per_child:.3f} ms per child = {wall / floor_wall:.2f}x the floor")
    print(f"  CPU per child:       executor {cpu * per_child:.3f} ms, jobs {jobs * per_child:.3f} ms")


if __name__ == "__main__":
    main()
