"""A 1,000-child array on the local executor (scale, not semantics: the scenarios in
test_dependencies.py also run on Docker, where 1,000 containers would take minutes here)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import make_queue, register_shell, unique, wait_for


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2)


def test_thousand_child_array_runs_to_completion(batch: Any, queue: str) -> None:
    definition = register_shell(batch, "true", vcpus=1, memory=16)
    started = time.monotonic()
    parent = batch.submit_job(jobName=unique("big"), jobQueue=queue, jobDefinition=definition,
                              arrayProperties={"size": 1000})["jobId"]  # fmt: skip
    job = wait_for(batch, parent, timeout=300)
    elapsed = time.monotonic() - started
    print(f"1,000-child array finished in {elapsed:.1f} s")
    assert job["status"] == "SUCCEEDED"
    assert job["arrayProperties"]["statusSummary"] == {
        "SUBMITTED": 0, "PENDING": 0, "RUNNABLE": 0, "STARTING": 0, "RUNNING": 0, "SUCCEEDED": 1000, "FAILED": 0,
    }  # fmt: skip
    pages = batch.get_paginator("list_jobs").paginate(arrayJobId=parent, jobStatus="SUCCEEDED")
    indexes = [item["arrayProperties"]["index"] for page in pages for item in page["jobSummaryList"]]
    assert indexes == list(range(1000))
