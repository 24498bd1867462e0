"""Per-attempt overhead of the Ray executor against the local one, and how fast a lost node's job is retried.

Starts its own three-node Ray cluster on this machine (tests/ray_cluster.py: a head and two workers,
2 CPUs and 2 GiB each, every node its own `ray start` process group) and tears it down at the end.

1. Overhead. For each executor a fresh `kiln server` (127.0.0.1, its own data dir; `executor` and
   `ray_address` in its kiln.toml) runs an array of N children of `true` (1 vCPU, 32 MiB) on a
   compute environment of <cores> vCPUs, so both executors run <cores> at a time. Reported: wall
   time SubmitJob -> parent SUCCEEDED, jobs per second, and per attempt wall x <cores> / N.
2. Node loss. On the Ray server, three 2-vCPU jobs (one fills a node) print their working directory
   (which names the node) and sleep; the ones on the head and the first worker are terminated so
   only the second worker is busy, then that node's process group is SIGKILLed. Reported: kill ->
   the attempt FAILED with `Host EC2 (instance ...) terminated.`, and kill -> the retry RUNNING
   (polled every 20 ms through DescribeJobs).

Usage: python bench/ray_overhead.py [--jobs 200]
Every loop is bounded in time; everything listens on 127.0.0.1 (Ray binds some ports more widely,
see tests/ray_cluster.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

from kiln.cli.embedded_server import start_embedded_server
from tests.ray_cluster import RayCluster, start_cluster

DEADLINE_SECONDS = 600
NODE_IN_PATH = re.compile(r"kiln-ray/[0-9a-f]{10}-([0-9a-f]{12})/work/")
HOST_LOST = re.compile(r"^Host EC2 \(instance [0-9a-f]{56}\) terminated\.$")


def _client(endpoint: str) -> Any:
    return boto3.client("batch", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip


def _queue(batch: Any, max_vcpus: int) -> None:
    batch.create_compute_environment(
        computeEnvironmentName="bench-ce", type="MANAGED", computeResources={"type": "EC2", "maxvCpus": max_vcpus}
    )
    batch.create_job_queue(
        jobQueueName="bench", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "bench-ce"}]
    )


def _until(what: str, check: Callable[[], Any], timeout: float = DEADLINE_SECONDS, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise SystemExit(f"{what}: not within {timeout:.0f} s")


def with_server(config: str, measure: Callable[[Any, str], dict[str, float]]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "kiln.toml").write_text(config)
        server = start_embedded_server(data)
        try:
            return measure(_client(server.endpoint), server.endpoint)
        finally:
            server.stop()


def overhead(batch: Any, jobs: int, cores: int) -> dict[str, float]:
    _queue(batch, cores)
    batch.register_job_definition(
        jobDefinitionName="noop", type="container",
        containerProperties={"image": "host", "vcpus": 1, "memory": 32, "command": ["true"]},
    )  # fmt: skip
    started = time.perf_counter()
    parent = batch.submit_job(jobName="noop", jobQueue="bench", jobDefinition="noop", arrayProperties={"size": jobs})

    def done() -> Any:
        job = batch.describe_jobs(jobs=[parent["jobId"]])["jobs"][0]
        return job if job["status"] in ("SUCCEEDED", "FAILED") else None

    job = _until(f"{jobs} no-ops", done, every=0.05)
    wall = time.perf_counter() - started
    if job["status"] != "SUCCEEDED":
        raise SystemExit(f"array ended {job['status']}: {job['arrayProperties']['statusSummary']}")
    return {"wall": wall, "rate": jobs / wall, "slot": wall * cores / jobs}


def node_loss(batch: Any, endpoint: str, cluster: RayCluster) -> dict[str, float]:
    _queue(batch, 6)
    script = 'echo "pwd=$(pwd)"; if [ "$AWS_BATCH_JOB_ATTEMPT" = 1 ]; then sleep 300; fi'
    batch.register_job_definition(
        jobDefinitionName="long", type="container", retryStrategy={"attempts": 2},
        containerProperties={"image": "host", "vcpus": 2, "memory": 256, "command": ["sh", "-c", script]},
    )  # fmt: skip
    jobs = [batch.submit_job(jobName=f"long{n}", jobQueue="bench", jobDefinition="long")["jobId"] for n in range(3)]

    def node_of(job_id: str) -> str | None:
        response = httpx.get(f"{endpoint}/kiln/v1/logs/{job_id}", timeout=10)
        match = NODE_IN_PATH.search(response.json().get("text", "")) if response.status_code == 200 else None
        return match.group(1) if match else None

    def failed(job_id: str) -> bool:
        return _status(batch, job_id) == "FAILED"

    where = {job_id: _until(f"job {job_id} on a node", functools.partial(node_of, job_id), 120, 0.2) for job_id in jobs}
    names = {node_id[:12]: name for name, node_id in cluster.node_ids().items()}
    victim = next(job_id for job_id, node in where.items() if names[node] == "w2")
    for job_id in set(jobs) - {victim}:
        batch.terminate_job(jobId=job_id, reason="bench: free the node")
    for job_id in set(jobs) - {victim}:
        _until(f"{job_id} terminated", functools.partial(failed, job_id), 60)
    killed = time.monotonic()
    cluster.nodes["w2"].kill()
    failed_at = running_at = None
    deadline = killed + 120
    while time.monotonic() < deadline and running_at is None:
        job = batch.describe_jobs(jobs=[victim])["jobs"][0]
        attempts = job.get("attempts", [])
        now = time.monotonic()
        if failed_at is None and attempts:
            if not HOST_LOST.match(attempts[0]["statusReason"] or ""):
                raise SystemExit(f"the lost attempt ended otherwise: {attempts[0]}")
            failed_at = now
        if attempts and job["status"] in ("RUNNING", "SUCCEEDED"):
            running_at = now
        time.sleep(0.02)
    if failed_at is None or running_at is None:
        raise SystemExit("the lost attempt was not retried within 120 s of the kill")
    return {"failed": failed_at - killed, "retry_running": running_at - killed}


def _status(batch: Any, job_id: str) -> str:
    return str(batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cluster = start_cluster()
    try:
        ray_config = f'[server]\nexecutor = "ray"\nray_address = "{cluster.address}"\n'
        rows = {
            "local": with_server('[server]\nexecutor = "local"\n', lambda b, _: overhead(b, args.jobs, cores)),
            "ray": with_server(ray_config, lambda b, _: overhead(b, args.jobs, cores)),
        }
        loss = with_server(ray_config, lambda b, endpoint: node_loss(b, endpoint, cluster))
    finally:
        cluster.stop()
    print(f"{args.jobs} no-op jobs, CE maxvCpus {cores} (1 vCPU each), 3-node local Ray cluster")
    print("| executor | wall | jobs/s | per attempt (wall x cores / jobs) |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['wall']:.2f} s | {row['rate']:.1f} | {row['slot']:.3f} s |")
    print(f"Ray / local per attempt: {rows['ray']['slot'] / rows['local']['slot']:.1f}x")
    print(f"node killed -> attempt FAILED (Host EC2 ... terminated.): {loss['failed']:.2f} s")
    print(f"node killed -> retry RUNNING: {loss['retry_running']:.2f} s")


if __name__ == "__main__":
    main()
