"""The job lifecycle through the real engine: retries, evaluateOnExit, dependencies, arrays,
cancel/terminate and timeouts, each pinned to what AWS Batch does (docs/architecture.md, "Job
lifecycle as implemented"). Jobs are real `sh -c` processes; the scheduler is ticked by hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from kiln.executors.base import AttemptEvent, AttemptExited, AttemptRunning
from kiln.observability.metrics import SchedulerMetrics
from kiln.store.repository import Repository

from .harness import engine

ESSENTIAL_EXITED = "Essential container in task exited"
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: what a shell killed by TerminateJob or a timeout returns


def _exit_codes(job: dict[str, Any]) -> list[int | None]:
    return [attempt["container"]["exitCode"] for attempt in job["attempts"]]


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait (without ticking the scheduler) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- retryStrategy ---------------------------------------------------------------------------------


def test_retry_strategy_uses_every_attempt_then_fails(tmp_path: Path) -> None:
    """AWS: a job that always fails is run `retryStrategy.attempts` times, then ends FAILED."""
    record = tmp_path / "attempts"
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("always-fails", f'echo "$AWS_BATCH_JOB_ATTEMPT" >> "{record}"; exit 1')
        job_id = kiln.submit("always-fails", retryStrategy={"attempts": 3})
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert len(job["attempts"]) == 3
    assert _exit_codes(job) == [1, 1, 1]
    assert [attempt["statusReason"] for attempt in job["attempts"]] == [ESSENTIAL_EXITED] * 3
    assert job["container"]["exitCode"] == 1
    assert row.attempt_count == 3
    assert record.read_text().split() == ["1", "2", "3"]  # AWS_BATCH_JOB_ATTEMPT counts from 1


def test_retry_strategy_stops_at_the_first_success(tmp_path: Path) -> None:
    """AWS: a job that fails once and then succeeds ends SUCCEEDED, with both attempts listed."""
    marker = tmp_path / "marker"
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("flaky", f'test -f "{marker}" || {{ touch "{marker}"; exit 1; }}')
        job_id = kiln.submit("flaky", retryStrategy={"attempts": 3})
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert len(job["attempts"]) == 2
    assert _exit_codes(job) == [1, 0]
    assert job["container"]["exitCode"] == 0
    assert row.attempt_count == 2
    first, second = job["attempts"]
    assert first["stoppedAt"] <= second["startedAt"]


# -- evaluateOnExit --------------------------------------------------------------------------------


def test_evaluate_on_exit_exit_rule_stops_retrying(tmp_path: Path) -> None:
    """AWS: the first matching evaluateOnExit rule decides; EXIT ends the job though attempts remain."""
    strategy = {
        "attempts": 3,
        "evaluateOnExit": [
            {"onExitCode": "3", "action": "EXIT"},
            {"onExitCode": "*", "action": "RETRY"},  # also matches, but comes second
        ],
    }
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("exits-3", "exit 3")
        job_id = kiln.submit("exits-3", retryStrategy=strategy)
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert _exit_codes(job) == [3]
    assert row.attempt_count == 1


def test_evaluate_on_exit_retry_rule_retries(tmp_path: Path) -> None:
    """AWS: a matching RETRY rule retries; a catch-all `onReason: *` EXIT rule after it ends the job."""
    strategy = {
        "attempts": 3,
        "evaluateOnExit": [
            {"onExitCode": "4*", "action": "retry"},  # prefix match; action in any letter case
            {"onReason": "*", "action": "EXIT"},  # AWS's "every other failure" rule
        ],
    }
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("retry-then-exit", 'if [ "$AWS_BATCH_JOB_ATTEMPT" = 1 ]; then exit 42; fi; exit 5')
        job_id = kiln.submit("retry-then-exit", retryStrategy=strategy)
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert _exit_codes(job) == [42, 5]  # 42 retried by the RETRY rule; 5 ended by EXIT with 1 attempt left
    assert row.attempt_count == 2


# -- dependsOn -------------------------------------------------------------------------------------


def test_dependent_of_a_failed_job_fails_without_running(tmp_path: Path) -> None:
    """AWS: a job whose dependency FAILED ends FAILED with `Dependent Job failed` and never starts."""
    ran = tmp_path / "b-ran"
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("a", "exit 1")
        kiln.definition("b", f'touch "{ran}"')
        a = kiln.submit("a")
        b = kiln.submit("b", dependsOn=[{"jobId": a}])
        jobs = kiln.run_until([a, b])
        b_row = kiln.row(b)
    assert jobs[a]["status"] == "FAILED"
    assert jobs[b]["status"] == "FAILED"
    assert jobs[b]["statusReason"] == "Dependent Job failed"
    assert jobs[b]["attempts"] == []
    assert jobs[b]["startedAt"] is None
    assert b_row.attempt_count == 0
    assert not ran.exists()


def test_dependent_runs_after_its_dependency_succeeds(tmp_path: Path) -> None:
    """AWS: a job with dependsOn starts only once its dependency has SUCCEEDED."""
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("a", "sleep 0.3")
        kiln.definition("b", "exit 0")
        a = kiln.submit("a")
        b = kiln.submit("b", dependsOn=[{"jobId": a}])
        jobs = kiln.run_until([a, b])
    assert jobs[a]["status"] == "SUCCEEDED"
    assert jobs[b]["status"] == "SUCCEEDED"
    assert len(jobs[b]["attempts"]) == 1
    assert jobs[b]["startedAt"] >= jobs[a]["stoppedAt"]
    assert jobs[b]["attempts"][0]["startedAt"] >= jobs[a]["attempts"][0]["stoppedAt"]


# -- array jobs ------------------------------------------------------------------------------------


def test_array_children_all_run_and_parent_succeeds(tmp_path: Path) -> None:
    """AWS: an array of size N runs children `<id>:0..N-1`, each with its AWS_BATCH_JOB_ARRAY_INDEX."""
    out = tmp_path / "out"
    out.mkdir()
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("indexed", f'echo "$AWS_BATCH_JOB_ARRAY_INDEX" > "{out}/$AWS_BATCH_JOB_ARRAY_INDEX"')
        parent = kiln.submit("indexed", arrayProperties={"size": 3})
        children = [f"{parent}:{i}" for i in range(3)]
        jobs = kiln.run_until([parent, *children])
        time.sleep(0.05)
        again = kiln.call("DescribeJobs", jobs=[parent])["jobs"][0]
    # The summary last changed when the last child ended, whenever the parent is described.
    last_change = max(jobs[child]["stoppedAt"] for child in children)
    assert jobs[parent]["arrayProperties"]["statusSummaryLastUpdatedAt"] == last_change
    assert again["arrayProperties"]["statusSummaryLastUpdatedAt"] == last_change
    assert jobs[parent]["status"] == "SUCCEEDED"
    assert jobs[parent]["arrayProperties"]["size"] == 3
    assert jobs[parent]["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3
    assert jobs[parent]["arrayProperties"]["statusSummary"]["FAILED"] == 0
    assert [jobs[child]["status"] for child in children] == ["SUCCEEDED"] * 3
    assert [jobs[child]["arrayProperties"]["index"] for child in children] == [0, 1, 2]
    assert sorted(path.name for path in out.iterdir()) == ["0", "1", "2"]
    assert [(out / str(i)).read_text().strip() for i in range(3)] == ["0", "1", "2"]


def test_array_parent_fails_when_one_child_fails(tmp_path: Path) -> None:
    """AWS: one FAILED child makes the array parent FAILED (`Array Child Job failed`); siblings still run."""
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("one-fails", '[ "$AWS_BATCH_JOB_ARRAY_INDEX" != 1 ]')
        parent = kiln.submit("one-fails", arrayProperties={"size": 3})
        children = [f"{parent}:{i}" for i in range(3)]
        jobs = kiln.run_until([parent, *children])
    assert jobs[parent]["status"] == "FAILED"
    assert jobs[parent]["statusReason"] == "Array Child Job failed"
    assert [jobs[child]["status"] for child in children] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs[f"{parent}:1"]["container"]["exitCode"] == 1
    summary = jobs[parent]["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (2, 1)


def test_sequential_array_runs_children_in_index_order(tmp_path: Path) -> None:
    """AWS: an array with a SEQUENTIAL dependency (no jobId) runs child i only after child i-1 ends."""
    order = tmp_path / "order"
    # Lower indices sleep longer: run in parallel, the file would read 2, 1, 0.
    script = f'sleep "0.$((3 - AWS_BATCH_JOB_ARRAY_INDEX))"; echo "$AWS_BATCH_JOB_ARRAY_INDEX" >> "{order}"'
    with engine(tmp_path / "data", host_vcpus=4) as kiln:
        kiln.queue(max_vcpus=4)
        kiln.definition("sequential", script)
        parent = kiln.submit("sequential", arrayProperties={"size": 3}, dependsOn=[{"type": "SEQUENTIAL"}])
        children = [f"{parent}:{i}" for i in range(3)]
        jobs = kiln.run_until([parent, *children])
    assert jobs[parent]["status"] == "SUCCEEDED"
    assert [jobs[child]["status"] for child in children] == ["SUCCEEDED"] * 3
    assert order.read_text().split() == ["0", "1", "2"]
    for earlier, later in pairwise(children):
        assert jobs[later]["startedAt"] >= jobs[earlier]["stoppedAt"]


# -- CancelJob / TerminateJob ----------------------------------------------------------------------


def test_cancel_of_a_job_not_started_fails_it_at_once(tmp_path: Path) -> None:
    """AWS: CancelJob of a SUBMITTED or RUNNABLE job makes it FAILED with the reason; it never runs."""
    ran = tmp_path / "ran"
    with engine(tmp_path / "data") as kiln:
        kiln.queue(max_vcpus=1)
        kiln.definition("never", f'touch "{ran}"')
        kiln.definition("too-big", f'touch "{ran}"', vcpus=2)  # above the CE's maxvCpus: stays RUNNABLE
        submitted = kiln.submit("never")
        kiln.call("CancelJob", jobId=submitted, reason="not needed any more")
        runnable = kiln.submit("too-big")
        assert kiln.run_until([runnable], {"RUNNABLE"})[runnable]["status"] == "RUNNABLE"
        kiln.call("CancelJob", jobId=runnable, reason="cannot ever fit")
        for _ in range(5):  # the scheduler gets every chance to (wrongly) start them
            kiln.scheduler.tick()
        jobs = kiln.jobs([submitted, runnable])
        rows = {job_id: kiln.row(job_id) for job_id in (submitted, runnable)}
    for job_id, reason in ((submitted, "not needed any more"), (runnable, "cannot ever fit")):
        assert jobs[job_id]["status"] == "FAILED"
        assert jobs[job_id]["statusReason"] == reason
        assert jobs[job_id]["isCancelled"] is True
        assert jobs[job_id]["isTerminated"] is False
        assert jobs[job_id]["attempts"] == []
        assert rows[job_id].is_cancelled
        assert rows[job_id].attempt_count == 0
    assert not ran.exists()


def test_cancel_of_a_running_job_changes_nothing(tmp_path: Path) -> None:
    """AWS: CancelJob of a RUNNING job is accepted but does nothing; the job runs to its own end."""
    go = tmp_path / "go"
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("waits", f'while [ ! -f "{go}" ]; do sleep 0.05; done')
        job_id = kiln.submit("waits")
        kiln.run_until([job_id], {"RUNNING"})
        assert kiln.call("CancelJob", jobId=job_id, reason="too late") == {}
        assert kiln.run_until([job_id], {"RUNNING"})[job_id]["statusReason"] is None
        go.touch()
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert job["isCancelled"] is False
    assert not row.is_cancelled
    assert _exit_codes(job) == [0]


def test_terminate_of_a_running_job_fails_it_without_retry(tmp_path: Path) -> None:
    """AWS: TerminateJob stops a RUNNING job: FAILED with the reason, isTerminated, never retried."""
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("long", "sleep 30")
        job_id = kiln.submit("long", retryStrategy={"attempts": 3})
        kiln.run_until([job_id], {"RUNNING"})
        kiln.call("TerminateJob", jobId=job_id, reason="operator stopped it")
        started = time.monotonic()
        job = kiln.run_until([job_id], timeout=15)[job_id]
        took = time.monotonic() - started
        row = kiln.row(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "operator stopped it"
    assert job["isTerminated"] is True
    assert job["isCancelled"] is False
    assert row.is_terminated
    assert row.attempt_count == 1
    assert len(job["attempts"]) == 1
    assert job["attempts"][0]["statusReason"] == "operator stopped it"
    assert _exit_codes(job) == [SIGTERM_EXIT_CODE]
    assert took < 10  # stopped by the signal, not by `sleep 30` ending


def test_terminated_job_that_exits_0_on_sigterm_still_fails(tmp_path: Path) -> None:
    """AWS: a terminated job is FAILED even when its process handles SIGTERM and exits 0."""
    ready = tmp_path / "ready"
    script = f'trap "exit 0" TERM; touch "{ready}"; while :; do sleep 0.05; done'
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("handles-term", script)
        job_id = kiln.submit("handles-term", retryStrategy={"attempts": 3})
        kiln.run_until([job_id], {"RUNNING"})
        _wait_for(ready.exists, "the job's SIGTERM trap")
        kiln.call("TerminateJob", jobId=job_id, reason="stop now")
        job = kiln.run_until([job_id], timeout=15)[job_id]
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "stop now"
    assert job["isTerminated"] is True
    assert _exit_codes(job) == [0]


def test_terminate_recorded_after_the_process_exited_0_keeps_success(tmp_path: Path) -> None:
    """AWS: exit code 0 means SUCCEEDED; a TerminateJob arriving after the process ended stops nothing."""
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("quick", "exit 0")
        job_id = kiln.submit("quick", retryStrategy={"attempts": 3})
        # The tick that places the job starts it after its commit; its events are read next tick.
        assert kiln.run_until([job_id], {"STARTING"})[job_id]["status"] == "STARTING"
        _wait_for(lambda: not kiln.executor.running(), "the process to exit and its exit to be queued")
        kiln.call("TerminateJob", jobId=job_id, reason="too late")  # the job is still STARTING in the store
        assert kiln.row(job_id).is_terminated
        job = kiln.run_until([job_id])[job_id]
        row = kiln.row(job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == ESSENTIAL_EXITED
    assert job["isTerminated"] is False  # the terminate stopped nothing
    assert not row.is_terminated and "stopReason" not in row.spec
    assert _exit_codes(job) == [0]


# -- timeout ---------------------------------------------------------------------------------------


def test_attempt_timeout_fails_the_job_without_retry(tmp_path: Path) -> None:
    """AWS: an attempt past `attemptDurationSeconds` is stopped and the job FAILED; timeouts are not retried."""
    with engine(tmp_path / "data") as kiln:
        kiln.queue()
        kiln.definition("slow", "sleep 30")
        job_id = kiln.submit("slow", timeout={"attemptDurationSeconds": 1}, retryStrategy={"attempts": 2})
        started = time.monotonic()
        job = kiln.run_until([job_id], timeout=15)[job_id]
        took = time.monotonic() - started
        row = kiln.row(job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == TIMEOUT_REASON
    assert job["isTerminated"] is False
    assert len(job["attempts"]) == 1
    assert job["attempts"][0]["statusReason"] == TIMEOUT_REASON
    assert _exit_codes(job) == [SIGTERM_EXIT_CODE]
    assert row.attempt_count == 1
    assert 1 <= took < 10
    attempt = job["attempts"][0]
    # About the 1 s allowed (startedAt is stamped a moment after the timeout clock starts).
    assert 900 <= attempt["stoppedAt"] - attempt["startedAt"] < 10_000


def _sample(metric: Any, name: str, **labels: str) -> float:
    """A metric's sample value, as /metrics would show it."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_an_exit_that_carries_its_start_records_and_counts_the_start(tmp_path: Path) -> None:
    """The attempt supervisor folds a fast child's `AttemptRunning` into its exit (`started_at`),
    and a server that was down misses it: the job and the metrics still show that it started."""
    with engine(tmp_path / "data") as eng:
        metrics = eng.scheduler.metrics = SchedulerMetrics()  # its own, as the server gives it
        eng.queue()
        job_id = eng.submit(eng.definition("quick", "true"))
        eng.run_until([job_id], {"STARTING"})  # placed and launched; its events not applied yet
        events: list[AttemptEvent] = []

        def ended() -> bool:
            events.extend(eng.executor.poll())
            return any(isinstance(event, AttemptExited) for event in events)

        _wait_for(ended, "the attempt's exit")
        [running] = [event for event in events if isinstance(event, AttemptRunning)]
        [exit_event] = [event for event in events if isinstance(event, AttemptExited)]
        with eng.service.db.begin() as connection:
            eng.scheduler.apply_events(Repository(connection), [replace(exit_event, started_at=running.at_ms)])
        job = eng.job(job_id)
        assert (job["status"], job["startedAt"]) == ("SUCCEEDED", running.at_ms)
        assert _sample(metrics.attempts_started, "kiln_attempts_started_total") == 1
        count = _sample(metrics.attempt_duration, "kiln_attempt_duration_seconds_count", outcome="succeeded")
        assert count == 1
