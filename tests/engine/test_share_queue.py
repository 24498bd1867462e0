"""Fair-share queues against a real SQLite database, in-process (no scheduler thread running):
the 500-active-shares cap, candidate order from stored usage, and purge of share rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.batch.service import BatchService
from kiln.clock import now_ms
from kiln.config import Settings
from kiln.engine import share_queue
from kiln.engine.fair_share import MIN_CHARGE_SECONDS, AttemptUsage, decayed_usage
from kiln.engine.lifecycle import FINISHED, Status, transition
from kiln.errors import ValidationError
from kiln.store.database import Database
from kiln.store.records import Attempt, Document, Job, JobShare, ShareUsage
from kiln.store.repository import Repository


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[BatchService]:
    db = Database(database_url)
    yield BatchService(db, Settings(data_dir=tmp_path))
    db.close()


def _setup(service: BatchService, shares: dict[str, float], reservation: int = 0, max_vcpus: int = 4) -> Document:
    policy = service.call("CreateSchedulingPolicy", {"name": "fs", "fairsharePolicy": {
        "computeReservation": reservation,
        "shareDistribution": [{"shareIdentifier": s, "weightFactor": w} for s, w in shares.items()]}})  # fmt: skip
    service.call("CreateComputeEnvironment", {"computeEnvironmentName": "ce", "type": "MANAGED",
                                              "computeResources": {"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus}})  # fmt: skip
    service.call("CreateJobQueue", {"jobQueueName": "q", "priority": 1, "schedulingPolicyArn": policy["arn"],
                                    "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "ce"}]})  # fmt: skip
    service.call("RegisterJobDefinition", {"jobDefinitionName": "d", "type": "container",
                                           "containerProperties": {"image": "host", "vcpus": 1, "memory": 64}})  # fmt: skip
    with service.db.read() as connection:
        row = Repository(connection).queues.get("q")
    assert row is not None
    return dict(row.doc)


def _submit(service: BatchService, share: str, **extra: Any) -> str:
    params = {"jobName": "j", "jobQueue": "q", "jobDefinition": "d", "shareIdentifier": share, **extra}
    return str(service.call("SubmitJob", params)["jobId"])


def _runnable(service: BatchService, ids: list[str], at: int) -> None:
    """RUNNABLE one millisecond apart, in list order (equal times would tie-break on job id)."""
    with service.db.begin() as connection:
        for offset, job_id in enumerate(ids):
            transition(Repository(connection), [job_id], Status.RUNNABLE, None, at + offset)


def _candidates(service: BatchService, queue: Document) -> list[str]:
    with service.db.read() as connection:
        rows = share_queue.runnable_candidates(Repository(connection), queue, 64, float("inf"), 2**62)
    return [row.id for row in rows]


def test_at_most_500_active_share_identifiers_per_queue(service: BatchService) -> None:
    _setup(service, {})
    ids = [_submit(service, f"share{i}") for i in range(500)]
    _submit(service, "share7")  # an active share: fine
    with pytest.raises(ValidationError, match="already has 500 active share identifiers"):
        _submit(service, "share500")
    service.call("CancelJobs", {"jobs": ids[:1], "reason": "make room"})  # share0 is no longer active
    _submit(service, "share500")


def test_candidates_follow_weighted_usage_and_priority(service: BatchService) -> None:
    queue = _setup(service, {"light": 1.0, "heavy": 4.0})
    start = now_ms() - 10_000
    heavy = [_submit(service, "heavy") for _ in range(3)]
    light = [_submit(service, "light", schedulingPriorityOverride=p) for p in (0, 5, 5)]
    _runnable(service, heavy, start)
    _runnable(service, light, start + 100)
    # Nothing has run: heavy (queued first) starts, is charged 1 x 4, and light (priority 5 first,
    # then FIFO) catches up to 4 before heavy's next job.
    assert _candidates(service, queue) == [heavy[0], light[1], light[2], light[0], heavy[1], heavy[2]]
    with service.db.begin() as connection:  # a finished light attempt of 100 vCPU-seconds
        repo = Repository(connection)
        repo.attempts.insert([Attempt(task_id="t1", job_id=f"{light[0]}", number=1, compute_environment="ce",
                                      log_stream="s", vcpus=1.0, memory_mib=64, gpus=0, active=False,
                                      started_at=now_ms() - 100_000, stopped_at=now_ms())])  # fmt: skip
    assert _candidates(service, queue) == [*heavy, light[1], light[2], light[0]]


def test_compute_reservation_holds_back_a_running_share(service: BatchService) -> None:
    queue = _setup(service, {}, reservation=50, max_vcpus=4)
    busy = [_submit(service, "busy") for _ in range(4)]
    _runnable(service, busy, now_ms())
    with service.db.begin() as connection:  # "busy" already runs on 1 vCPU: 50% of 4 is reserved
        Repository(connection).attempts.insert([Attempt(task_id="t", job_id=busy[3], number=1,
                                                        compute_environment="ce", log_stream="s", vcpus=1.0,
                                                        memory_mib=64, gpus=0, active=True)])  # fmt: skip
    assert _candidates(service, queue) == busy[:1]  # 1 running + 1 more = 2 = 4 - 2 reserved
    fresh = _submit(service, "fresh")
    _runnable(service, [fresh], now_ms())
    assert fresh in _candidates(service, queue)  # a share with nothing running is never held back


def test_purge_removes_share_rows(service: BatchService) -> None:
    _setup(service, {})
    parent = _submit(service, "a", arrayProperties={"size": 3})
    service.call("CancelJob", {"jobId": parent, "reason": "x"})
    with service.db.begin() as connection:
        repo = Repository(connection)
        transition(repo, [parent], Status.FAILED, "x", 0)
        repo.jobs.purge(repo.jobs.expired(now_ms() + 1, FINISHED))
        assert repo.shares.active_identifiers("arn:aws:batch:us-east-1:123456789012:job-queue/q", FINISHED) == []
        remaining = connection.exec_driver_sql("SELECT count(*) FROM job_shares").scalar_one()
    assert remaining == 0


NOW = 10_000_000
usage_attempts = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([0.25, 1.0, 4.0]),
        st.one_of(st.none(), st.integers(NOW - 2_000_000, NOW + 10)),
        st.one_of(st.none(), st.integers(NOW - 2_000_000, NOW)),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage_attempts, st.integers(1, 3000))
def test_sql_usage_agrees_with_decayed_usage(
    service: BatchService, attempts: list[tuple[str, float, int | None, int | None, bool]], decay: int
) -> None:
    queue_arn = "arn:aws:batch:us-east-1:123456789012:job-queue/usage"
    with service.db.begin() as connection:
        repo = Repository(connection)
        connection.exec_driver_sql("DELETE FROM attempts")
        connection.exec_driver_sql("DELETE FROM job_shares")
        connection.exec_driver_sql("DELETE FROM jobs")
        for share in ("a", "b", "c"):
            repo.jobs.insert([Job.new(share, share, queue_arn, "d", "RUNNING", 0, vcpus=1.0, memory_mib=4)])
        repo.shares.insert(
            [
                JobShare(job_id=s, queue_arn=queue_arn, share_identifier=s, scheduling_priority=0)
                for s in ("a", "b", "c")
            ]
        )
        repo.attempts.insert([Attempt(task_id=f"t{i}", job_id=share, number=i, compute_environment="ce",
                                      log_stream="s", vcpus=vcpus, memory_mib=4, gpus=0, active=active,
                                      started_at=started, stopped_at=stopped)
                              for i, (share, vcpus, started, stopped, active) in enumerate(attempts)])  # fmt: skip
        totals = {t.share_identifier: t for t in repo.shares.usage(queue_arn, NOW, decay * 1000, MIN_CHARGE_SECONDS)}
    expected = decayed_usage([AttemptUsage(*attempt) for attempt in attempts], NOW, decay)
    for share in ("a", "b", "c"):
        row = totals.get(share, ShareUsage(share, 0.0, 0))
        assert float(row.usage) == pytest.approx(expected.get(share, 0.0))
        assert int(row.running) == sum(1 for attempt in attempts if attempt[0] == share and attempt[4])
