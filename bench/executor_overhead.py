"""Per-attempt overhead of the local and Docker executors: 200 no-op jobs on each.

For each executor a fresh `kiln server` (127.0.0.1, its own data dir; the executor chosen in its
kiln.toml) runs an array of N children of `true` on a compute environment of <cores> vCPUs
(one vCPU per job, so <cores> run at once). Reported per executor:
- wall time SubmitJob -> parent SUCCEEDED, and jobs per second;
- per-attempt cost: wall x concurrency / N (how long one no-op occupies a vCPU slot);
- the floor: the same N no-ops started without Kiln, <cores> at a time
  (local: `seq N | xargs -P<cores> -n1 true`; Docker: `docker run --rm --network host IMAGE true`
  through the SDK, one thread per core), and Kiln's wall time over it.

The Docker run uses the daemon at $KILN_TEST_DOCKER_HOST/$DOCKER_HOST/the default socket, or
starts one as the tests do, with the busybox test image (tests/docker_daemon.py); `true` runs
inside it.

Usage: python bench/executor_overhead.py [--jobs 200] [--executor local --executor docker]
Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import docker

from kiln.cli.embedded_server import start_embedded_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' Docker daemon helper, run as a script
from tests.docker_daemon import docker_daemon

DEADLINE_SECONDS = 600


def run(executor: str, image: str, jobs: int, cores: int, docker_host: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        config = f'[server]\nexecutor = "{executor}"\n'
        if docker_host:
            config += f'docker_host = "{docker_host}"\n'
        (data / "kiln.toml").write_text(config)
        server = start_embedded_server(data)
        try:
            batch = boto3.client("batch", endpoint_url=server.endpoint, region_name="us-east-1",
                                 aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
            return _measure(batch, image, jobs, cores)
        finally:
            server.stop()


def _measure(batch: Any, image: str, jobs: int, cores: int) -> dict[str, float]:
    batch.create_compute_environment(
        computeEnvironmentName="bench-ce",
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": cores},
    )
    batch.create_job_queue(
        jobQueueName="bench", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "bench-ce"}]
    )
    batch.register_job_definition(
        jobDefinitionName="noop", type="container",
        containerProperties={"image": image, "vcpus": 1, "memory": 32, "command": ["true"]},
    )  # fmt: skip
    started = time.perf_counter()
    parent = batch.submit_job(jobName="noop", jobQueue="bench", jobDefinition="noop", arrayProperties={"size": jobs})
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        job = batch.describe_jobs(jobs=[parent["jobId"]])["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"not done within {DEADLINE_SECONDS} s: {job['arrayProperties']['statusSummary']}")
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if job["status"] != "SUCCEEDED":
        raise SystemExit(f"array ended {job['status']}: {job['arrayProperties']['statusSummary']}")
    return {"wall": wall, "rate": jobs / wall, "slot": wall * cores / jobs}


def local_floor(jobs: int, cores: int) -> float:
    started = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P{cores} -n1 true", shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def docker_floor(url: str, image: str, jobs: int, cores: int) -> float:
    client = docker.DockerClient(base_url=url, version="auto", max_pool_size=cores + 4)
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda _: client.containers.run(image, ["true"], remove=True, network_mode="host"), range(jobs)))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--executor", action="append", choices=["local", "docker"])
    args = parser.parse_args()
    executors = args.executor or ["local", "docker"]
    cores = os.cpu_count() or 1
    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        for executor in executors:
            if executor == "local":
                results[executor] = run("local", "host", args.jobs, cores, None)
                results[executor]["floor"] = local_floor(args.jobs, cores)
            else:
                daemon = stack.enter_context(docker_daemon())
                results[executor] = run("docker", daemon.image, args.jobs, cores, daemon.url)
                results[executor]["floor"] = docker_floor(daemon.url, daemon.image, args.jobs, cores)
    print(f"{args.jobs} no-op jobs (`true`), {cores} cores, {cores} at a time")
    print(f"{'executor':10} {'wall s':>8} {'jobs/s':>8} {'s per attempt-slot':>20} {'floor s':>9} {'wall/floor':>11}")
    for executor, f in results.items():
        ratio = f["wall"] / f["floor"]
        print(f"{executor:10} {f['wall']:8.2f} {f['rate']:8.1f} {f['slot']:20.3f} {f['floor']:9.2f} {ratio:10.2f}x")


if __name__ == "__main__":
    main()
