"""jobStateTimeLimitActions against a real server (https://docs.aws.amazon.com/batch/latest/APIReference/API_JobStateTimeLimitAction.html).

AWS's floor for maxTimeSeconds is 600 s; a private server started with the documented test flag
`--min-state-time-limit-seconds 1` lets the actions fire within seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kiln.config import load_settings
from tests.conftest import FAST_FLAGS, start_server
from tests.support import register_shell, submit, unique, wait_for

MAX_CODE = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"
REQUIREMENT_CODE = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
LIMIT_SECONDS = 2


@pytest.fixture(scope="module")
def fast_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_server(tmp_path_factory.mktemp("limits"), [*FAST_FLAGS, "--min-state-time-limit-seconds", "1"])
    yield server.client()
    server.stop()


def _queue(batch: Any, actions: list[dict[str, Any]], max_vcpus: int = 1) -> str:
    ce, queue = unique("ce"), unique("q")
    batch.create_compute_environment(
        computeEnvironmentName=ce,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
    )
    batch.create_job_queue(jobQueueName=queue, priority=1, jobStateTimeLimitActions=actions,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])  # fmt: skip
    return queue


def _action(reason: str, kind: str = "CANCEL", seconds: int = LIMIT_SECONDS) -> dict[str, Any]:
    return {"reason": reason, "state": "RUNNABLE", "maxTimeSeconds": seconds, "action": kind}


def test_job_that_can_never_fit_is_cancelled_after_the_limit(fast_batch: Any) -> None:
    queue = _queue(fast_batch, [_action(MAX_CODE)])
    job_id = submit(fast_batch, queue, register_shell(fast_batch, "true", vcpus=2))  # CE allows 1 vCPU
    wait_for(fast_batch, job_id, {"RUNNABLE"})
    job = wait_for(fast_batch, job_id, timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == f"Canceled by JobStateTimeLimit action due to reason: {MAX_CODE}"
    assert job["isCancelled"] is True
    assert job["attempts"] == []
    assert "startedAt" not in job
    assert job["stoppedAt"] - job["createdAt"] >= LIMIT_SECONDS * 1000


def test_terminate_action_on_job_requirement_reason(fast_batch: Any) -> None:
    queue = _queue(fast_batch, [_action(MAX_CODE, seconds=3600), _action(REQUIREMENT_CODE, "TERMINATE")])
    job_id = submit(fast_batch, queue, register_shell(fast_batch, "true", memory=100_000_000))  # no host has it
    job = wait_for(fast_batch, job_id, timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == f"Canceled by JobStateTimeLimit action due to reason: {REQUIREMENT_CODE}"
    assert job["isTerminated"] is True
    assert job["attempts"] == []


def test_jobs_waiting_for_capacity_or_fitting_are_left_alone(fast_batch: Any) -> None:
    queue = _queue(fast_batch, [_action(MAX_CODE)])
    blocker = submit(fast_batch, queue, register_shell(fast_batch, "sleep 4"))
    waiting = submit(fast_batch, queue, register_shell(fast_batch, "true"))  # RUNNABLE > 2 s, but no diagnostic
    assert wait_for(fast_batch, blocker)["status"] == "SUCCEEDED"
    job = wait_for(fast_batch, waiting)
    assert job["status"] == "SUCCEEDED"
    assert job["startedAt"] - job["createdAt"] > LIMIT_SECONDS * 1000


def test_array_children_are_cancelled_and_the_parent_fails(fast_batch: Any) -> None:
    queue = _queue(fast_batch, [_action(MAX_CODE)])
    parent = submit(fast_batch, queue, register_shell(fast_batch, "true", vcpus=2), arrayProperties={"size": 2})
    job = wait_for(fast_batch, parent, timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Array Child Job failed"
    for child in fast_batch.describe_jobs(jobs=[f"{parent}:0", f"{parent}:1"])["jobs"]:
        assert child["statusReason"] == f"Canceled by JobStateTimeLimit action due to reason: {MAX_CODE}"


def test_action_added_by_update_job_queue_applies_to_a_waiting_job(fast_batch: Any) -> None:
    queue = _queue(fast_batch, [])
    job_id = submit(fast_batch, queue, register_shell(fast_batch, "true", vcpus=2))
    wait_for(fast_batch, job_id, {"RUNNABLE"})
    fast_batch.update_job_queue(jobQueue=queue, jobStateTimeLimitActions=[_action(MAX_CODE)])
    detail = fast_batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]
    assert detail["jobStateTimeLimitActions"] == [_action(MAX_CODE)]
    assert wait_for(fast_batch, job_id, timeout=30)["statusReason"].startswith("Canceled by JobStateTimeLimit")


@pytest.mark.parametrize("seconds", [599, 86_401])
def test_default_server_keeps_aws_range(batch: Any, seconds: int) -> None:
    with pytest.raises(ClientError, match=f"maxTimeSeconds must be between 600 and 86400 \\(got {seconds}\\)"):
        _queue(batch, [_action(MAX_CODE, seconds=seconds)])


def test_default_server_accepts_aws_bounds(batch: Any) -> None:
    queue = _queue(batch, [_action(MAX_CODE, seconds=600), _action(REQUIREMENT_CODE, seconds=86_400)])
    assert len(batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobStateTimeLimitActions"]) == 2


def test_floor_is_a_kiln_toml_setting_too(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text("[server]\nmin_state_time_limit_seconds = 5\n")
    assert load_settings(tmp_path).min_state_time_limit_seconds == 5
    assert load_settings(tmp_path, min_state_time_limit_seconds=1).min_state_time_limit_seconds == 1
