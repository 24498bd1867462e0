"""Helpers for tests that drive a real server through boto3."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

TERMINAL = {"SUCCEEDED", "FAILED"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


EKS_CLUSTER = "arn:aws:eks:us-east-1:123456789012:cluster/kiln-tests"


def make_queue(batch: Any, *, max_vcpus: int = 2, priority: int = 1, eks: bool = False) -> str:
    """A fresh MANAGED CE and a queue on it; returns the queue name. `eks`: an EKS compute
    environment (for `eksProperties` jobs), namespace `kiln-tests`."""
    ce = unique("ce")
    extra = {"eksConfiguration": {"eksClusterArn": EKS_CLUSTER, "kubernetesNamespace": "kiln-tests"}} if eks else {}
    batch.create_compute_environment(
        computeEnvironmentName=ce,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
        **extra,
    )
    queue = unique("q")
    batch.create_job_queue(
        jobQueueName=queue, priority=priority, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}]
    )
    return queue


def register_shell(batch: Any, script: str, *, memory: int = 128, vcpus: int = 1, **extra: Any) -> str:
    """A `host` image definition running `sh -c script`; returns name:revision."""
    name = unique("jd")
    container = {"image": "host", "vcpus": vcpus, "memory": memory, "command": ["sh", "-c", script]}
    result = batch.register_job_definition(
        jobDefinitionName=name, type="container", containerProperties=container, **extra
    )
    return f"{name}:{result['revision']}"


def wait_for(batch: Any, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 60) -> dict[str, Any]:
    """Poll DescribeJobs until the job reaches one of `statuses`; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = batch.describe_jobs(jobs=[job_id])["jobs"]
        if jobs and jobs[0]["status"] in statuses:
            return dict(jobs[0])
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {jobs}")


def submit(batch: Any, queue: str, definition: str, **extra: Any) -> str:
    return str(batch.submit_job(jobName=unique("job"), jobQueue=queue, jobDefinition=definition, **extra)["jobId"])


@contextmanager
def uvicorn_in_thread(app: Any, **options: Any) -> Iterator[uvicorn.Server]:
    """`app` served by uvicorn on a free 127.0.0.1 port in a thread of this process (`options` go to
    `uvicorn.Config`); its port is `server.servers[0].sockets[0].getsockname()[1]`."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def poll(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Call `check` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
