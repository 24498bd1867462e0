"""GetJobQueueSnapshot through boto3 against a real server: the front of the queue it lists is the
order jobs then really start in, on a FIFO queue and on a fair-share queue, and the queue's vCPUs in
use (per share on a fair-share queue) are what its running attempts hold.

Each queue has one vCPU: a gated job holds it while the others queue up behind it, then every job
appends its id to a ledger as it runs, one at a time, which gives the real start order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.test_fair_share import _fair_queue, _policy, _submit
from tests.support import register_shell, wait_for


def _gate_and_ledger(batch: Any, job_tmp: Path) -> tuple[str, str, Path, Path]:
    gate, ledger = job_tmp / "go", job_tmp / "ledger"
    blocker = register_shell(batch, f"while [ ! -e {gate} ]; do sleep 0.05; done")
    worker = register_shell(batch, f'echo "$AWS_BATCH_JOB_ID" >> {ledger}')
    return blocker, worker, gate, ledger


def _running(batch: Any, job_id: str) -> None:
    wait_for(batch, job_id, {"RUNNING"}, timeout=60)


def _front(batch: Any, queue: str) -> list[str]:
    snapshot = batch.get_job_queue_snapshot(jobQueue=queue)
    return [job["jobArn"].rsplit("/", 1)[-1] for job in snapshot["frontOfQueue"]["jobs"]]


def _started_order(batch: Any, jobs: list[str], ledger: Path) -> list[str]:
    for job_id in jobs:
        assert wait_for(batch, job_id, timeout=60)["status"] == "SUCCEEDED"
    return ledger.read_text().split()


def test_fifo_front_of_queue_is_the_start_order(batch: Any, job_tmp: Path) -> None:
    queue = _fair_queue(batch, None)
    blocker, worker, gate, ledger = _gate_and_ledger(batch, job_tmp)
    held = _submit(batch, queue, blocker, None)
    _running(batch, held)
    waiting = [_submit(batch, queue, worker, None) for _ in range(4)]
    for job_id in waiting:
        wait_for(batch, job_id, {"RUNNABLE"}, timeout=30)
    snapshot = batch.get_job_queue_snapshot(jobQueue=queue)
    assert [job["jobArn"].rsplit("/", 1)[-1] for job in snapshot["frontOfQueue"]["jobs"]] == waiting
    runnable_at = [job["earliestTimeAtPosition"] for job in snapshot["frontOfQueue"]["jobs"]]
    assert runnable_at == sorted(runnable_at) and all(isinstance(t, int) for t in runnable_at)
    assert snapshot["queueUtilization"]["totalCapacityUsage"] == [{"capacityUnit": "VCPU", "quantity": 1.0}]
    assert "fairshareUtilization" not in snapshot["queueUtilization"]
    gate.touch()
    assert _started_order(batch, waiting, ledger) == waiting
    after = batch.get_job_queue_snapshot(jobQueue=queue)
    assert after["frontOfQueue"]["jobs"] == []
    assert after["queueUtilization"]["totalCapacityUsage"][0]["quantity"] == 0.0


def test_fair_share_front_of_queue_is_the_start_order(batch: Any, job_tmp: Path) -> None:
    """Share `a` holds the vCPU: the snapshot puts share `b`'s jobs (no usage) ahead of `a`'s
    queued ones, and the jobs then start in exactly that order."""
    queue = _fair_queue(batch, _policy(batch, {"a": 1.0, "b": 1.0}, shareDecaySeconds=3600))
    blocker, worker, gate, ledger = _gate_and_ledger(batch, job_tmp)
    held = _submit(batch, queue, blocker, "a")
    _running(batch, held)
    waiting = [_submit(batch, queue, worker, share) for share in ("a", "a", "b")]
    for job_id in waiting:
        wait_for(batch, job_id, {"RUNNABLE"}, timeout=30)
    front = _front(batch, queue)
    assert sorted(front) == sorted(waiting) and front[0] == waiting[2]  # b first: a holds the capacity
    utilization = batch.get_job_queue_snapshot(jobQueue=queue)["queueUtilization"]
    assert utilization["fairshareUtilization"] == {
        "activeShareCount": 1,
        "topCapacityUtilization": [
            {"shareIdentifier": "a", "capacityUsage": [{"capacityUnit": "VCPU", "quantity": 1.0}]}
        ],
    }
    gate.touch()
    assert _started_order(batch, waiting, ledger) == front


def test_an_unknown_queue_is_a_client_error(batch: Any) -> None:
    with pytest.raises(ClientError) as info:
        batch.get_job_queue_snapshot(jobQueue="no-such-queue")
    assert info.value.response["Error"]["Code"] == "ClientException"
    assert "no-such-queue" in info.value.response["Error"]["Message"]


def test_quota_shares_are_answered_as_for_queues_without_quota_management(batch: Any) -> None:
    """Quota shares live only in SAGEMAKER_TRAINING queues with quota management, which Kiln does
    not run: creating one on a Kiln queue says so, a queue lists none, an ARN names nothing."""
    queue = _fair_queue(batch, None)
    limits = [{"capacityUnit": "VCPU", "maxCapacity": 4}]
    with pytest.raises(ClientError) as info:
        batch.create_quota_share(quotaShareName="team-a", jobQueue=queue, capacityLimits=limits,
                                 resourceSharingConfiguration={"strategy": "RESERVE"},
                                 preemptionConfiguration={"inSharePreemption": "DISABLED"})  # fmt: skip
    assert info.value.response["Error"]["Code"] == "ClientException"
    assert f"Job queue {queue} does not have quota management" in info.value.response["Error"]["Message"]
    assert batch.list_quota_shares(jobQueue=queue)["quotaShares"] == []
    arn = "arn:aws:batch:us-east-1:123456789012:quota-share/q/team-a"
    for call in (batch.describe_quota_share, batch.delete_quota_share, batch.update_quota_share):
        with pytest.raises(ClientError) as info:
            call(quotaShareArn=arn)
        assert f"Quota share {arn} not found." == info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        batch.list_quota_shares(jobQueue="no-such-queue")
    assert "no-such-queue" in info.value.response["Error"]["Message"]
