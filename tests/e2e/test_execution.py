"""Jobs really run: memory limits, timeouts, retries, evaluateOnExit, images, terminate, environment."""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest

from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, wait_for

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2)


def _log(kiln_server: KilnServer, job_id: str, attempt: int | None = None) -> str:
    import httpx

    params = {} if attempt is None else {"attempt": attempt}
    response = httpx.get(f"{kiln_server.endpoint}/kiln/v1/logs/{job_id}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_job_sees_aws_batch_environment(batch: Any, queue: str, kiln_server: KilnServer) -> None:
    definition = register_shell(
        batch,
        'echo "id=$AWS_BATCH_JOB_ID attempt=$AWS_BATCH_JOB_ATTEMPT jq=$AWS_BATCH_JQ_NAME ce=$AWS_BATCH_CE_NAME '
        'mine=$MINE pwd=$(pwd)"',
        **{},
    )
    job_id = submit(
        batch, queue, definition, containerOverrides={"environment": [{"name": "MINE", "value": "from-override"}]}
    )
    job = wait_for(batch, job_id)
    assert job["status"] == "SUCCEEDED", job
    text = _log(kiln_server, job_id)
    assert f"id={job_id} attempt=1 jq={queue} ce=" in text
    assert "mine=from-override" in text
    assert f"/work/{job['attempts'][0]['container']['taskArn'].rsplit('/', 1)[-1]}" in text


def test_memory_limit_kills_with_oom_reason_and_nothing_survives(batch: Any, queue: str) -> None:
    # Allocates 3x its 64 MiB limit and starts a detached sleeper that must die with it.
    script = (
        "setsid sleep 1717 & echo sleeper=$! ; "
        'python3 -c "import time; b=bytearray(192*1024*1024); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; time.sleep(30)"'
    )
    definition = register_shell(batch, script, memory=64)
    started = time.monotonic()
    job = wait_for(batch, submit(batch, queue, definition), timeout=60)
    assert job["status"] == "FAILED"
    assert time.monotonic() - started < 30
    assert job["statusReason"] == "Essential container in task exited"
    assert job["container"]["reason"] == OOM_REASON
    assert job["container"]["exitCode"] == 137
    assert job["attempts"][-1]["container"]["reason"] == OOM_REASON
    stragglers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "1717"]]
    assert stragglers == []


def test_timeout_fails_with_timeout_reason_and_is_not_retried(batch: Any, queue: str) -> None:
    definition = register_shell(batch, "trap '' TERM; sleep 30", retryStrategy={"attempts": 3})
    started = time.monotonic()
    job = wait_for(batch, submit(batch, queue, definition, timeout={"attemptDurationSeconds": 1}), timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Job attempt duration exceeded timeout"
    assert len(job["attempts"]) == 1  # timeouts are never retried
    assert job["container"]["exitCode"] == 137  # SIGTERM ignored, SIGKILL after the 1 s test grace
    assert time.monotonic() - started < 20


def test_fails_once_then_succeeds_on_second_attempt(batch: Any, queue: str, kiln_server: KilnServer) -> None:
    script = 'echo "attempt $AWS_BATCH_JOB_ATTEMPT"; [ "$AWS_BATCH_JOB_ATTEMPT" -ge 2 ] || exit 3'
    definition = register_shell(batch, script, retryStrategy={"attempts": 3})
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id)
    assert job["status"] == "SUCCEEDED"
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [3, 0]
    assert all(a["statusReason"] == "Essential container in task exited" for a in job["attempts"])
    assert job["attempts"][0]["container"]["logStreamName"] != job["attempts"][1]["container"]["logStreamName"]
    assert _log(kiln_server, job_id, attempt=1).strip() == "attempt 1"
    assert _log(kiln_server, job_id).strip() == "attempt 2"


