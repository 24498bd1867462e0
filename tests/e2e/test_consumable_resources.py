"""Scheduling with consumable resources on a real `kiln server`: a job starts only while each
resource it names has enough available, REPLENISHABLE units come back on every way an attempt ends,
NON_REPLENISHABLE ones are gone, and a server SIGKILLed mid-way neither leaks nor double-counts.

The host counts as 8 vCPUs (kiln.toml) and queues allow 8, so the resources, not this machine's two
cores, bound how many jobs run. Jobs record when they start and end in a file (`spans`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.e2e.test_aws_cli_workflow import aws
from tests.support import make_queue, poll, register_shell, submit, unique, wait_for

# Appends "<start ns> <end ns>" to `path` once the job ends (one line per attempt).
SPAN = 'start=$(date +%s%N); sleep {seconds}; echo "$start $(date +%s%N)" >> {path}'
# The same, but the job first waits until the test creates `gate`: the test sees who runs and who
# waits for as long as it needs, whatever the machine's load.
GATED_SPAN = (
    'start=$(date +%s%N); while [ ! -e {gate} ]; do sleep 0.05; done; sleep 0.1; echo "$start $(date +%s%N)" >> {path}'
)


def _server(root: Path, flags: list[str] | None = None) -> KilnServer:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "kiln.toml").write_text("[server]\nhost_vcpus = 8\n")
    return start_server(root, [*FAST_FLAGS, *(flags or [])])


@pytest.fixture(scope="module")
def kiln_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = _server(tmp_path_factory.mktemp("kiln-consumable"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=8)


def _resource(batch: Any, total: int, kind: str = "REPLENISHABLE") -> str:
    name = unique("cr")
    batch.create_consumable_resource(consumableResourceName=name, totalQuantity=total, resourceType=kind)
    return name


def _needs(name: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "consumableResourceProperties": {"consumableResourceList": [{"consumableResource": name, "quantity": quantity}]}
    }


def _quantities(batch: Any, name: str) -> tuple[int, int, int]:
    found = batch.describe_consumable_resource(consumableResource=name)
    return found["totalQuantity"], found["inUseQuantity"], found["availableQuantity"]


def _max_overlap(path: Path) -> int:
    """The most spans open at one moment (an end at the same instant as a start closes first)."""
    events: list[tuple[int, int]] = []
    for line in path.read_text().split("\n"):
        if line.strip():
            start, end = map(int, line.split())
            events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


def _statuses(batch: Any, jobs: list[str]) -> list[str]:
    """Sorted statuses of `jobs`, a RUNNABLE one counted only once its reason names a resource."""
    found = batch.describe_jobs(jobs=jobs)["jobs"]
    return sorted(
        job["status"]
        for job in found
        if job["status"] != "RUNNABLE" or "consumable resource" in job.get("statusReason", "")
    )


def test_two_units_never_run_more_than_two_jobs_and_all_finish(batch: Any, queue: str, job_tmp: Path) -> None:
    name = _resource(batch, 2)
    spans, gate = job_tmp / "spans", job_tmp / "gate"
    definition = register_shell(batch, GATED_SPAN.format(gate=gate, path=spans), **_needs(name))
    jobs = [submit(batch, queue, definition) for _ in range(5)]
    poll(lambda: _statuses(batch, jobs) == ["RUNNABLE"] * 3 + ["RUNNING"] * 2, "2 running, 3 waiting")
    assert _quantities(batch, name) == (2, 2, 0)
    listed = batch.list_jobs_by_consumable_resource(consumableResource=name)["jobs"]
    assert sorted(job["jobArn"].rsplit("/", 1)[-1] for job in listed) == sorted(jobs)
    assert sorted(job["jobStatus"] for job in listed) == ["RUNNABLE"] * 3 + ["RUNNING"] * 2
    assert {job["quantity"] for job in listed} == {1}
    gate.touch()
    assert [wait_for(batch, job_id)["status"] for job_id in jobs] == ["SUCCEEDED"] * 5
    assert len(spans.read_text().splitlines()) == 5
    assert _max_overlap(spans) == 2
    assert _quantities(batch, name) == (2, 0, 2)


def test_array_children_each_take_the_quantity(batch: Any, queue: str, job_tmp: Path) -> None:
    name = _resource(batch, 1)
    spans = job_tmp / "spans"
    definition = register_shell(batch, SPAN.format(seconds=0.2, path=spans), **_needs(name))
    job_id = submit(batch, queue, definition, arrayProperties={"size": 3})
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    assert len(spans.read_text().splitlines()) == 3
    assert _max_overlap(spans) == 1
    assert _quantities(batch, name) == (1, 0, 1)


def test_a_waiting_job_names_the_resource_and_starts_once_it_is_added(batch: Any, queue: str) -> None:
    name = _resource(batch, 0)
    definition = register_shell(batch, "true", **_needs(name, 2))
    job_id = submit(batch, queue, definition)
    waiting = poll(
        lambda: [j for j in batch.describe_jobs(jobs=[job_id])["jobs"] if j.get("statusReason")], "a RUNNABLE reason"
    )[0]
    assert waiting["status"] == "RUNNABLE"
    assert waiting["statusReason"] == (
        f"CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY - Waiting for consumable resource {name}: "
        "the job needs 2, 0 available."
    )
    batch.update_consumable_resource(consumableResource=name, operation="ADD", quantity=2)
    done = wait_for(batch, job_id)
    assert (done["status"], done.get("statusReason")) == ("SUCCEEDED", "Essential container in task exited")
    assert _quantities(batch, name) == (2, 0, 2)


def test_non_replenishable_units_are_consumed(batch: Any, queue: str) -> None:
    name = _resource(batch, 3, "NON_REPLENISHABLE")
    definition = register_shell(batch, "true", **_needs(name, 2))
    first = submit(batch, queue, definition)
    assert wait_for(batch, first)["status"] == "SUCCEEDED"
    assert _quantities(batch, name) == (1, 0, 1)
    second = submit(batch, queue, definition)
    reason = poll(lambda: batch.describe_jobs(jobs=[second])["jobs"][0].get("statusReason"), "a RUNNABLE reason")
    assert f"Waiting for consumable resource {name}: the job needs 2, 1 available." in reason
    assert batch.describe_jobs(jobs=[second])["jobs"][0]["status"] == "RUNNABLE"
    batch.terminate_job(jobId=second, reason="not needed")
    assert wait_for(batch, second)["status"] == "FAILED"
    assert _quantities(batch, name) == (1, 0, 1)


def test_failed_retried_and_terminated_jobs_give_replenishable_units_back(batch: Any, queue: str) -> None:
    name = _resource(batch, 1)
    failing = register_shell(batch, "exit 3", **_needs(name), retryStrategy={"attempts": 2})
    failed = wait_for(batch, submit(batch, queue, failing))
    assert (failed["status"], len(failed["attempts"])) == ("FAILED", 2)
    assert _quantities(batch, name) == (1, 0, 1)

    sleeper = register_shell(batch, "sleep 30", **_needs(name))
    running = submit(batch, queue, sleeper)
    wait_for(batch, running, {"RUNNING"})
    assert _quantities(batch, name) == (1, 1, 0)
    listed = batch.list_jobs_by_consumable_resource(
        consumableResource=name, filters=[{"name": "JOB_STATUS", "values": ["RUNNING"]}]
    )
    assert [(job["jobArn"].rsplit("/", 1)[1], job["quantity"]) for job in listed["jobs"]] == [(running, 1)]
    batch.terminate_job(jobId=running, reason="stop")
    assert wait_for(batch, running)["status"] == "FAILED"
    assert _quantities(batch, name) == (1, 0, 1)


def test_deleting_a_resource_in_use_lets_its_job_finish_and_waiting_jobs_wait_for_it(batch: Any, queue: str) -> None:
    name = _resource(batch, 1)
    definition = register_shell(batch, "sleep 1", **_needs(name))
    running = submit(batch, queue, definition)
    wait_for(batch, running, {"RUNNING"})
    batch.delete_consumable_resource(consumableResource=name)
    waiting = submit(batch, queue, definition)
    assert wait_for(batch, running)["status"] == "SUCCEEDED"
    reason = poll(lambda: batch.describe_jobs(jobs=[waiting])["jobs"][0].get("statusReason"), "a RUNNABLE reason")
    assert reason.startswith(
        f"CONSUMABLE_RESOURCE:NOT_FOUND - Waiting for consumable resource {name}, which does not exist"
    )
    batch.create_consumable_resource(consumableResourceName=name, totalQuantity=1)  # the same resource again
    assert wait_for(batch, waiting)["status"] == "SUCCEEDED"
    assert _quantities(batch, name) == (1, 0, 1)


def test_the_aws_cli_creates_and_describes_one(kiln_server: KilnServer) -> None:
    name = unique("cli")
    created = aws(kiln_server, "create-consumable-resource", "--consumable-resource-name", name, "--total-quantity", "4",
                  "--resource-type", "NON_REPLENISHABLE")  # fmt: skip
    assert created["consumableResourceArn"].endswith(f":consumable-resource/{name}")
    described = aws(kiln_server, "describe-consumable-resource", "--consumable-resource", name)
    assert (described["totalQuantity"], described["availableQuantity"], described["resourceType"]) == (
        4, 4, "NON_REPLENISHABLE",
    )  # fmt: skip


def test_a_sigkilled_server_neither_leaks_nor_double_counts(tmp_path: Path, database_url: str, job_tmp: Path) -> None:
    server = _server(tmp_path, ["--database-url", database_url])
    try:
        batch = server.client()
        queue = make_queue(batch, max_vcpus=8)
        name = _resource(batch, 2)
        spans, gate = job_tmp / "spans", job_tmp / "gate"
        definition = register_shell(batch, GATED_SPAN.format(gate=gate, path=spans), **_needs(name))
        jobs = [submit(batch, queue, definition) for _ in range(4)]
        # Two run, and the scheduler has looked at the other two and left them waiting for the resource.
        poll(lambda: _statuses(batch, jobs) == ["RUNNABLE", "RUNNABLE", "RUNNING", "RUNNING"], "2 running, 2 waiting")
        assert _quantities(batch, name) == (2, 2, 0)
        server.stop(kill=True)
        server.start()
        batch = server.client()
        assert _quantities(batch, name) == (2, 2, 0)  # the same two attempts, adopted, hold them
        gate.touch()
        assert [wait_for(batch, job_id)["status"] for job_id in jobs] == ["SUCCEEDED"] * 4
        assert _max_overlap(spans) <= 2
        assert len(spans.read_text().splitlines()) == 4
        assert _quantities(batch, name) == (2, 0, 2)
    finally:
        server.close()
