"""Array overhead benchmark: a 10,000-child array of `true` against `xargs -P<cores> true`.

Prints ratios against a floor measured in the same run (machines here are noisy):
- array time: SubmitJob -> parent SUCCEEDED, over the floor `seq N | xargs -P<cores> -n1 true`
  (target <= 1.5x, never worse than 3x);
- submit latency of the array;
- DescribeJobs of 100 children, median, with ~100,000 jobs in the store (target <= 50 ms);
- the server's peak RSS (target <= 300 MiB);
- where the CPU goes, per child: the server, the attempt supervisor, the jobs (their vfork child
  included, as the supervisor reaps them), against the floor's (xargs and its `true`s).

Usage: python bench/array_overhead.py [--size 10000] [--stored 100000] [--runs 1] [--job-user NAME]
(`--runs N`: N arrays one after the other, each between two floors; every run is printed and the
best ratio is the result. `--job-user nobody` on a root machine: every child as one user instead
of a uid lent to each.)
Talks only to a `kiln server` it starts itself on 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from kiln.cli.embedded_server import start_embedded_server

DEADLINE_SECONDS = 900
POLL_SECONDS = 0.25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def floor_seconds(size: int, cores: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of xargs and its children) of the floor."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(f"seq {size} | xargs -P{cores} -n1 true", shell=True, check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(own, reaped children's) user + system CPU seconds of `pid`; zeros when there is none."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) / CLOCK_TICKS for value in fields[11:15])
    return utime + stime, cutime + cstime


def supervisor_pid(data_dir: Path) -> int | None:
    """The attempt supervisor of `data_dir` (its command line names the data dir's executor folder)."""
    wanted = os.fsencode(data_dir / "executor")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"kiln.executors.supervisor" in command and wanted in command.split(b"\0"):
                return int(entry)
    return None


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup(batch: Any, cores: int) -> None:
    for name, state in (("bench-ce", "ENABLED"), ("parked-ce", "ENABLED")):
        batch.create_compute_environment(
            computeEnvironmentName=name,
            type="MANAGED",
            state=state,
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": cores},
        )
    batch.create_job_queue(
        jobQueueName="bench", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "bench-ce"}]
    )
    batch.create_job_queue(
        jobQueueName="parked", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "parked-ce"}]
    )
    batch.update_compute_environment(computeEnvironment="parked-ce", state="DISABLED")  # its jobs never run
    batch.register_job_definition(
        jobDefinitionName="true", type="container",
        containerProperties={"image": "host", "vcpus": 1, "memory": 16, "command": ["true"]},
    )  # fmt: skip


def run_array(batch: Any, size: int) -> tuple[float, float]:
    """(submit latency, submit -> parent SUCCEEDED) in seconds.

    The end is the parent's own `stoppedAt` (epoch ms, same host clock), so the poll can be slow:
    polling a 10,000-child parent every 50 ms cost the 2-core machine ~10% of a core (client and
    server), which the array's children then lacked.
    """
    started_epoch, started = time.time(), time.perf_counter()
    job_id = batch.submit_job(jobName="array", jobQueue="bench", jobDefinition="true", arrayProperties={"size": size})[
        "jobId"
    ]
    submitted = time.perf_counter()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            if job["status"] != "SUCCEEDED":
                raise SystemExit(f"array ended {job['status']}: {job['arrayProperties']['statusSummary']}")
            return submitted - started, job["stoppedAt"] / 1000 - started_epoch
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"array did not finish within {DEADLINE_SECONDS} s")


