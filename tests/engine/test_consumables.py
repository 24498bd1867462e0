"""The pure consumable-resource rules (`kiln.engine.consumables`) and how `scheduling.plan` applies
them: no plan ever hands out more of a resource than is available, and a job left waiting for one
says which; and, in the engine (tests/engine/harness.py), units a lost attempt held come back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine import consumables
from kiln.engine.scheduling import Candidate, EnvironmentView, QueueView, Resources, plan
from kiln.errors import ValidationError
from kiln.store.repository import Repository
from tests.engine.harness import Engine, engine

QUEUE = QueueView("q", 1, ("ce",))
ENVIRONMENT = EnvironmentView("ce", True, None)
ROOMY = Resources(1000.0, 10**9, 100)


def _plan(candidates: list[Candidate], available: dict[str, int]) -> list[str]:
    result = plan(candidates, [QUEUE], [ENVIRONMENT], ROOMY, ROOMY, None, available)
    return [placement.job_id for placement in result.placements]


def test_available_subtracts_what_is_in_use_only_from_replenishable_totals() -> None:
    assert consumables.available(consumables.REPLENISHABLE, 5, 2) == 3
    assert consumables.available(consumables.NON_REPLENISHABLE, 5, 2) == 5  # the total already lost it
    assert consumables.available(consumables.REPLENISHABLE, 1, 3) == 0  # a total set below what is held


def test_shortfall_names_the_first_resource_that_is_short_or_missing() -> None:
    assert consumables.shortfall([("a", 1), ("b", 2)], {"a": 1, "b": 2}) is None
    assert consumables.shortfall([("a", 1), ("b", 3)], {"a": 1, "b": 2}) == (
        "CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY - Waiting for consumable resource b: the job needs 3, 2 available."
    )
    assert consumables.shortfall([("gone", 1)], {}) == (
        "CONSUMABLE_RESOURCE:NOT_FOUND - Waiting for consumable resource gone, which does not exist "
        "(create it to let the job start)."
    )


def test_plan_places_only_what_the_units_allow_and_lets_others_pass() -> None:
    needs = (("licence", 1),)
    jobs = [Candidate(f"j{i}", "q", 1.0, 64, needs=needs) for i in range(4)] + [Candidate("free", "q", 1.0, 64)]
    result = plan(jobs, [QUEUE], [ENVIRONMENT], ROOMY, ROOMY, None, {"licence": 2})
    assert [p.job_id for p in result.placements] == ["j0", "j1", "free"]
    assert result.diagnostics == {
        "j2": "CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY - Waiting for consumable resource licence: "
        "the job needs 1, 0 available.",
        "j3": "CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY - Waiting for consumable resource licence: "
        "the job needs 1, 0 available.",
    }


def test_a_job_that_does_not_fit_the_host_takes_no_units() -> None:
    needs = (("licence", 1),)
    small = Resources(1.0, 1024, 0)
    jobs = [Candidate("big", "q", 2.0, 64, needs=needs), Candidate("small", "q", 1.0, 64, needs=needs)]
    result = plan(jobs, [QUEUE], [ENVIRONMENT], small, ROOMY, None, {"licence": 1})
    assert [p.job_id for p in result.placements] == ["small"]
    assert result.diagnostics == {"big": None}


@settings(max_examples=80, deadline=None)
@given(
    totals=st.dictionaries(st.sampled_from("abc"), st.integers(0, 4), min_size=1),
    wants=st.lists(st.dictionaries(st.sampled_from("abcd"), st.integers(1, 3), max_size=3), max_size=12),
)
def test_no_plan_hands_out_more_than_is_available(totals: dict[str, int], wants: list[dict[str, int]]) -> None:
    jobs = [Candidate(f"j{i}", "q", 1.0, 64, needs=tuple(sorted(need.items()))) for i, need in enumerate(wants)]
    placed = set(_plan(jobs, totals))
    for name, total in totals.items():
        assert sum(dict(job.needs).get(name, 0) for job in jobs if job.job_id in placed) <= total
    for job in jobs:
        fits_alone = all(totals.get(name, -1) >= quantity for name, quantity in job.needs)
        if not fits_alone:
            assert job.job_id not in placed


def test_a_lost_host_gives_replenishable_units_back_and_a_retry_takes_them_again(tmp_path: Path) -> None:
    """The attempt dies with its executor; the next engine on the same store finds it lost (as after
    a crash), the job is retried, and in use is what the retry holds, then nothing."""
    needs = {"consumableResourceList": [{"consumableResource": "licence", "quantity": 1}]}
    with engine(tmp_path, host_vcpus=8) as first:
        first.queue(max_vcpus=8)
        first.call("CreateConsumableResource", consumableResourceName="licence", totalQuantity=1)
        first.call(
            "RegisterJobDefinition", jobDefinitionName="lic", type="container", consumableResourceProperties=needs,
            containerProperties={"image": "host", "vcpus": 1, "memory": 64, "command": ["sh", "-c", "sleep 30"]},
            retryStrategy={"attempts": 2},
        )  # fmt: skip
        job_id = first.submit("lic")
        first.run_until([job_id], {"RUNNING"})
        assert _in_use(first) == (1, 0)
    with engine(tmp_path, host_vcpus=8) as second:
        second.scheduler.reconcile_lost_attempts()
        retried = second.run_until([job_id], {"RUNNING"})[job_id]
        assert retried["attempts"][0]["statusReason"].startswith("Host EC2")
        assert _in_use(second) == (1, 0)
        second.call("TerminateJob", jobId=job_id, reason="done")
        assert second.run_until([job_id])[job_id]["status"] == "FAILED"
        assert _in_use(second) == (0, 1)


def _in_use(engine_: Engine) -> tuple[int, int]:
    found = engine_.call("DescribeConsumableResource", consumableResource="licence")
    return found["inUseQuantity"], found["availableQuantity"]


def test_a_definition_registered_before_the_checks_is_named_at_submit(tmp_path: Path) -> None:
    """Kiln used to store consumableResourceProperties unchecked: SubmitJob of such a revision
    answers a ClientException naming it, not a 500."""
    with engine(tmp_path) as kiln:
        kiln.queue()
        arn = kiln.call(
            "RegisterJobDefinition", jobDefinitionName="old", type="container",
            containerProperties={"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]},
        )["jobDefinitionArn"]  # fmt: skip
        with kiln.service.db.begin() as connection:
            repo = Repository(connection)
            stored = repo.definitions.get_by_arn(arn)
            assert stored is not None
            bad = {"consumableResourceList": [{"consumableResource": "licence"}]}
            repo.definitions.update(arn, doc={**stored.doc, "consumableResourceProperties": bad})
        with pytest.raises(ValidationError) as caught:
            kiln.submit("old")
        assert caught.value.message.startswith(f"Job definition {arn} has a consumableResourceProperties entry")


def test_a_job_state_time_limit_on_the_consumable_reason_fails_a_job_that_waits_too_long(tmp_path: Path) -> None:
    """AWS lets a queue's jobStateTimeLimitActions end jobs stuck waiting for a consumable resource;
    the action names Kiln's reason code."""
    reason = "CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY"
    with engine(tmp_path, min_state_time_limit_seconds=1) as kiln:
        kiln.call(
            "CreateComputeEnvironment", computeEnvironmentName="ce", type="MANAGED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 4},
        )  # fmt: skip
        kiln.call(
            "CreateJobQueue", jobQueueName="q", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "ce"}],
            jobStateTimeLimitActions=[{"reason": reason, "state": "RUNNABLE", "maxTimeSeconds": 1, "action": "CANCEL"}],
        )  # fmt: skip
        kiln.call("CreateConsumableResource", consumableResourceName="licence", totalQuantity=0)
        kiln.call(
            "RegisterJobDefinition", jobDefinitionName="lic", type="container",
            containerProperties={"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]},
            consumableResourceProperties={"consumableResourceList": [{"consumableResource": "licence", "quantity": 1}]},
        )  # fmt: skip
        job_id = kiln.submit("lic")
        failed = kiln.run_until([job_id], timeout=15)[job_id]
        assert (failed["status"], failed["statusReason"], failed["isCancelled"]) == (
            "FAILED", f"Canceled by JobStateTimeLimit action due to reason: {reason}", True,
        )  # fmt: skip
