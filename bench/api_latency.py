"""API latency benchmark: boto3 SubmitJob and DescribeJobs, Kiln against moto's server mode.

Both servers run as their own processes on 127.0.0.1 in the same run, and each gets the same
client: one boto3 `batch` client, retries off, a few warm-up calls, then `--calls` SubmitJob and
`--calls` DescribeJobs of `--ids` ids each, one at a time, the two servers taking turns call by
call. Prints p50/p99 and Kiln/moto ratios.
Targets (issue 8): Kiln p50 <= moto p50, Kiln p99 <= 15 ms on 2 cores.

- Kiln: `kiln server` on SQLite with its default settings (WAL, `synchronous=NORMAL`: a commit
  survives a killed server; `--fsync` adds `synchronous=FULL`). SubmitJob answers only after the
  job is committed. The queue's compute environment is DISABLED, so nothing runs and the measure
  is the API alone.
- moto: `python -m moto.server`, switched to its Docker-free Batch backend (`batch_simple`, via
  POST /moto-api/config {"batch": {"use_docker": false}}): it marks each job SUCCEEDED inside
  SubmitJob and starts no thread or container. It keeps jobs in memory only.

Usage: python bench/api_latency.py [--calls 300] [--ids 20] [--warmup 20] [--fsync]
Every loop is bounded in count and in time (--deadline seconds per server).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from kiln.cli.embedded_server import free_port, start_embedded_server

STARTUP_SECONDS = 60.0


def client(endpoint: str) -> Any:
    return boto3.client(
        "batch", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="bench", aws_secret_access_key="bench",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )  # fmt: skip


@contextmanager
def kiln_server(fsync: bool) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        if fsync:
            (data / "kiln.toml").write_text("[server]\nfsync = true\n")
        server = start_embedded_server(data)
        try:
            yield server.endpoint
        finally:
            server.stop()


@contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/config", timeout=1.0)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("moto server did not start") from None
                time.sleep(0.1)
        # No Docker: the batch_simple backend finishes each job inside SubmitJob, with no thread.
        config = httpx.post(f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=5.0)
        if config.json().get("batch", {}).get("use_docker") is not False:
            raise SystemExit(f"moto did not accept use_docker=false: {config.text}")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def setup(batch: Any, endpoint: str, server: str) -> None:
    """A queue on a DISABLED compute environment and a definition; moto wants an IAM service role first."""
    if server == "moto":
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench",
        )  # fmt: skip
        role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        # UNMANAGED: moto would otherwise check subnets and security groups in its EC2 backend.
        batch.create_compute_environment(
            computeEnvironmentName="bench-ce", type="UNMANAGED", state="DISABLED", serviceRole=role
        )
    else:
        batch.create_compute_environment(
            computeEnvironmentName="bench-ce", type="MANAGED", state="DISABLED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2},
        )  # fmt: skip
    batch.create_job_queue(
        jobQueueName="bench",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "bench-ce"}],
    )
    batch.register_job_definition(
        jobDefinitionName="true", type="container",
        containerProperties={"image": "busybox", "vcpus": 1, "memory": 16, "command": ["true"]},
    )  # fmt: skip


SERVERS = ("kiln", "moto")


def timed_ms(call: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = call(**kwargs)
    return (time.perf_counter() - started) * 1000, answer


def measure(endpoints: dict[str, str], calls: int, ids: int, warmup: int, deadline_s: float) -> dict[str, Any]:
    """Milliseconds per call, by server then by `submit`/`describe`: one client per server, one call at a time.

    The two servers take turns call by call, so a burst of load from elsewhere hits both alike.
    """
    clients = {server: client(endpoint) for server, endpoint in endpoints.items()}
    for server, batch in clients.items():
        setup(batch, endpoints[server], server)
    job_ids: dict[str, list[str]] = {server: [] for server in SERVERS}
    samples: dict[str, dict[str, list[float]]] = {server: {"submit": [], "describe": []} for server in SERVERS}
    for index in range(warmup):
        for server, batch in clients.items():
            job_ids[server].append(
                batch.submit_job(jobName=f"w{index}", jobQueue="bench", jobDefinition="true")["jobId"]
            )
            batch.describe_jobs(jobs=job_ids[server][-ids:])
    deadline = time.monotonic() + deadline_s
    for index in range(calls):
        if time.monotonic() > deadline:
            break
        for server, batch in clients.items():
            ms, answer = timed_ms(batch.submit_job, jobName=f"job-{index}", jobQueue="bench", jobDefinition="true")
            samples[server]["submit"].append(ms)
            job_ids[server].append(answer["jobId"])
    for index in range(calls):
        if time.monotonic() > deadline:
            break
        for server, batch in clients.items():
            known = job_ids[server]
            start = (index * ids) % max(1, len(known) - ids)
            wanted = known[start : start + ids]
            ms, answer = timed_ms(batch.describe_jobs, jobs=wanted)
            samples[server]["describe"].append(ms)
            if len(answer["jobs"]) != len(wanted):
                raise SystemExit(f"{server}: DescribeJobs returned {len(answer['jobs'])} of {len(wanted)} jobs")
    return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="SubmitJob calls, and as many DescribeJobs")
    parser.add_argument("--ids", type=int, default=20, help="job ids per DescribeJobs")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds of measuring, both servers")
    parser.add_argument("--fsync", action="store_true", help="Kiln with synchronous=FULL (power-loss safe)")
    args = parser.parse_args()
    with kiln_server(args.fsync) as kiln_endpoint, moto_server() as moto_endpoint:
        endpoints = {"kiln": kiln_endpoint, "moto": moto_endpoint}
        results = measure(endpoints, args.calls, args.ids, args.warmup, args.deadline)
    cores = os.cpu_count() or 1
    durability = "synchronous=FULL" if args.fsync else "synchronous=NORMAL"
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; Kiln on SQLite WAL {durability}; moto batch_simple")
    print(f"{'call':<22} {'server':<6} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for call, label in (("submit", "SubmitJob"), ("describe", f"DescribeJobs ({args.ids} ids)")):
        for server in SERVERS:
            values = results[server][call]
            print(
                f"{label:<22} {server:<6} {len(values):>5} {percentile(values, 0.5):>8.2f} "
                f"{percentile(values, 0.99):>8.2f} {statistics.fmean(values):>8.2f}"
            )
        kiln, moto = results["kiln"][call], results["moto"][call]
        p50 = percentile(kiln, 0.5) / percentile(moto, 0.5)
        p99 = percentile(kiln, 0.99) / percentile(moto, 0.99)
        verdict = "ok" if p50 <= 1 and percentile(kiln, 0.99) <= 15 else "MISSED"
        print(f"{'':<22} kiln/moto p50 {p50:.2f}x  p99 {p99:.2f}x  (target p50 <= 1x, kiln p99 <= 15 ms: {verdict})")


if __name__ == "__main__":
    main()
