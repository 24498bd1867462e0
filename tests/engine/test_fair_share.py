"""`fair_share`: properties of the ordering, the usage sum and the compute reservation."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kiln.engine.fair_share import (
    DEFAULT_DECAY_SECONDS,
    MIN_CHARGE_SECONDS,
    AttemptUsage,
    FairShare,
    ShareJob,
    decayed_usage,
    order,
    reserve,
    reserved_vcpus,
)

PROPERTY = settings(max_examples=150, deadline=None)
SHARES = ["a", "b", "c", "d"]
WEIGHTS = st.sampled_from([0.0001, 0.125, 0.5, 1.0, 1.0, 2.0, 3.0, 10.0, 999.9999])


@st.composite
def candidates(draw: st.DrawFn, max_size: int = 40) -> list[ShareJob]:
    """Jobs in RUNNABLE order: random shares, priorities and (quarter) vCPU sizes."""
    size = draw(st.integers(0, max_size))
    return [
        ShareJob(
            f"j{i}", draw(st.sampled_from(SHARES)), draw(st.integers(0, 3)), draw(st.sampled_from([0.25, 1.0, 2.0]))
        )
        for i in range(size)
    ]


@st.composite
def policies(draw: st.DrawFn) -> FairShare:
    weights = {share: draw(WEIGHTS) for share in draw(st.lists(st.sampled_from(SHARES), unique=True))}
    return FairShare(weights=weights)


usages = st.dictionaries(st.sampled_from(SHARES), st.floats(0, 1000, allow_nan=False))


@PROPERTY
@given(candidates(), policies(), usages)
def test_order_is_a_permutation(jobs: list[ShareJob], policy: FairShare, usage: dict[str, float]) -> None:
    result = order(jobs, policy, usage)
    assert sorted(job.job_id for job in result) == sorted(job.job_id for job in jobs)


@PROPERTY
@given(candidates(), policies(), usages)
def test_within_a_share_higher_priority_first_then_fifo(
    jobs: list[ShareJob], policy: FairShare, usage: dict[str, float]
) -> None:
    position = {job.job_id: i for i, job in enumerate(jobs)}
    result = order(jobs, policy, usage)
    for share in SHARES:
        mine = [job for job in result if job.share == share]
        assert mine == sorted(mine, key=lambda job: (-job.priority, position[job.job_id]))


@PROPERTY
@given(candidates(), policies(), usages)
def test_first_job_comes_from_the_least_served_share(
    jobs: list[ShareJob], policy: FairShare, usage: dict[str, float]
) -> None:
    assume(jobs)
    first = order(jobs, policy, usage)[0]
    keys = {job.share: usage.get(job.share, 0.0) * policy.weight(job.share) for job in jobs}
    assert keys[first.share] == min(keys.values())
    # It is its share's best job, and among equally served shares that best job has waited longest.
    position = {job.job_id: i for i, job in enumerate(jobs)}

    def best(share: str) -> ShareJob:
        return min((j for j in jobs if j.share == share), key=lambda j: (-j.priority, position[j.job_id]))

    assert first == best(first.share)
    tied = [share for share, key in keys.items() if key == keys[first.share]]
    assert position[first.job_id] == min(position[best(share).job_id] for share in tied)


@PROPERTY
@given(WEIGHTS, WEIGHTS, st.integers(1, 60))
def test_two_busy_shares_split_in_inverse_proportion_to_weight(light: float, heavy: float, picks: int) -> None:
    jobs = [ShareJob(f"x{i}", "x") for i in range(picks)] + [ShareJob(f"y{i}", "y") for i in range(picks)]
    policy = FairShare(weights={"x": light, "y": heavy})
    counts: Counter[str] = Counter()
    for job in order(jobs, policy, {})[:picks]:
        counts[job.share] += 1
        if counts["x"] < picks and counts["y"] < picks:  # both still have jobs: greedy invariant holds
            assert abs(counts["x"] * light - counts["y"] * heavy) <= max(light, heavy) * MIN_CHARGE_SECONDS + 1e-6


def test_weights_one_and_three_give_three_to_one() -> None:
    jobs = [ShareJob(f"h{i}", "heavy") for i in range(20)] + [ShareJob(f"l{i}", "light") for i in range(20)]
    first = order(jobs, FairShare(weights={"light": 1.0, "heavy": 3.0}), {})[:16]
    assert Counter(job.share for job in first) == {"light": 12, "heavy": 4}


@PROPERTY
@given(candidates(), policies(), usages, st.sampled_from(SHARES), st.floats(0.001, 500))
def test_more_usage_never_brings_a_share_forward(
    jobs: list[ShareJob], policy: FairShare, usage: dict[str, float], share: str, extra: float
) -> None:
    def first_position(used: dict[str, float]) -> int:
        return next((i for i, job in enumerate(order(jobs, policy, used)) if job.share == share), -1)

    busier = {**usage, share: usage.get(share, 0.0) + extra}
    assert first_position(busier) >= first_position(usage)


def test_weight_lookup_exact_then_prefix_then_default() -> None:
    policy = FairShare.from_document(
        {"shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 0.5},
                               {"shareIdentifier": "render*", "weightFactor": 4}, {"shareIdentifier": "plain"}]}
    )  # fmt: skip
    assert policy.weight("teamA") == 0.5
    assert policy.weight("render-01") == 4.0
    assert policy.weight("plain") == 1.0
    assert policy.weight("other") == 1.0
    assert policy.decay_seconds == DEFAULT_DECAY_SECONDS  # absent or 0 means AWS's 600 s
    assert FairShare.from_document({"shareDecaySeconds": 0}).decay_seconds == DEFAULT_DECAY_SECONDS
    assert FairShare.from_document({"shareDecaySeconds": 60, "computeReservation": 50}).compute_reservation == 50


# ----------------------------------------------------------------------------------------------- usage

NOW = 10_000_000
attempts_strategy = st.lists(
    st.builds(
        AttemptUsage,
        share=st.sampled_from(SHARES),
        vcpus=st.sampled_from([0.25, 1.0, 4.0]),
        started_at=st.one_of(st.none(), st.integers(NOW - 2_000_000, NOW)),
        stopped_at=st.one_of(st.none(), st.integers(NOW - 2_000_000, NOW)),
        active=st.booleans(),
    ),
    max_size=20,
)


@PROPERTY
@given(attempts_strategy, st.integers(1, 3600))
def test_usage_is_never_negative_and_running_attempts_count_at_least_the_minimum(
    attempts: list[AttemptUsage], decay: int
) -> None:
    usage = decayed_usage(attempts, NOW, decay)
    assert all(value >= 0 for value in usage.values())
    for share in SHARES:
        floor = sum(a.vcpus * MIN_CHARGE_SECONDS for a in attempts if a.share == share and a.active)
        assert usage.get(share, 0.0) >= floor - 1e-9


@PROPERTY
@given(attempts_strategy, st.integers(1, 3600), st.integers(0, 5_000_000))
def test_finished_usage_only_fades_with_time(attempts: list[AttemptUsage], decay: int, later: int) -> None:
    finished = [a for a in attempts if not a.active and a.stopped_at is not None]
    now, after = decayed_usage(finished, NOW, decay), decayed_usage(finished, NOW + later, decay)
    assert all(after.get(share, 0.0) <= value + 1e-9 for share, value in now.items())


def test_usage_fades_linearly_over_the_decay_window() -> None:
    ran = AttemptUsage("a", 2.0, started_at=0, stopped_at=100_000, active=False)  # 100 s on 2 vCPUs
    assert decayed_usage([ran], 100_000, 600) == {"a": 200.0}
    assert decayed_usage([ran], 100_000 + 300_000, 600) == {"a": 100.0}
    assert decayed_usage([ran], 100_000 + 600_000, 600) == {"a": 0.0}
    running = AttemptUsage("b", 1.0, started_at=0, stopped_at=None, active=True)
    assert decayed_usage([running], 50_000, 600) == {"b": 50.0}
    starting = AttemptUsage("c", 4.0, started_at=None, stopped_at=None, active=True)
    assert decayed_usage([starting], 50_000, 600) == {"c": 4.0 * MIN_CHARGE_SECONDS}


# ----------------------------------------------------------------------------------------- reservation


@pytest.mark.parametrize(("reservation", "active", "expected"), [(50, 1, 4.0), (50, 2, 2.0), (25, 1, 2.0), (0, 0, 0.0)])
def test_reserved_vcpus_follow_aws_formula(reservation: int, active: int, expected: float) -> None:
    assert reserved_vcpus(8.0, reservation, active) == expected


@PROPERTY
@given(candidates(), st.integers(0, 99), st.sets(st.sampled_from(SHARES)), st.sampled_from([1.0, 4.0, 8.0, 16.0]))
def test_reserve_keeps_new_shares_and_respects_the_reserve(
    jobs: list[ShareJob], reservation: int, running: set[str], max_vcpus: float
) -> None:
    kept = reserve(jobs, reservation, running, max_vcpus, used_vcpus=0.0)
    assert [job for job in jobs if job in kept] == kept  # order kept, only drops
    first_of_new_share = {job.share: job for job in reversed(jobs) if job.share not in running}
    assert all(job in kept for job in first_of_new_share.values())
    if reservation == 0:
        assert kept == jobs  # nothing reserved: capacity is the planner's business
        return
    active, used = set(running), 0.0
    for job in kept:  # as if each kept job were placed in turn
        if job.share in active:
            assert used + job.vcpus <= max_vcpus - reserved_vcpus(max_vcpus, reservation, len(active)) + 1e-9
        used += job.vcpus
        active.add(job.share)
