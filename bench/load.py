"""API load benchmark: N concurrent boto3 clients mixing SubmitJob, DescribeJobs and ListJobs.

Each client is a thread with its own boto3 client and no retries (a retry would hide an error).
The jobs run `true`, so the scheduler and executor write to the store while the clients do.
Prints throughput and p50/p99 latency per operation, then checks that every submitted job can be
described; exits 1 on any error.

Usage: python bench/load.py [--clients 32] [--duration 60] [--endpoint-url URL] [--json]
Without --endpoint-url it starts a `kiln server` of its own on 127.0.0.1 in a temporary data dir.
Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kiln.cli.embedded_server import start_embedded_server

OPERATIONS = ("submit", "describe", "list")
WEIGHTS = (1, 2, 1)
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
QUEUE, DEFINITION = "load", "load-true"


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    errors: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx answers among the errors
    job_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_client(endpoint: str) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=2)
    return boto3.client("batch", endpoint_url=endpoint, region_name="us-east-1", config=config)


def setup(endpoint: str) -> None:
    batch = make_client(endpoint)
    batch.create_compute_environment(
        computeEnvironmentName="load-ce",
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": os.cpu_count() or 1},
    )
    batch.create_job_queue(
        jobQueueName=QUEUE, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "load-ce"}]
    )
    batch.register_job_definition(
        jobDefinitionName=DEFINITION, type="container",
        containerProperties={"image": "host", "vcpus": 1, "memory": 16, "command": ["true"]},
    )  # fmt: skip


def call(batch: Any, operation: str, results: Results, rng: random.Random) -> None:
    if operation == "submit":
        job_id = batch.submit_job(jobName="load", jobQueue=QUEUE, jobDefinition=DEFINITION)["jobId"]
        with results.lock:
            results.job_ids.append(job_id)
    elif operation == "describe":
        with results.lock:
            recent = results.job_ids[-200:]
        wanted = rng.sample(recent, min(len(recent), 20))
        found = batch.describe_jobs(jobs=wanted)["jobs"] if wanted else []
        if len(found) != len(wanted):
            raise LookupError(f"DescribeJobs returned {len(found)} of {len(wanted)} submitted jobs")
    else:
        batch.list_jobs(jobQueue=QUEUE, jobStatus=rng.choice(STATUSES), maxResults=100)


def client_loop(endpoint: str, deadline: float, results: Results, seed: int) -> None:
    batch = make_client(endpoint)
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        operation = rng.choices(OPERATIONS, WEIGHTS)[0]
        started = time.perf_counter()
        try:
            call(batch, operation, results, rng)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            with results.lock:
                results.errors[f"{operation}: {exc}"] += 1
                results.server_errors += status >= 500
            continue
        except (BotoCoreError, LookupError) as exc:
            with results.lock:
                results.errors[f"{operation}: {type(exc).__name__}: {exc}"] += 1
            continue
        elapsed = time.perf_counter() - started
        with results.lock:
            results.latencies[operation].append(elapsed)


def verify_jobs(endpoint: str, results: Results) -> None:
    """Every job a client was told exists must be describable afterwards."""
    batch = make_client(endpoint)
    ids = results.job_ids
    for start in range(0, len(ids), 100):
        chunk = ids[start : start + 100]
        found = {job["jobId"] for job in batch.describe_jobs(jobs=chunk)["jobs"]}
        for missing in set(chunk) - found:
            results.errors[f"verify: job {missing} was submitted but cannot be described"] += 1


def run_load(endpoint: str, clients: int, duration: float) -> tuple[Results, float]:
    setup(endpoint)
    results = Results()
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(target=client_loop, args=(endpoint, deadline, results, seed), daemon=True)
        for seed in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 120)
    elapsed = time.perf_counter() - started
    verify_jobs(endpoint, results)
    return results, elapsed


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(results: Results, elapsed: float, clients: int) -> dict[str, Any]:
    operations = {
        op: {
            "count": len(values),
            "per_second": round(len(values) / elapsed, 1),
            "p50_ms": round(1000 * percentile(values, 0.50), 1),
            "p99_ms": round(1000 * percentile(values, 0.99), 1),
            "mean_ms": round(1000 * statistics.fmean(values), 1) if values else None,
        }
        for op, values in results.latencies.items()
    }
    total = sum(len(values) for values in results.latencies.values())
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "operations": operations,
        "errors": sum(results.errors.values()),
        "server_errors": results.server_errors,
        "error_samples": [f"{count} x {text}" for text, count in results.errors.most_common(5)],
        "jobs_submitted": len(results.job_ids),
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{report['clients']} clients, {report['seconds']} s, {report['requests']} requests "
          f"({report['requests_per_second']}/s), {report['jobs_submitted']} jobs submitted")  # fmt: skip
    print(f"{'operation':<10} {'count':>7} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for op, row in report["operations"].items():
        print(f"{op:<10} {row['count']:>7} {row['per_second']:>7} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    print(f"errors: {report['errors']} (5xx: {report['server_errors']})")
    for sample in report["error_samples"]:
        print(f"  {sample}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent boto3 clients (threads)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--endpoint-url", help="an already running kiln server (default: start one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "kiln")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "kiln")
    if args.endpoint_url:
        results, elapsed = run_load(args.endpoint_url, args.clients, args.duration)
    else:
        with tempfile.TemporaryDirectory(prefix="kiln-load-") as directory:
            server = start_embedded_server(Path(directory) / "data")
            try:
                results, elapsed = run_load(server.endpoint, args.clients, args.duration)
            finally:
                server.stop()
    report = summary(results, elapsed, args.clients)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    raise SystemExit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
