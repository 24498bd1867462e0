"""`scheduling.plan`: properties that must hold for any input, plus a few worked examples.

Sizes are multiples of 1/4 vCPU so every sum is exact in binary floating point and the
invariants can be checked with `<=` instead of a tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.scheduling import (
    JOB_REQUIREMENT,
    MAX_RESOURCE,
    Candidate,
    EnvironmentView,
    Placement,
    Plan,
    QueueView,
    Resources,
    plan,
)

PROPERTY = settings(max_examples=80, deadline=None)
# Repeated entries weight the draw towards jobs that fit, so most examples place several jobs.
VCPU_SIZES = [1.0, 0.25, 0.5, 1.0, 2.0, 1.0, 3.0, 4.0, 8.0, 32.0]
MEMORY_SIZES = [256, 4, 1024, 256, 4096, 65536]
GPU_COUNTS = [0, 0, 0, 1, 2]
UNKNOWN_CE = "not-a-ce"


@dataclass(frozen=True)
class Scenario:
    candidates: list[Candidate]
    queues: list[QueueView]
    environments: list[EnvironmentView]
    host_free: Resources
    host_total: Resources

    def run(self) -> Plan:
        return plan(self.candidates, self.queues, self.environments, self.host_free, self.host_total)

    def queue(self, arn: str) -> QueueView:
        return next(q for q in self.queues if q.arn == arn)

    def known_envs(self, queue: QueueView) -> list[EnvironmentView]:
        by_name = {env.name: env for env in self.environments}
        return [by_name[name] for name in queue.environments if name in by_name]


def quarters(up_to: float) -> st.SearchStrategy[float]:
    return st.integers(min_value=0, max_value=int(up_to * 4)).map(lambda n: n / 4)


def at_most(total: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(total), st.integers(0, total))


@st.composite
def environments(draw: st.DrawFn) -> list[EnvironmentView]:
    result = []
    for index in range(draw(st.integers(1, 4))):
        cap = draw(st.one_of(st.none(), st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0])))
        used = 0.0 if cap is None else draw(st.one_of(st.just(0.0), quarters(cap)))
        enabled = draw(st.sampled_from([True, True, True, False]))
        result.append(EnvironmentView(f"ce{index}", enabled, cap, used))
    return result


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    envs = draw(environments())
    names = [env.name for env in envs]
    # Queues often share one CE order and jobs one of a few shapes, so that priority and FIFO
    # comparisons between equal jobs on equal CEs come up in most examples.
    ce_order = st.lists(st.sampled_from([*names, UNKNOWN_CE]), unique=True, min_size=1, max_size=len(names) + 1)
    shared_order = draw(ce_order)
    queues = []
    for index in range(draw(st.integers(1, 3))):
        order = draw(st.one_of(st.just(shared_order), ce_order))
        queues.append(QueueView(f"arn:aws:batch:us-east-1:1:job-queue/q{index}", draw(st.integers(0, 3)), tuple(order)))
    shape = st.tuples(st.sampled_from(VCPU_SIZES), st.sampled_from(MEMORY_SIZES), st.sampled_from(GPU_COUNTS))
    shapes = draw(st.lists(shape, min_size=1, max_size=4))
    candidates = [
        Candidate(f"job{index}", draw(st.sampled_from([q.arn for q in queues])), *draw(st.sampled_from(shapes)))
        for index in range(draw(st.integers(0, 30)))
    ]
    total = Resources(
        vcpus=draw(st.sampled_from([8.0, 1.0, 2.0, 4.0, 16.0])),
        memory_mib=draw(st.sampled_from([32768, 1024, 8192])),
        gpus=draw(st.integers(0, 2)),
    )
    free = Resources(
        vcpus=draw(st.one_of(st.just(total.vcpus), quarters(total.vcpus))),
        memory_mib=draw(at_most(total.memory_mib)),
        gpus=draw(at_most(total.gpus)),
    )
    return Scenario(candidates, queues, envs, free, total)


def _placed(result: Plan) -> dict[str, str]:
    return {p.job_id: p.environment for p in result.placements}


def _expected_reason(scenario: Scenario, job: Candidate) -> str | None:
    """What AWS shows for a job that can never run here (§1d, §2.1), else None."""
    total = scenario.host_total
    if job.vcpus > total.vcpus or job.memory_mib > total.memory_mib or job.gpus > total.gpus:
        return JOB_REQUIREMENT
    caps = [env.max_vcpus for env in scenario.known_envs(scenario.queue(job.queue_arn))]
    if caps and all(cap is not None and job.vcpus > cap for cap in caps):
        return MAX_RESOURCE
    return None


def _size(job: Candidate) -> tuple[float, int, int]:
    return (job.vcpus, job.memory_mib, job.gpus)


# -- properties -----------------------------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_never_over_commits_the_host(scenario: Scenario) -> None:
    placed = set(_placed(scenario.run()))
    jobs = [job for job in scenario.candidates if job.job_id in placed]
    assert sum(job.vcpus for job in jobs) <= scenario.host_free.vcpus
    assert sum(job.memory_mib for job in jobs) <= scenario.host_free.memory_mib
    assert sum(job.gpus for job in jobs) <= scenario.host_free.gpus


@PROPERTY
@given(scenarios())
def test_never_over_commits_a_compute_environment(scenario: Scenario) -> None:
    placed = _placed(scenario.run())
    for env in scenario.environments:
        added = sum(job.vcpus for job in scenario.candidates if placed.get(job.job_id) == env.name)
        if env.max_vcpus is not None:
            assert env.used_vcpus + added <= env.max_vcpus, env


@PROPERTY
@given(scenarios())
def test_places_only_on_enabled_environments_of_the_jobs_queue(scenario: Scenario) -> None:
    envs = {env.name: env for env in scenario.environments}
    jobs = {job.job_id: job for job in scenario.candidates}
    for placement in scenario.run().placements:
        queue = scenario.queue(jobs[placement.job_id].queue_arn)
        assert placement.environment in queue.environments
        assert envs[placement.environment].enabled


@PROPERTY
@given(scenarios())
def test_every_candidate_is_placed_once_or_diagnosed(scenario: Scenario) -> None:
    result = scenario.run()
    placed_ids = [p.job_id for p in result.placements]
    assert len(placed_ids) == len(set(placed_ids))
    assert not set(placed_ids) & set(result.diagnostics)
    assert set(placed_ids) | set(result.diagnostics) == {job.job_id for job in scenario.candidates}


@PROPERTY
@given(scenarios())
def test_diagnostics_name_jobs_that_can_never_run(scenario: Scenario) -> None:
    result = scenario.run()
    placed = _placed(result)
    for job in scenario.candidates:
        expected = _expected_reason(scenario, job)
        if expected is not None:
            assert job.job_id not in placed
        if job.job_id not in placed:
            assert result.diagnostics[job.job_id] == expected


@PROPERTY
@given(scenarios())
def test_a_waiting_job_does_not_fit_what_is_left(scenario: Scenario) -> None:
    """Greedy and work-conserving: nothing left waiting would fit the capacity left over."""
    result = scenario.run()
    placed = _placed(result)
    jobs = [job for job in scenario.candidates if job.job_id in placed]
    left = (
        scenario.host_free.vcpus - sum(j.vcpus for j in jobs),
        scenario.host_free.memory_mib - sum(j.memory_mib for j in jobs),
        scenario.host_free.gpus - sum(j.gpus for j in jobs),
    )
    used = {env.name: env.used_vcpus for env in scenario.environments}
    for job in jobs:
        used[placed[job.job_id]] += job.vcpus
    for job in scenario.candidates:
        if job.job_id in placed:
            continue
        fits_host = all(need <= free for need, free in zip(_size(job), left, strict=True))
        room = [
            env.name
            for env in scenario.known_envs(scenario.queue(job.queue_arn))
            if env.enabled and (env.max_vcpus is None or used[env.name] + job.vcpus <= env.max_vcpus)
        ]
        assert not (fits_host and room), job


@PROPERTY
@given(scenarios())
def test_compute_environments_are_tried_in_queue_order(scenario: Scenario) -> None:
    """Replaying the placements: each went to the first enabled CE of its queue with room."""
    jobs = {job.job_id: job for job in scenario.candidates}
    used = {env.name: env.used_vcpus for env in scenario.environments}
    for placement in scenario.run().placements:
        job = jobs[placement.job_id]
        first_with_room = next(
            env.name
            for env in scenario.known_envs(scenario.queue(job.queue_arn))
            if env.enabled and (env.max_vcpus is None or used[env.name] + job.vcpus <= env.max_vcpus)
        )
        assert placement.environment == first_with_room
        used[placement.environment] += job.vcpus


@PROPERTY
@given(scenarios())
def test_fifo_within_a_queue_for_equal_sizes(scenario: Scenario) -> None:
    """A job left waiting blocks every later job of the same queue and the same size."""
    placed = _placed(scenario.run())
    for index, earlier in enumerate(scenario.candidates):
        if earlier.job_id in placed:
            continue
        for later in scenario.candidates[index + 1 :]:
            if later.queue_arn == earlier.queue_arn and _size(later) == _size(earlier):
                assert later.job_id not in placed, (earlier, later)


@PROPERTY
@given(scenarios())
def test_higher_priority_queue_is_served_first(scenario: Scenario) -> None:
    """An equal-size job of a lower-priority queue (same CEs) never starts while a higher one waits."""
    placed = _placed(scenario.run())
    for waiting in scenario.candidates:
        if waiting.job_id in placed or _expected_reason(scenario, waiting) is not None:
            continue
        for other in scenario.candidates:
            if (
                other.job_id in placed
                and _size(other) == _size(waiting)
                and scenario.queue(other.queue_arn).environments == scenario.queue(waiting.queue_arn).environments
            ):
                other_priority = scenario.queue(other.queue_arn).priority
                assert other_priority >= scenario.queue(waiting.queue_arn).priority, (waiting, other)


@settings(max_examples=100, deadline=None)
@given(
    priorities=st.lists(st.integers(0, 5), min_size=2, max_size=4, unique=True),
    jobs=st.lists(st.integers(0, 3), max_size=40),
    free_vcpus=st.integers(0, 12),
)
def test_scarce_capacity_goes_by_priority_then_fifo(priorities: list[int], jobs: list[int], free_vcpus: int) -> None:
    """1-vCPU jobs on one shared CE: exactly the first `free` jobs in (priority, FIFO) order start."""
    queues = [QueueView(f"q{i}", priority, ("ce",)) for i, priority in enumerate(priorities)]
    candidates = [Candidate(f"j{n}", f"q{queue % len(queues)}", 1.0, 16) for n, queue in enumerate(jobs)]
    total = Resources(16.0, 1 << 20)
    result = plan(candidates, queues, [EnvironmentView("ce", True, None)], Resources(float(free_vcpus), 1 << 20), total)
    priority = {q.arn: q.priority for q in queues}
    expected = sorted(candidates, key=lambda c: -priority[c.queue_arn])[:free_vcpus]  # stable: FIFO
    assert [p.job_id for p in result.placements] == [c.job_id for c in expected]
    assert all(reason is None for reason in result.diagnostics.values())


# -- examples -------------------------------------------------------------------------------------

TOTAL = Resources(vcpus=8.0, memory_mib=16384, gpus=1)


def _plan(
    candidates: Sequence[Candidate],
    queues: Sequence[QueueView],
    environments: Sequence[EnvironmentView],
    free: Resources = TOTAL,
) -> Plan:
    return plan(candidates, queues, environments, free, TOTAL)


def test_high_priority_wins_one_free_vcpu_over_ten_thousand_listed_first() -> None:
    low = [Candidate(f"low{i}", "low", 1.0, 64) for i in range(10_000)]
    high = Candidate("high", "high", 1.0, 64)
    queues = [QueueView("low", 1, ("ce",)), QueueView("high", 100, ("ce",))]
    result = _plan([*low, high], queues, [EnvironmentView("ce", True, 256.0)], Resources(1.0, 16384, 0))
    assert result.placements == [Placement("high", "ce")]
    assert len(result.diagnostics) == 10_000
    assert set(result.diagnostics.values()) == {None}


def test_first_environment_in_order_fills_first() -> None:
    envs = [EnvironmentView("small", True, 2.0), EnvironmentView("big", True, 4.0)]
    jobs = [Candidate(f"j{i}", "q", 1.0, 64) for i in range(7)]
    result = _plan(jobs, [QueueView("q", 1, ("small", "big"))], envs)
    assert [p.environment for p in result.placements] == ["small", "small", "big", "big", "big", "big"]
    assert result.diagnostics == {"j6": None}


def test_environment_in_use_counts_against_its_cap() -> None:
    envs = [EnvironmentView("a", True, 2.0, used_vcpus=1.5), EnvironmentView("b", True, 4.0)]
    result = _plan([Candidate("j", "q", 1.0, 64)], [QueueView("q", 1, ("a", "b"))], envs)
    assert result.placements == [Placement("j", "b")]


def test_disabled_environment_gets_no_new_jobs() -> None:
    envs = [EnvironmentView("off", False, None), EnvironmentView("on", True, None)]
    result = _plan([Candidate("j", "q", 1.0, 64)], [QueueView("q", 1, ("off", "on"))], envs)
    assert result.placements == [Placement("j", "on")]
    only_off = _plan([Candidate("j", "q", 1.0, 64)], [QueueView("q", 1, ("off",))], envs)
    assert only_off.placements == []
    assert only_off.diagnostics == {"j": None}


def test_job_above_every_max_vcpus_is_a_misconfiguration() -> None:
    envs = [EnvironmentView("a", True, 2.0), EnvironmentView("b", False, 4.0)]
    result = _plan([Candidate("big", "q", 6.0, 64)], [QueueView("q", 1, ("a", "b"))], envs)
    assert result.placements == []
    assert result.diagnostics["big"] == MAX_RESOURCE
    assert MAX_RESOURCE.startswith("MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - ")


def test_uncapped_environment_means_no_max_resource_diagnosis() -> None:
    envs = [EnvironmentView("a", True, 2.0), EnvironmentView("b", True, None)]
    result = _plan([Candidate("j", "q", 6.0, 64)], [QueueView("q", 1, ("a", "b"))], envs)
    assert result.placements == [Placement("j", "b")]


def test_job_bigger_than_the_host_is_a_requirement_misconfiguration() -> None:
    envs = [EnvironmentView("ce", True, 1024.0)]
    queues = [QueueView("q", 1, ("ce",))]
    jobs = [
        Candidate("cpu", "q", 16.0, 64),
        Candidate("mem", "q", 1.0, 32768),
        Candidate("gpu", "q", 1.0, 64, gpus=2),
    ]
    result = _plan(jobs, queues, envs)
    assert result.placements == []
    assert result.diagnostics == dict.fromkeys(["cpu", "mem", "gpu"], JOB_REQUIREMENT)
    assert JOB_REQUIREMENT.startswith("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - ")


def test_job_that_does_not_fit_now_does_not_block_smaller_ones() -> None:
    jobs = [Candidate("wide", "q", 4.0, 64), Candidate("narrow", "q", 1.0, 64)]
    result = _plan(jobs, [QueueView("q", 1, ("ce",))], [EnvironmentView("ce", True, None)], Resources(2.0, 16384, 0))
    assert result.placements == [Placement("narrow", "ce")]
    assert result.diagnostics == {"wide": None}


def test_memory_and_gpus_are_reserved_too() -> None:
    jobs = [
        Candidate("g1", "q", 1.0, 1024, gpus=1),
        Candidate("g2", "q", 1.0, 1024, gpus=1),
        Candidate("m1", "q", 1.0, 8192),
        Candidate("m2", "q", 1.0, 8192),
    ]
    result = _plan(jobs, [QueueView("q", 1, ("ce",))], [EnvironmentView("ce", True, None)], Resources(8.0, 12288, 1))
    assert [p.job_id for p in result.placements] == ["g1", "m1"]
    assert result.diagnostics == {"g2": None, "m2": None}


def test_unknown_environment_names_in_a_queue_are_ignored() -> None:
    result = _plan(
        [Candidate("j", "q", 1.0, 64)], [QueueView("q", 1, ("gone", "ce"))], [EnvironmentView("ce", True, 1.0)]
    )
    assert result.placements == [Placement("j", "ce")]


def test_nothing_to_do() -> None:
    result = _plan([], [QueueView("q", 1, ("ce",))], [EnvironmentView("ce", True, None)])
    assert result.placements == []
    assert result.diagnostics == {}


def test_job_bigger_than_the_largest_of_several_hosts_never_fits_even_if_the_total_has_room() -> None:
    """Ray: three 2-CPU/2-GiB nodes make 6 CPUs in all, yet a 3-CPU or 3-GiB job fits none of them."""
    envs = [EnvironmentView("ce", True, 1024.0)]
    queues = [QueueView("q", 1, ("ce",))]
    jobs = [Candidate("cpu", "q", 3.0, 64), Candidate("mem", "q", 1.0, 3072), Candidate("ok", "q", 2.0, 2048)]
    total, largest = Resources(6.0, 6144), Resources(2.0, 2048)
    result = plan(jobs, queues, envs, total, total, largest)
    assert result.placements == [Placement("ok", "ce")]
    assert result.diagnostics == dict.fromkeys(["cpu", "mem"], JOB_REQUIREMENT)


def test_gang_larger_than_the_largest_host_is_placed_if_the_cluster_holds_it_but_not_one_beyond_the_total() -> None:
    """Ray: a 3-node gang of 1 CPU each (3 CPUs in all) spreads over 2-CPU nodes; 7 CPUs never fit six."""
    envs = [EnvironmentView("ce", True, 1024.0)]
    queues = [QueueView("q", 1, ("ce",))]
    jobs = [Candidate("gang", "q", 3.0, 192, gang=True), Candidate("huge", "q", 7.0, 192, gang=True)]
    total, largest = Resources(6.0, 6144), Resources(2.0, 2048)
    result = plan(jobs, queues, envs, total, total, largest)
    assert result.placements == [Placement("gang", "ce")]
    assert result.diagnostics == {"huge": JOB_REQUIREMENT}
