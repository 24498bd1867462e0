"""The shell-array demo: start a real `kiln server`, run a small AWS Batch workflow through boto3, show it.

Run it with `.venv/bin/python examples/shell_array_demo.py` (`make demo` renders a Blender scene instead).

Creates a compute environment and a queue, registers a definition (image `host`: the command runs
directly on this machine), submits an array of 4 shell jobs plus one job that depends on the whole
array, waits for them, and prints statuses and logs. Uses only the public API, like any user.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from rich.console import Console
from rich.table import Table

from kiln.cli.embedded_server import start_embedded_server

console = Console()


def wait(batch: Any, job_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    with console.status("waiting for jobs") as status:
        while time.monotonic() < deadline:
            jobs = batch.describe_jobs(jobs=job_ids)["jobs"]
            status.update(" ".join(f"{j['jobName']}={j['status']}" for j in jobs))
            if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs):
                return list(jobs)
            time.sleep(0.3)
    raise SystemExit("jobs did not finish in time")


def run(endpoint: str) -> None:
    batch = boto3.client(
        "batch", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo"
    )
    batch.create_compute_environment(
        computeEnvironmentName="demo-ce",
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2},
    )
    batch.create_job_queue(
        jobQueueName="demo-queue", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "demo-ce"}]
    )
    script = 'echo "slice $AWS_BATCH_JOB_ARRAY_INDEX of $AWS_BATCH_JOB_ARRAY_SIZE says: $0"; sleep 1'
    batch.register_job_definition(
        jobDefinitionName="demo-shell",
        type="container",
        parameters={"greeting": "hello from kiln"},
        containerProperties={
            "image": "host",
            "vcpus": 1,
            "memory": 64,
            "command": ["sh", "-c", script, "Ref::greeting"],
        },
        retryStrategy={"attempts": 2},
    )
    array = batch.submit_job(
        jobName="demo-array", jobQueue="demo-queue", jobDefinition="demo-shell", arrayProperties={"size": 4}
    )
    final = batch.submit_job(
        jobName="demo-after",
        jobQueue="demo-queue",
        jobDefinition="demo-shell",
        dependsOn=[{"jobId": array["jobId"]}],
        containerOverrides={"command": ["sh", "-c", "echo all slices done"]},
    )
    console.print(f"submitted array job {array['jobId']} (4 children) and dependent job {final['jobId']}")
    wait(batch, [array["jobId"], final["jobId"]])
    children = [f"{array['jobId']}:{i}" for i in range(4)]
    table = Table("job", "status", "exit", "output (kiln logs)", title="AWS Batch jobs run by Kiln")
    for job in batch.describe_jobs(jobs=[array["jobId"], *children, final["jobId"]])["jobs"]:
        index = job.get("arrayProperties", {}).get("index")
        label = job["jobName"] if index is None else f"  {job['jobName']}[{index}]"
        output = "" if "size" in job.get("arrayProperties", {}) else log_text(endpoint, job["jobId"])
        exit_code = job.get("container", {}).get("exitCode", "")
        table.add_row(label, job["status"], str(exit_code), output)
    console.print(table)
    console.print(f"array parent {array['jobId']}: {job_summary(batch, array['jobId'])}")


def log_text(endpoint: str, job_id: str) -> str:
    return str(httpx.get(f"{endpoint}/kiln/v1/logs/{job_id}", timeout=10).json()["text"]).strip()


def job_summary(batch: Any, job_id: str) -> str:
    summary = batch.describe_jobs(jobs=[job_id])["jobs"][0]["arrayProperties"]["statusSummary"]
    return ", ".join(f"{count} {status}" for status, count in summary.items() if count)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kiln-demo-") as tmp:
        server = start_embedded_server(Path(tmp) / "data")
        try:
            run(server.endpoint)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
