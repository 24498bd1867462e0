"""`/metrics` on a real server agrees with what DescribeJobs and ListJobs say about the same jobs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln.executors.base import AttemptExited
from kiln.observability.metrics import (
    FAILURE_REASONS,
    EnvironmentUsage,
    ServerMetrics,
    StoreSnapshot,
    failure_reason,
)
from tests.conftest import KilnServer, start_server
from tests.support import make_queue, register_shell, submit, unique, wait_for

STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A server of its own: the counters below count every attempt it ever ran."""
    started = start_server(tmp_path_factory.mktemp("metrics"))
    yield started
    started.stop()


def scrape(server: KilnServer) -> Samples:
    response = httpx.get(f"{server.endpoint}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def listed(batch: Any, queue: str, status: str) -> int:
    pages = batch.get_paginator("list_jobs").paginate(jobQueue=queue, jobStatus=status)
    return sum(len(page["jobSummaryList"]) for page in pages)


def test_metrics_agree_with_describe_jobs_and_list_jobs(server: KilnServer) -> None:
    batch = server.client()
    queue = make_queue(batch, max_vcpus=2)
    environment = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
    environment_name = environment["computeEnvironment"].rsplit("/", 1)[-1]
    missing_image = unique("jd")
    batch.register_job_definition(
        jobDefinitionName=missing_image,
        type="container",
        containerProperties={"image": "example.invalid/nothing:1", "vcpus": 1, "memory": 64, "command": ["true"]},
    )
    ids = [
        submit(batch, queue, register_shell(batch, "echo ok")),
        submit(batch, queue, register_shell(batch, "echo ok too")),
        submit(batch, queue, register_shell(batch, "exit 3")),
        submit(batch, queue, register_shell(batch, "exit 1", retryStrategy={"attempts": 2})),
        submit(batch, queue, missing_image),
        submit(batch, queue, register_shell(batch, "echo child"), arrayProperties={"size": 3}),
    ]
    for job_id in ids:
        wait_for(batch, job_id)
    sleeper = submit(batch, queue, register_shell(batch, "sleep 60", memory=96))
    wait_for(batch, sleeper, {"RUNNING"})
    too_big = submit(batch, queue, register_shell(batch, "true", vcpus=4096))  # stays RUNNABLE
    wait_for(batch, too_big, {"RUNNABLE"})

    samples = scrape(server)
    described = Counter(job["status"] for job in batch.describe_jobs(jobs=[*ids, sleeper, too_big])["jobs"])
    assert described == {"SUCCEEDED": 3, "FAILED": 3, "RUNNING": 1, "RUNNABLE": 1}
    for status in STATUSES:
        shown = value(samples, "kiln_jobs", queue=queue, status=status)
        assert shown == described[status] == listed(batch, queue, status), status
    assert value(samples, "kiln_array_child_jobs", queue=queue, status="SUCCEEDED") == 3
    # Capacity held right now: the sleeper alone.
    in_use = {"compute_environment": environment_name}
    assert value(samples, "kiln_compute_environment_vcpus_in_use", **in_use) == 1
    assert value(samples, "kiln_compute_environment_memory_bytes_in_use", **in_use) == 96 * 1024 * 1024
    assert value(samples, "kiln_compute_environment_running_attempts", **in_use) == 1
    assert value(samples, "kiln_host_vcpus") >= 1 and value(samples, "kiln_host_memory_bytes") > 0

    batch.terminate_job(jobId=sleeper, reason="metrics test over")
    assert wait_for(batch, sleeper)["status"] == "FAILED"
    samples = scrape(server)
    assert value(samples, "kiln_jobs", queue=queue, status="RUNNING") == 0 == listed(batch, queue, "RUNNING")
    assert value(samples, "kiln_jobs", queue=queue, status="FAILED") == 4 == listed(batch, queue, "FAILED")
    assert value(samples, "kiln_compute_environment_vcpus_in_use", **in_use) == 0
    # Attempts: 2 + 1 + 2 (retried) + 3 children + the sleeper started; the unknown image never did.
    started = [f"{ids[5]}:{i}" for i in range(3)] + [*ids[:4], sleeper]
    attempts = [attempt for job in batch.describe_jobs(jobs=started)["jobs"] for attempt in job["attempts"]]
    assert value(samples, "kiln_attempts_started_total") == len(attempts) == 9
    failed = {reason: value(samples, "kiln_attempts_failed_total", reason=reason) for reason in FAILURE_REASONS}
    assert failed == {**dict.fromkeys(FAILURE_REASONS, 0.0), "NonZeroExitCode": 3, "CannotPullContainerError": 1,
                      "Terminated": 1}  # fmt: skip
    for outcome, attempts_of in (
        ("succeeded", [a for a in attempts if a["container"].get("exitCode") == 0]),
        ("failed", [a for a in attempts if a["container"].get("exitCode") != 0]),
    ):
        assert value(samples, "kiln_attempt_duration_seconds_count", outcome=outcome) == len(attempts_of)
        seconds = sum(a["stoppedAt"] - a["startedAt"] for a in attempts_of) / 1000
        assert value(samples, "kiln_attempt_duration_seconds_sum", outcome=outcome) == pytest.approx(seconds)
    assert len([a for a in attempts if a["container"].get("exitCode") == 0]) == 5
    assert value(samples, "kiln_scheduler_tick_seconds_count") > 0


def test_metrics_answers_get_only(server: KilnServer) -> None:
    refused = httpx.post(f"{server.endpoint}/metrics")
    assert refused.status_code == 400 and refused.json()["__type"] == "ClientException"


def test_failure_reasons_are_a_small_fixed_set() -> None:
    def exited(**fields: Any) -> AttemptExited:
        return AttemptExited(**{"attempt_id": "t", "at_ms": 1, "exit_code": 1, "status_reason": "x", **fields})

    assert failure_reason(exited(exit_code=0)) is None
    assert failure_reason(exited(exit_code=0, terminated=True)) == "Terminated"
    assert failure_reason(exited(exit_code=137, oom=True)) == "OutOfMemoryError"
    assert failure_reason(exited(exit_code=143, timed_out=True)) == "Timeout"
    assert failure_reason(exited(exit_code=None, started=False, reason="CannotPullContainerError: x")) == (
        "CannotPullContainerError"
    )
    assert failure_reason(exited(exit_code=None, started=False, reason="something else")) == "TaskFailedToStart"
    assert failure_reason(exited(exit_code=None)) == "HostTerminated"
    assert failure_reason(exited(exit_code=2, status_reason="Terminated by a person with a long story")) == (
        "NonZeroExitCode"
    )


def test_each_server_has_its_own_registry(tmp_path: Path) -> None:
    """Several apps in one process (tests) must not collide in a global registry."""
    snapshot = StoreSnapshot(
        jobs={("q", "RUNNING"): 2}, array_children={}, environments=[EnvironmentUsage("ce", 1.5, 256, 0, 2)]
    )
    first, second = ServerMetrics(lambda: snapshot), ServerMetrics(lambda: snapshot)
    first.scheduler.attempts_started.inc()
    assert first.registry.get_sample_value("kiln_attempts_started_total") == 1
    assert second.registry.get_sample_value("kiln_attempts_started_total") == 0
    labels = {"compute_environment": "ce"}
    assert second.registry.get_sample_value("kiln_compute_environment_memory_bytes_in_use", labels) == 256 * 2**20
    assert second.registry.get_sample_value("kiln_jobs", {"queue": "q", "status": "RUNNING"}) == 2