def test_evaluate_on_exit_exit_action_stops_retries(batch: Any, queue: str) -> None:
    strategy = {
        "attempts": 5,
        "evaluateOnExit": [{"onExitCode": "4*", "action": "EXIT"}, {"onReason": "*", "action": "RETRY"}],
    }
    definition = register_shell(batch, "exit 42", retryStrategy=strategy)
    job = wait_for(batch, submit(batch, queue, definition))
    assert job["status"] == "FAILED"
    assert len(job["attempts"]) == 1
    assert job["container"]["exitCode"] == 42


def test_no_matching_rule_retries_until_attempts_run_out(batch: Any, queue: str) -> None:
    strategy = {"attempts": 2, "evaluateOnExit": [{"onExitCode": "9", "action": "EXIT"}]}
    definition = register_shell(batch, "exit 1", retryStrategy=strategy)
    job = wait_for(batch, submit(batch, queue, definition))
    assert job["status"] == "FAILED"
    assert len(job["attempts"]) == 2


def test_unknown_image_fails_before_running(batch: Any, queue: str) -> None:
    name = "no-such-image"
    batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={"image": "example.invalid/nothing:1", "vcpus": 1, "memory": 64, "command": ["true"]},
    )
    job = wait_for(batch, submit(batch, queue, name))
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Task failed to start"
    assert job["container"]["reason"].startswith("CannotPullContainerError: ")
    assert "startedAt" not in job
    assert job["container"].get("exitCode") is None


def test_terminate_stops_the_whole_process_tree(batch: Any, queue: str) -> None:
    definition = register_shell(batch, "sleep 300 & sleep 300; wait", retryStrategy={"attempts": 3})
    job_id = submit(batch, queue, definition)
    wait_for(batch, job_id, {"RUNNING"})
    batch.terminate_job(jobId=job_id, reason="stopped by test")
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "stopped by test"
    assert job["isTerminated"] is True
    assert len(job["attempts"]) == 1  # terminated jobs are never retried
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        p.info["cmdline"] == ["sleep", "300"] for p in psutil.process_iter(["cmdline"])
    ):
        time.sleep(0.1)
    assert not any(p.info["cmdline"] == ["sleep", "300"] for p in psutil.process_iter(["cmdline"]))


def test_array_children_and_dependent_job(batch: Any, queue: str, kiln_server: KilnServer) -> None:
    definition = register_shell(batch, 'echo "index=$AWS_BATCH_JOB_ARRAY_INDEX size=$AWS_BATCH_JOB_ARRAY_SIZE"')
    parent = submit(batch, queue, definition, arrayProperties={"size": 3})
    after = submit(batch, queue, definition, dependsOn=[{"jobId": parent, "type": "SEQUENTIAL"}])
    assert wait_for(batch, after)["status"] == "SUCCEEDED"
    detail = batch.describe_jobs(jobs=[parent])["jobs"][0]
    assert detail["status"] == "SUCCEEDED"
    assert detail["arrayProperties"]["statusSummary"] == {
        "SUBMITTED": 0, "PENDING": 0, "RUNNABLE": 0, "STARTING": 0, "RUNNING": 0, "SUCCEEDED": 3, "FAILED": 0,
    }  # fmt: skip
    for index in range(3):
        assert _log(kiln_server, f"{parent}:{index}").strip() == f"index={index} size=3"


def test_failed_dependency_fails_dependents_without_running(batch: Any, queue: str) -> None:
    failing = submit(batch, queue, register_shell(batch, "exit 1"))
    dependent = submit(batch, queue, register_shell(batch, "true"), dependsOn=[{"jobId": failing}])
    chained = submit(batch, queue, register_shell(batch, "true"), dependsOn=[{"jobId": dependent}])
    for job_id in (dependent, chained):
        job = wait_for(batch, job_id)
        assert job["status"] == "FAILED"
        assert job["statusReason"] == "Dependent Job failed"
        assert job["attempts"] == []
        assert "startedAt" not in job
