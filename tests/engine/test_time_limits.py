"""`time_limits.decide`: which RUNNABLE jobs a queue's jobStateTimeLimitActions fail, and why."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.scheduling import JOB_REQUIREMENT, MAX_RESOURCE
from kiln.engine.time_limits import Expired, decide, reason_matches
from kiln.store.records import Waiting

Q1, Q2 = "arn:q1", "arn:q2"
MAX_CODE = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"
REQUIREMENT_CODE = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"


def action(reason: str, seconds: int, kind: str = "CANCEL") -> dict[str, Any]:
    return {"reason": reason, "state": "RUNNABLE", "maxTimeSeconds": seconds, "action": kind}


def test_reason_matches_code_or_full_text() -> None:
    assert reason_matches(MAX_CODE, MAX_RESOURCE)
    assert reason_matches(MAX_RESOURCE, MAX_RESOURCE)
    assert reason_matches(f" {MAX_CODE} ", MAX_RESOURCE)
    assert not reason_matches(REQUIREMENT_CODE, MAX_RESOURCE)
    assert not reason_matches("MISCONFIGURATION", MAX_RESOURCE)  # a code, not any prefix
    assert not reason_matches(MAX_CODE, None)
    assert not reason_matches(MAX_CODE, "")


def test_old_enough_job_with_matching_reason_is_cancelled() -> None:
    jobs = [Waiting("j", Q1, runnable_at=0, status_reason=MAX_RESOURCE)]
    actions = {Q1: [action(MAX_CODE, 600)]}
    assert decide(jobs, actions, now_ms=599_999) == []
    assert decide(jobs, actions, now_ms=600_000) == [
        Expired("j", "CANCEL", f"Canceled by JobStateTimeLimit action due to reason: {MAX_CODE}")
    ]


def test_reason_must_match_and_queue_must_be_the_jobs() -> None:
    jobs = [
        Waiting("waiting-for-capacity", Q1, 0, None),
        Waiting("too-big", Q1, 0, JOB_REQUIREMENT),
        Waiting("other-queue", Q2, 0, MAX_RESOURCE),
    ]
    assert decide(jobs, {Q1: [action(MAX_CODE, 600)]}, now_ms=10**9) == []


def test_first_applicable_action_decides() -> None:
    jobs = [Waiting("j", Q1, 0, JOB_REQUIREMENT)]
    actions = {Q1: [action(MAX_CODE, 600), action(REQUIREMENT_CODE, 900, "TERMINATE"), action(REQUIREMENT_CODE, 600)]}
    assert decide(jobs, actions, now_ms=700_000) == [
        Expired("j", "CANCEL", f"Canceled by JobStateTimeLimit action due to reason: {REQUIREMENT_CODE}")
    ]
    assert decide(jobs, actions, now_ms=900_000)[0].action == "TERMINATE"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([None, MAX_RESOURCE, JOB_REQUIREMENT])), max_size=20),
    st.integers(1, 5),
    st.integers(0, 20_000),
)
def test_never_fails_a_job_too_young_or_with_another_reason(
    specs: list[tuple[int, str | None]], seconds: int, now: int
) -> None:
    jobs = [Waiting(f"j{i}", Q1, at, reason) for i, (at, reason) in enumerate(specs)]
    expired = {item.job_id for item in decide(jobs, {Q1: [action(MAX_CODE, seconds)]}, now)}
    for job in jobs:
        due = now - job.runnable_at >= seconds * 1000 and job.status_reason == MAX_RESOURCE
        assert (job.id in expired) == due
