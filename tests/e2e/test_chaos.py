"""Chaos: the server is SIGKILLed at random moments while 1,000 short jobs run; nothing is lost
and nothing runs twice, because attempts belong to the supervisor and its journal, not the server.

Each job appends its own AWS_BATCH_JOB_ID to a file as its last step; at the end every job has
SUCCEEDED with exactly one attempt, and the file names every job exactly once.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import FAST_FLAGS, start_server
from tests.support import make_queue, register_shell

KILLS = 10
ARRAYS = 4
ARRAY_SIZE = 200
PLAIN_JOBS = 200  # 4 x 200 children + 200 = 1,000 jobs that run
DEADLINE_SECONDS = 420


def _all_jobs(batch: Any, queue: str, arrays: list[str]) -> dict[str, dict[str, Any]]:
    """Every job that runs (plain jobs and array children), described."""
    ids: list[str] = []
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        for scope in [{"jobQueue": queue}, *({"arrayJobId": parent} for parent in arrays)]:
            for page in batch.get_paginator("list_jobs").paginate(**scope, jobStatus=status):
                ids += [job["jobId"] for job in page["jobSummaryList"] if job["jobId"] not in arrays]
    jobs: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        jobs.update({job["jobId"]: job for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]})
    return jobs


def test_random_sigkills_lose_nothing_and_run_nothing_twice(tmp_path: Path, job_tmp: Path, database_url: str) -> None:
    """On SQLite and on PostgreSQL, 10 kills each."""
    kills = KILLS
    rng = random.Random(20261125)
    ledger = job_tmp / "ledger"
    server = start_server(tmp_path, [*FAST_FLAGS, "--database-url", database_url])
    batch = server.client()
    queue = make_queue(batch)
    last_step = f'echo "$AWS_BATCH_JOB_ID" >> {ledger}'
    plain = register_shell(batch, f"sleep 0.0$((RANDOM % 5)); {last_step}")
    retried = register_shell(batch, f"sleep 0.02; {last_step}", retryStrategy={"attempts": 3})
    arrays: list[str] = []
    plain_left = PLAIN_JOBS
    for kill in range(kills):
        if len(arrays) < ARRAYS:
            definition = retried if len(arrays) % 2 else plain
            arrays.append(batch.submit_job(jobName=f"array-{kill}", jobQueue=queue, jobDefinition=definition,
                                           arrayProperties={"size": ARRAY_SIZE})["jobId"])  # fmt: skip
        for _ in range(plain_left if kill == kills - 1 else min(plain_left, PLAIN_JOBS // kills)):
            batch.submit_job(jobName="plain", jobQueue=queue, jobDefinition=rng.choice([plain, retried]))
            plain_left -= 1
        time.sleep(rng.uniform(0.2, 2.0))
        server.stop(kill=True)
        server.start()
        batch = server.client()

    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        jobs = _all_jobs(batch, queue, arrays)
        if all(job["status"] in {"SUCCEEDED", "FAILED"} for job in jobs.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)

    assert len(jobs) == ARRAYS * ARRAY_SIZE + PLAIN_JOBS
    assert {job["status"] for job in jobs.values()} == {"SUCCEEDED"}
    attempts = Counter(len(job["attempts"]) for job in jobs.values())
    assert attempts == {1: len(jobs)}, f"attempts per job: {attempts}"
    ran = Counter(ledger.read_text().split())
    assert set(ran) == set(jobs), "the ledger and describe-jobs disagree"
    assert [job_id for job_id, count in ran.items() if count != 1] == [], "jobs that ran twice"
    statuses = {p["jobId"]: p["status"] for p in batch.describe_jobs(jobs=arrays)["jobs"]}
    assert set(statuses.values()) == {"SUCCEEDED"}
