"""FIFO queues run jobs that became RUNNABLE at the same moment in the order they were submitted.

Jobs released together (here: twelve jobs waiting on one blocker, freed by the same scheduler
pass) share their RUNNABLE time; submit order, not the random job id, must decide which runs first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support import make_queue, register_shell, unique, wait_for


def test_jobs_released_together_run_in_submit_order(batch: Any, job_tmp: Path) -> None:
    queue = make_queue(batch, max_vcpus=1)  # one job at a time: the start order is the run order
    ledger = job_tmp / "order.txt"
    blocker = batch.submit_job(jobName=unique("blocker"), jobQueue=queue,
                               jobDefinition=register_shell(batch, "sleep 1"))["jobId"]  # fmt: skip
    append = register_shell(batch, f'echo "$NAME" >> {ledger}')
    names = [f"job-{index:02d}" for index in range(12)]
    ids = []
    for name in names:
        ids.append(
            batch.submit_job(
                jobName=name, jobQueue=queue, jobDefinition=append, dependsOn=[{"jobId": blocker}],
                containerOverrides={"environment": [{"name": "NAME", "value": name}]},
            )["jobId"]
        )  # fmt: skip
        time.sleep(0.002)  # distinct submit times (milliseconds)
    for job_id in ids:
        assert wait_for(batch, job_id, timeout=60)["status"] == "SUCCEEDED"
    runnable_at = {job["jobId"]: job for job in batch.describe_jobs(jobs=ids)["jobs"]}
    assert len({job["createdAt"] for job in runnable_at.values()}) == len(ids)
    assert ledger.read_text().split() == names