def fill_store(batch: Any, stored: int, present: int) -> int:
    """Park arrays in a queue whose CE is disabled until ~`stored` jobs exist (`present` do)."""
    arrays = max(0, -(-(stored - present) // 10_001))  # ceiling: at least `stored` jobs
    for index in range(arrays):
        batch.submit_job(
            jobName=f"parked-{index}", jobQueue="parked", jobDefinition="true", arrayProperties={"size": 10_000}
        )
    return present + arrays * 10_001


@dataclass(frozen=True)
class Run:
    """One array between two floors, with the CPU each side spent (seconds)."""

    floor_before: float
    floor_after: float
    floor_cpu: float  # of the faster floor: xargs and its children
    submit_latency: float
    total: float
    server_cpu: float
    supervisor_cpu: float
    jobs_cpu: float

    @property
    def floor(self) -> float:
        return min(self.floor_before, self.floor_after)

    @property
    def ratio(self) -> float:
        return self.total / self.floor


def measure(batch: Any, server_pid: int, supervisor: int | None, size: int, cores: int) -> Run:
    before, before_cpu = floor_seconds(size, cores)
    server_before, (supervisor_before, jobs_before) = cpu_seconds(server_pid)[0], cpu_seconds(supervisor)
    submit_latency, total = run_array(batch, size)
    server_after, (supervisor_after, jobs_after) = cpu_seconds(server_pid)[0], cpu_seconds(supervisor)
    after, after_cpu = floor_seconds(size, cores)
    return Run(before, after, before_cpu if before <= after else after_cpu, submit_latency, total,
               server_after - server_before, supervisor_after - supervisor_before, jobs_after - jobs_before)  # fmt: skip


def describe_latency_ms(batch: Any, size: int) -> float:
    parent = batch.list_jobs(jobQueue="bench", jobStatus="SUCCEEDED")["jobSummaryList"][0]["jobId"]
    ids = [f"{parent}:{i}" for i in range(0, size, max(1, size // 100))][:100]
    samples = []
    for _ in range(30):
        started = time.perf_counter()
        assert len(batch.describe_jobs(jobs=ids)["jobs"]) == len(ids)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1, help="arrays measured one after the other (best counts)")
    parser.add_argument("--job-user", help="the server's job_user (default: its own default)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        server = start_embedded_server(Path(tmp) / "data", job_user=args.job_user)
        try:
            batch = boto3.client("batch", endpoint_url=server.endpoint, region_name="us-east-1",
                                 aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
            setup(batch, cores)
            supervisor = supervisor_pid(Path(tmp) / "data")
            runs = [measure(batch, server.pid, supervisor, args.size, cores) for _ in range(max(1, args.runs))]
            stored = fill_store(batch, args.stored, len(runs) * (args.size + 1))
            describe_ms = describe_latency_ms(batch, args.size)
            rss = peak_rss_mib(server.pid)
        finally:
            server.stop()
    who = f"job user {args.job_user}" if args.job_user else "the default job user"
    per_child = 1000 / args.size
    print(f"array of {args.size} `true` children, {cores} cores, CE maxvCpus={cores}, {who}")
    for number, run in enumerate(runs, 1):
        print(
            f"  run {number}: floor (xargs -P{cores}) {run.floor_before:.2f} s before, {run.floor_after:.2f} s after; "
            f"submit -> parent SUCCEEDED {run.total:.2f} s = {run.ratio:.2f}x the faster floor; "
            f"submit latency {run.submit_latency * 1000:.0f} ms"
        )
        print(
            f"         CPU per child: server {run.server_cpu * per_child:.2f} ms, supervisor "
            f"{run.supervisor_cpu * per_child:.2f} ms, jobs {run.jobs_cpu * per_child:.2f} ms "
            f"(floor: {run.floor_cpu * per_child:.2f} ms per `true`, xargs included)"
        )
    best = min(runs, key=lambda run: run.ratio)
    print(f"  best ratio:                       {best.ratio:5.2f}x  (target <= 1.5x; issue 19: <= 1.7x)")
    print(f"  describe 100 children (median):   {describe_ms:8.1f} ms  with {stored} jobs stored (target <= 50 ms)")
    print(f"  server peak RSS:                  {rss:8.1f} MiB (target <= 300 MiB)")


if __name__ == "__main__":
    main()
