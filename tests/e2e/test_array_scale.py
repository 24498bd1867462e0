"""A 1,000-child array on the local executor (scale, not semantics: the scenarios in
test_dependencies.py also run on Docker, where 1,000 containers would take minutes here)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, unique, wait_for


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2)


def _placed_ahead(server: KilnServer) -> float:
    text = httpx.get(f"{server.endpoint}/metrics", timeout=10).text
    return float(re.search(r"^kiln_attempts_placed_ahead_total (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_thousand_child_array_runs_to_completion(kiln_server: KilnServer, batch: Any, queue: str) -> None:
    definition = register_shell(batch, "true", vcpus=1, memory=16)
    placed_ahead_before = _placed_ahead(kiln_server)
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
    # Children end far faster than the scheduler's ticks come: most must have been queued behind a
    # running sibling (start-ahead), or the cores idle between ticks.
    assert _placed_ahead(kiln_server) - placed_ahead_before >= 500
