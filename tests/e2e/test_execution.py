"""Jobs really run: memory limits, timeouts, retries, evaluateOnExit, images, terminate, environment.

Every scenario runs on the local executor and on Docker (tests/e2e/conftest.py): scripts are
busybox `sh`.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psutil
import pytest

from tests.conftest import KilnServer
from tests.e2e.conftest import Runtime, Shell
from tests.support import make_queue, submit, wait_for

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"


@pytest.fixture(scope="module")
def kiln_server(runtime_server: KilnServer) -> KilnServer:
    return runtime_server


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2)


def _log(kiln_server: KilnServer, job_id: str, attempt: int | None = None) -> str:
    import httpx

    params = {} if attempt is None else {"attempt": attempt}
    response = httpx.get(f"{kiln_server.endpoint}/kiln/v1/logs/{job_id}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_job_sees_aws_batch_environment(
    batch: Any, queue: str, kiln_server: KilnServer, shell: Shell, runtime: Runtime
) -> None:
    definition = shell(
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
    assert runtime.workdir_marker(job["attempts"][0]["container"]["taskArn"].rsplit("/", 1)[-1]) in text


def test_memory_limit_kills_with_oom_reason_and_nothing_survives(batch: Any, shell: Shell, queue: str) -> None:
    # `tail` holds its one 192 MiB line (3x the 64 MiB limit); a detached sleeper must die with it.
    script = "setsid sleep 1717 & echo sleeper=$! ; head -c 201326592 /dev/zero | tail; sleep 30"
    definition = shell(script, memory=64)
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


def test_timeout_fails_with_timeout_reason_and_is_not_retried(batch: Any, shell: Shell, queue: str) -> None:
    definition = shell("trap '' TERM; sleep 30", retryStrategy={"attempts": 3})
    started = time.monotonic()
    job = wait_for(batch, submit(batch, queue, definition, timeout={"attemptDurationSeconds": 1}), timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Job attempt duration exceeded timeout"
    assert len(job["attempts"]) == 1  # timeouts are never retried
    assert job["container"]["exitCode"] == 137  # SIGTERM ignored, SIGKILL after the 1 s test grace
    assert time.monotonic() - started < 20


def test_fails_once_then_succeeds_on_second_attempt(
    batch: Any, shell: Shell, queue: str, kiln_server: KilnServer
) -> None:
    script = 'echo "attempt $AWS_BATCH_JOB_ATTEMPT"; [ "$AWS_BATCH_JOB_ATTEMPT" -ge 2 ] || exit 3'
    definition = shell(script, retryStrategy={"attempts": 3})
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id)
    assert job["status"] == "SUCCEEDED"
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [3, 0]
    assert all(a["statusReason"] == "Essential container in task exited" for a in job["attempts"])
    assert job["attempts"][0]["container"]["logStreamName"] != job["attempts"][1]["container"]["logStreamName"]
    assert _log(kiln_server, job_id, attempt=1).strip() == "attempt 1"
    assert _log(kiln_server, job_id).strip() == "attempt 2"


def test_evaluate_on_exit_exit_action_stops_retries(batch: Any, shell: Shell, queue: str) -> None:
    strategy = {
        "attempts": 5,
        "evaluateOnExit": [{"onExitCode": "4*", "action": "EXIT"}, {"onReason": "*", "action": "RETRY"}],
    }
    definition = shell("exit 42", retryStrategy=strategy)
    job = wait_for(batch, submit(batch, queue, definition))
    assert job["status"] == "FAILED"
    assert len(job["attempts"]) == 1
    assert job["container"]["exitCode"] == 42


def test_no_matching_rule_retries_until_attempts_run_out(batch: Any, shell: Shell, queue: str) -> None:
    strategy = {"attempts": 2, "evaluateOnExit": [{"onExitCode": "9", "action": "EXIT"}]}
    definition = shell("exit 1", retryStrategy=strategy)
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


def test_terminate_stops_the_whole_process_tree(batch: Any, shell: Shell, queue: str) -> None:
    seconds = str(random.randint(300_000, 399_999))  # a duration no other test or suite uses
    definition = shell(f"sleep {seconds} & sleep {seconds}; wait", retryStrategy={"attempts": 3})
    job_id = submit(batch, queue, definition)
    wait_for(batch, job_id, {"RUNNING"})
    batch.terminate_job(jobId=job_id, reason="stopped by test")
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "stopped by test"
    assert job["isTerminated"] is True
    assert len(job["attempts"]) == 1  # terminated jobs are never retried

    def ours_alive() -> bool:
        return any(p.info["cmdline"] == ["sleep", seconds] for p in psutil.process_iter(["cmdline"]))

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ours_alive():
        time.sleep(0.1)
    assert not ours_alive()


def test_array_children_and_dependent_job(batch: Any, shell: Shell, queue: str, kiln_server: KilnServer) -> None:
    definition = shell('echo "index=$AWS_BATCH_JOB_ARRAY_INDEX size=$AWS_BATCH_JOB_ARRAY_SIZE"')
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


def test_failed_dependency_fails_dependents_without_running(batch: Any, shell: Shell, queue: str) -> None:
    failing = submit(batch, queue, shell("exit 1"))
    dependent = submit(batch, queue, shell("true"), dependsOn=[{"jobId": failing}])
    chained = submit(batch, queue, shell("true"), dependsOn=[{"jobId": dependent}])
    for job_id in (dependent, chained):
        job = wait_for(batch, job_id)
        assert job["status"] == "FAILED"
        assert job["statusReason"] == "Dependent Job failed"
        assert job["attempts"] == []
        assert "startedAt" not in job
