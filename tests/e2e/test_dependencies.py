"""Array jobs and dependencies, driven through boto3 against a real server (https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html).

Ordering is checked from inside the jobs: children append to files or leave markers, and a job that
runs too early notices and exits 1. Timestamps from DescribeJobs are checked as well.
"""

from __future__ import annotations

import itertools
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KilnServer
from tests.e2e.conftest import Shell
from tests.support import make_queue, submit, wait_for

DEPENDENT_FAILED = "Dependent Job failed"
CHILD_FAILED = "Array Child Job failed"
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
TERMINAL = {"SUCCEEDED", "FAILED"}


@pytest.fixture(scope="module")
def kiln_server(runtime_server: KilnServer) -> KilnServer:
    """Every scenario here runs on the local executor and on Docker (tests/e2e/conftest.py)."""
    return runtime_server


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    """Two vCPUs: independent jobs could run side by side, so ordering comes from dependencies."""
    return make_queue(batch, max_vcpus=2)


@pytest.fixture(scope="module")
def narrow_queue(batch: Any) -> str:
    """One vCPU: one job at a time."""
    return make_queue(batch, max_vcpus=1)


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def describe(batch: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
            found[job["jobId"]] = job
    return found


def children(batch: Any, parent: str, size: int) -> list[dict[str, Any]]:
    found = describe(batch, [f"{parent}:{i}" for i in range(size)])
    return [found[f"{parent}:{i}"] for i in range(size)]


def wait_all(batch: Any, ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = describe(batch, ids)
        if all(found[job_id]["status"] in TERMINAL for job_id in ids):
            return found
        time.sleep(0.2)
    raise AssertionError(f"not all terminal in {timeout} s: {[(j, found[j]['status']) for j in ids]}")


def wait_summary(batch: Any, parent: str, wanted: dict[str, int], timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    summary: dict[str, int] = {}
    while time.monotonic() < deadline:
        summary = batch.describe_jobs(jobs=[parent])["jobs"][0]["arrayProperties"]["statusSummary"]
        if all(summary[key] == count for key, count in wanted.items()):
            return dict(summary)
        time.sleep(0.05)
    raise AssertionError(f"statusSummary never reached {wanted}; last {summary}")


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def assert_never_ran(job: dict[str, Any], reason: str = DEPENDENT_FAILED) -> None:
    assert job["status"] == "FAILED", job
    assert job["statusReason"] == reason
    assert job["attempts"] == []
    assert "startedAt" not in job
    assert "stoppedAt" in job


# ------------------------------------------------------------------------------- plain dependencies


def test_plain_job_waits_for_plain_job(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    log = job_tmp / "order"
    first = submit(batch, queue, shell(f"sleep 1; echo A >> {_q(log)}"))
    second = submit(batch, queue, shell(f"echo B >> {_q(log)}"), dependsOn=[{"jobId": first}])
    assert batch.describe_jobs(jobs=[second])["jobs"][0]["status"] in {"SUBMITTED", "PENDING"}
    found = wait_all(batch, [first, second])
    assert [found[j]["status"] for j in (first, second)] == ["SUCCEEDED", "SUCCEEDED"]
    assert lines(log) == ["A", "B"]
    assert found[second]["startedAt"] >= found[first]["stoppedAt"]
    assert found[second]["dependsOn"] == [{"jobId": first}]


def test_sequential_type_with_job_id_on_plain_job_is_an_ordinary_dependency(
    batch: Any, shell: Shell, queue: str, job_tmp: Path
) -> None:
    log = job_tmp / "order"
    first = submit(batch, queue, shell(f"sleep 1; echo A >> {_q(log)}"))
    dependency = [{"jobId": first, "type": "SEQUENTIAL"}]
    second = submit(batch, queue, shell(f"echo B >> {_q(log)}"), dependsOn=dependency)
    found = wait_all(batch, [first, second])
    assert found[second]["status"] == "SUCCEEDED"
    assert lines(log) == ["A", "B"]
    assert found[second]["dependsOn"] == dependency
    failing = submit(batch, queue, shell("exit 1"))
    marker = job_tmp / "ran"
    dependent = submit(batch, queue, shell(f"touch {_q(marker)}"), dependsOn=[{"jobId": failing, "type": "SEQUENTIAL"}])
    assert_never_ran(wait_for(batch, dependent))
    assert not marker.exists()


def test_dependency_that_already_succeeded_is_satisfied(batch: Any, shell: Shell, queue: str) -> None:
    done = submit(batch, queue, shell("true"))
    assert wait_for(batch, done)["status"] == "SUCCEEDED"
    later = submit(batch, queue, shell("true"), dependsOn=[{"jobId": done}])
    assert wait_for(batch, later)["status"] == "SUCCEEDED"


def test_failure_cascades_down_a_chain_of_three(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    marker = job_tmp / "ran"
    first = submit(batch, queue, shell("sleep 1; exit 1"))
    touch = shell(f"touch {_q(marker)}")
    second = submit(batch, queue, touch, dependsOn=[{"jobId": first}])
    third = submit(batch, queue, touch, dependsOn=[{"jobId": second}])
    array = submit(batch, queue, touch, dependsOn=[{"jobId": third}], arrayProperties={"size": 3})
    found = wait_all(batch, [first, second, third, array])
    assert found[first]["status"] == "FAILED"
    assert found[first]["statusReason"] == "Essential container in task exited"
    for job_id in (second, third, array):
        assert_never_ran(found[job_id])
    for child in children(batch, array, 3):
        assert_never_ran(child)
    assert not marker.exists()


def test_cancelled_dependency_fails_dependents(batch: Any, shell: Shell, job_tmp: Path) -> None:
    # Two vCPUs on a one-vCPU environment: stays RUNNABLE (MISCONFIGURATION diagnostic) until cancelled.
    stuck_queue = make_queue(batch, max_vcpus=1)
    stuck = submit(batch, stuck_queue, shell("true", vcpus=2))
    marker = job_tmp / "ran"
    dependent = submit(batch, stuck_queue, shell(f"touch {_q(marker)}"), dependsOn=[{"jobId": stuck}])
    wait_for(batch, stuck, {"RUNNABLE"})
    batch.cancel_job(jobId=stuck, reason="no longer needed")
    cancelled = wait_for(batch, stuck)
    assert cancelled["status"] == "FAILED"
    assert cancelled["statusReason"] == "no longer needed"
    assert cancelled["isCancelled"] is True
    assert_never_ran(wait_for(batch, dependent))
    assert not marker.exists()


def test_terminated_dependency_fails_dependents(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    marker = job_tmp / "ran"
    running = submit(batch, queue, shell("sleep 30"))
    dependent = submit(batch, queue, shell(f"touch {_q(marker)}"), dependsOn=[{"jobId": running}])
    wait_for(batch, running, {"RUNNING"})
    batch.terminate_job(jobId=running, reason="stop now")
    terminated = wait_for(batch, running, timeout=30)
    assert terminated["status"] == "FAILED"
    assert terminated["statusReason"] == "stop now"
    assert len(terminated["attempts"]) == 1
    assert_never_ran(wait_for(batch, dependent))
    assert not marker.exists()


# ------------------------------------------------------------------------------ arrays and dependencies


def test_plain_job_on_array_parent_waits_for_every_child(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    frames = job_tmp / "frames"
    frames.mkdir()
    frames.chmod(0o777)  # the jobs write here, as whichever user they run as
    render = shell(f"sleep 0.$((3 - AWS_BATCH_JOB_ARRAY_INDEX)); touch {_q(frames)}/$AWS_BATCH_JOB_ARRAY_INDEX")
    parent = submit(batch, queue, render, arrayProperties={"size": 4})
    stitch = shell(f'[ "$(ls {_q(frames)} | wc -l)" -eq 4 ] || exit 1; touch {_q(job_tmp / "video")}')
    stitcher = submit(batch, queue, stitch, dependsOn=[{"jobId": parent}])
    found = wait_all(batch, [parent, stitcher])
    assert found[parent]["status"] == "SUCCEEDED"
    assert found[stitcher]["status"] == "SUCCEEDED", found[stitcher]
    assert (job_tmp / "video").exists()
    assert found[stitcher]["startedAt"] >= max(child["stoppedAt"] for child in children(batch, parent, 4))


def test_array_on_plain_job_starts_no_child_before_it_succeeds(
    batch: Any, shell: Shell, queue: str, job_tmp: Path
) -> None:
    log = job_tmp / "order"
    first = submit(batch, queue, shell(f"sleep 1.5; echo X >> {_q(log)}"))
    child_script = f'echo "C$AWS_BATCH_JOB_ARRAY_INDEX" >> {_q(log)}'
    array = submit(batch, queue, shell(child_script), dependsOn=[{"jobId": first}], arrayProperties={"size": 3})
    wait_for(batch, first, {"RUNNING"})
    waiting = children(batch, array, 3)
    assert {child["status"] for child in waiting} <= {"SUBMITTED", "PENDING"}
    assert batch.describe_jobs(jobs=[array])["jobs"][0]["status"] in {"SUBMITTED", "PENDING"}
    found = wait_all(batch, [first, array])
    assert found[array]["status"] == "SUCCEEDED"
    assert lines(log)[0] == "X"
    assert sorted(lines(log)[1:]) == ["C0", "C1", "C2"]
    assert all(child["startedAt"] >= found[first]["stoppedAt"] for child in children(batch, array, 3))


def test_n_to_n_child_waits_only_for_its_partner(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    markers = job_tmp / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    # A:0 is slow, A:1 and A:2 quick: with N_TO_N, B:1 and B:2 need not wait for A:0.
    produce = shell(f'i=$AWS_BATCH_JOB_ARRAY_INDEX; [ "$i" -eq 0 ] && sleep 3; sleep 0.2; touch {_q(markers)}/a_$i')
    consume = shell(f"i=$AWS_BATCH_JOB_ARRAY_INDEX; [ -f {_q(markers)}/a_$i ] || exit 1; touch {_q(markers)}/b_$i")
    first = submit(batch, queue, produce, arrayProperties={"size": 3})
    second = submit(batch, queue, consume, dependsOn=[{"jobId": first, "type": "N_TO_N"}], arrayProperties={"size": 3})
    found = wait_all(batch, [first, second])
    assert found[first]["status"] == "SUCCEEDED"
    assert found[second]["status"] == "SUCCEEDED"
    a, b = children(batch, first, 3), children(batch, second, 3)
    for i in range(3):
        assert b[i]["status"] == "SUCCEEDED"
        assert b[i]["startedAt"] >= a[i]["stoppedAt"]
    assert min(b[1]["startedAt"], b[2]["startedAt"]) < a[0]["stoppedAt"]  # not a whole-array wait
    assert sorted(p.name for p in markers.iterdir()) == ["a_0", "a_1", "a_2", "b_0", "b_1", "b_2"]


def test_n_to_n_partner_failure_fails_only_that_child(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    produce = shell('[ "$AWS_BATCH_JOB_ARRAY_INDEX" -ne 1 ]')
    first = submit(batch, queue, produce, arrayProperties={"size": 3})
    second = submit(batch, queue, shell("true"), dependsOn=[{"jobId": first, "type": "N_TO_N"}],
                    arrayProperties={"size": 3})  # fmt: skip
    found = wait_all(batch, [first, second])
    assert found[first]["status"] == "FAILED"
    assert found[first]["statusReason"] == CHILD_FAILED
    assert found[second]["status"] == "FAILED"
    b = children(batch, second, 3)
    assert [b[0]["status"], b[2]["status"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert_never_ran(b[1])


def test_sequential_array_runs_children_in_index_order(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    log = job_tmp / "order"
    # Later indexes sleep less: run side by side, they would finish in reverse order.
    script = f"i=$AWS_BATCH_JOB_ARRAY_INDEX; sleep 0.$((5 - i)); echo $i >> {_q(log)}"
    parent = submit(batch, queue, shell(script), dependsOn=[{"type": "SEQUENTIAL"}],
                    arrayProperties={"size": 5})  # fmt: skip
    assert wait_for(batch, parent)["status"] == "SUCCEEDED"
    assert lines(log) == ["0", "1", "2", "3", "4"]
    kids = children(batch, parent, 5)
    for before, after in itertools.pairwise(kids):
        assert after["startedAt"] >= before["stoppedAt"]


def test_failing_sequential_child_stops_the_rest(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    log = job_tmp / "order"
    script = f'i=$AWS_BATCH_JOB_ARRAY_INDEX; echo $i >> {_q(log)}; [ "$i" -ne 2 ]'
    parent = submit(batch, queue, shell(script), dependsOn=[{"type": "SEQUENTIAL"}],
                    arrayProperties={"size": 5})  # fmt: skip
    job = wait_for(batch, parent)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == CHILD_FAILED
    assert job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 2
    assert job["arrayProperties"]["statusSummary"]["FAILED"] == 3
    assert lines(log) == ["0", "1", "2"]
    kids = children(batch, parent, 5)
    assert [k["status"] for k in kids[:3]] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert kids[2]["statusReason"] == "Essential container in task exited"
    for kid in kids[3:]:
        assert_never_ran(kid)


def test_job_id_and_sequential_combined(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    log = job_tmp / "order"
    first = submit(batch, queue, shell(f"sleep 1; echo X >> {_q(log)}"))
    script = f"i=$AWS_BATCH_JOB_ARRAY_INDEX; sleep 0.$((3 - i)); echo $i >> {_q(log)}"
    depends = [{"jobId": first}, {"type": "SEQUENTIAL"}]
    parent = submit(batch, queue, shell(script), dependsOn=depends, arrayProperties={"size": 3})
    assert wait_for(batch, parent)["status"] == "SUCCEEDED"
    assert lines(log) == ["X", "0", "1", "2"]
    assert batch.describe_jobs(jobs=[parent])["jobs"][0]["dependsOn"] == depends


def test_cancel_array_parent_mid_run(batch: Any, shell: Shell, queue: str, job_tmp: Path) -> None:
    # Children 0-1 end at once, 2-3 then run for a while, 4-5 wait for capacity (2 vCPUs).
    marker = job_tmp / "ran"
    script = f'i=$AWS_BATCH_JOB_ARRAY_INDEX; [ "$i" -ge 4 ] && touch {_q(marker)}; [ "$i" -lt 2 ] || sleep 4'
    parent = submit(batch, queue, shell(script), arrayProperties={"size": 6})
    wait_summary(batch, parent, {"SUCCEEDED": 2, "RUNNING": 2, "RUNNABLE": 2})
    batch.cancel_job(jobId=parent, reason="cancelled mid-run")
    kids = children(batch, parent, 6)
    for kid in kids[4:]:
        assert_never_ran(kid, reason="cancelled mid-run")
    assert [k["status"] for k in kids[2:4]] == ["RUNNING", "RUNNING"]  # CancelJob does not stop running jobs
    job = wait_for(batch, parent, timeout=30)
    assert job["status"] == "FAILED"
    assert job["isCancelled"] is True
    assert [k["status"] for k in children(batch, parent, 6)] == ["SUCCEEDED"] * 4 + ["FAILED"] * 2
    assert job["arrayProperties"]["statusSummary"] == {
        "SUBMITTED": 0, "PENDING": 0, "RUNNABLE": 0, "STARTING": 0, "RUNNING": 0, "SUCCEEDED": 4, "FAILED": 2,
    }  # fmt: skip
    assert not marker.exists()


def test_status_summary_at_each_stage_and_parent_never_running(batch: Any, shell: Shell, narrow_queue: str) -> None:
    parent = submit(batch, narrow_queue, shell("sleep 0.6"), arrayProperties={"size": 4})
    parent_statuses: set[str] = set()
    summaries: list[dict[str, int]] = []
    running_children_seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[parent])["jobs"][0]
        parent_statuses.add(job["status"])
        summary = job["arrayProperties"]["statusSummary"]
        summaries.append(summary)
        listed = batch.list_jobs(jobQueue=narrow_queue, jobStatus="RUNNING")["jobSummaryList"]
        assert parent not in {item["jobId"] for item in listed}
        running = batch.list_jobs(arrayJobId=parent, jobStatus="RUNNING")["jobSummaryList"]
        assert len(running) <= 1
        running_children_seen += len(running)
        if job["status"] in TERMINAL:
            break
        time.sleep(0.05)
    assert parent_statuses <= {"SUBMITTED", "PENDING", "SUCCEEDED"}
    assert "PENDING" in parent_statuses and "SUCCEEDED" in parent_statuses
    assert all(sum(summary.values()) == 4 for summary in summaries)
    assert all(summary["RUNNING"] + summary["STARTING"] <= 1 for summary in summaries)
    assert any(summary["RUNNING"] == 1 and summary["RUNNABLE"] >= 2 for summary in summaries)
    assert any(summary["RUNNING"] == 1 and summary["SUCCEEDED"] >= 1 for summary in summaries)
    succeeded = [summary["SUCCEEDED"] for summary in summaries]
    assert succeeded == sorted(succeeded)
    assert summaries[-1]["SUCCEEDED"] == 4
    assert running_children_seen > 0


def test_retries_are_per_child(batch: Any, shell: Shell, queue: str) -> None:
    script = '[ "$AWS_BATCH_JOB_ARRAY_INDEX" -ne 1 ] || [ "$AWS_BATCH_JOB_ATTEMPT" -ge 2 ] || exit 3'
    definition = shell(script, retryStrategy={"attempts": 2})
    parent = submit(batch, queue, definition, arrayProperties={"size": 3})
    assert wait_for(batch, parent)["status"] == "SUCCEEDED"
    kids = children(batch, parent, 3)
    assert [[a["container"]["exitCode"] for a in kid["attempts"]] for kid in kids] == [[0], [3, 0], [0]]
    assert [kid["status"] for kid in kids] == ["SUCCEEDED"] * 3


def test_timeouts_are_per_child(batch: Any, shell: Shell, narrow_queue: str) -> None:
    # One at a time, three children of 1 s each take longer than the 2 s timeout together:
    # they only pass because each child's clock starts with its own attempt.
    script = '[ "$AWS_BATCH_JOB_ARRAY_INDEX" -eq 3 ] && exec sleep 30; sleep 1'
    definition = shell(script, retryStrategy={"attempts": 2})
    parent = submit(batch, narrow_queue, definition, arrayProperties={"size": 4}, timeout={"attemptDurationSeconds": 2})
    job = wait_for(batch, parent, timeout=60)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == CHILD_FAILED
    assert "timeout" not in job or job["timeout"] == {"attemptDurationSeconds": 2}
    kids = children(batch, parent, 4)
    assert [kid["status"] for kid in kids] == ["SUCCEEDED"] * 3 + ["FAILED"]
    assert kids[3]["statusReason"] == TIMEOUT_REASON
    assert len(kids[3]["attempts"]) == 1  # timeouts are not retried
    assert kids[2]["stoppedAt"] - kids[0]["startedAt"] > 2000
