"""Per-attempt overhead of the Ray executor against Ray itself and the local executor, and how fast
a lost node's job is retried.

Starts its own three-node Ray cluster on this machine (tests/ray_cluster.py: a head and two workers,
2 CPUs and 2 GiB each, every node its own `ray start` process group) and tears it down at the end.

1. Against Ray. For each N (`--jobs`, default 400 and 2,000): Ray alone runs N tasks that each
   `subprocess.run(["true"])` (num_cpus=1, from a driver process of its own, after one warm-up
   task), then a fresh `kiln server` (127.0.0.1, its own data dir; `executor = "ray"` and
   `ray_address` in its kiln.toml) runs an array of N children of `true` (1 vCPU, 32 MiB) on a
   compute environment of as many vCPUs as the cluster has CPUs (6), so both run 6 at a time.
   Reported: both wall times (SubmitJob -> parent SUCCEEDED for Kiln), Kiln / Ray (target <= 2x),
   and Kiln's cost per attempt, wall x 6 / N.
2. For reference, the local executor runs the same array on this machine's cores.
3. Node loss. On the Ray server, three 2-vCPU jobs (one fills a node) print their working directory
   (which names the node) and sleep; the ones on the head and the first worker are terminated so
   only the second worker is busy, then that node's process group is SIGKILLed. Reported: kill ->
   the attempt FAILED with `Host EC2 (instance ...) terminated.`, and kill -> the retry RUNNING
   (polled every 20 ms through DescribeJobs).

Usage: python bench/ray_overhead.py [--jobs 400,2000]
Every loop is bounded in time; everything listens on 127.0.0.1 (Ray binds some ports more widely,
see tests/ray_cluster.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' Ray cluster helper, run as a script

from kiln.cli.embedded_server import start_embedded_server
from tests.ray_cluster import NODE_CPUS, RayCluster, start_cluster

DEADLINE_SECONDS = 600
NODE_IN_PATH = re.compile(r"kiln-ray/[0-9a-f]{10}-([0-9a-f]{12})/work/")
HOST_LOST = re.compile(r"^Host EC2 \(instance [0-9a-f]{56}\) terminated\.$")


def _client(endpoint: str) -> Any:
    return boto3.client("batch", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip


def _queue(batch: Any, max_vcpus: int) -> None:
    batch.create_compute_environment(
        computeEnvironmentName="bench-ce",
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
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


# Ray alone doing Kiln's unit of work, from a driver of its own: N tasks that each run `true`.
RAY_TASKS = """
import subprocess, sys, time
import ray
ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", logging_level="ERROR")

@ray.remote(num_cpus=1)
def run_true() -> int:
    return subprocess.run(["true"], check=True).returncode

ray.get(run_true.remote())  # warm-up: a worker process per node is not what is measured
started = time.perf_counter()
ray.get([run_true.remote() for _ in range(int(sys.argv[2]))])
print(time.perf_counter() - started)
"""


def ray_tasks_seconds(address: str, jobs: int) -> float:
    run = subprocess.run([sys.executable, "-c", RAY_TASKS, address, str(jobs)], capture_output=True, text=True,
                         timeout=DEADLINE_SECONDS, check=True)  # fmt: skip
    return float(run.stdout.strip().splitlines()[-1])


def array_of(jobs: int, max_vcpus: int) -> Callable[[Any, str], dict[str, float]]:
    return lambda batch, _: overhead(batch, jobs, max_vcpus)


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
    parser.add_argument("--jobs", default="400,2000", help="array sizes, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.jobs.split(",")]
    cores = os.cpu_count() or 1
    cluster = start_cluster()
    slots = NODE_CPUS * len(cluster.nodes)
    try:
        ray_config = f'[server]\nexecutor = "ray"\nray_address = "{cluster.address}"\n'
        rows: list[tuple[int, float, dict[str, float], dict[str, float]]] = []
        for size in sizes:
            alone = ray_tasks_seconds(cluster.address, size)
            kiln = with_server(ray_config, array_of(size, slots))
            local = with_server('[server]\nexecutor = "local"\n', array_of(size, cores))
            rows.append((size, alone, kiln, local))
        loss = with_server(ray_config, lambda b, endpoint: node_loss(b, endpoint, cluster))
    finally:
        cluster.stop()
    print(f"arrays of `true` (1 vCPU each); 3-node local Ray cluster, {slots} CPUs; this machine {cores} cores")
    print("| N | Ray tasks alone | Kiln on Ray | Kiln / Ray | Kiln on Ray per attempt (wall x slots / N) "
          "| local executor (CE = cores) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for size, alone, kiln, local in rows:
        verdict = "met" if kiln["wall"] <= 2 * alone else "MISSED"
        print(f"| {size} | {alone:.2f} s | {kiln['wall']:.2f} s | {kiln['wall'] / alone:.1f}x (target <= 2x: "
              f"{verdict}) | {kiln['slot'] * 1000:.0f} ms | {local['wall']:.2f} s |")  # fmt: skip
    print(f"node killed -> attempt FAILED (Host EC2 ... terminated.): {loss['failed']:.2f} s")
    print(f"node killed -> retry RUNNING: {loss['retry_running']:.2f} s")


if __name__ == "__main__":
    main()
