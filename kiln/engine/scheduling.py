"""Placement decisions as a pure function: (runnable jobs, queues, environments, free capacity)
-> placements and RUNNABLE diagnostics. No I/O, so it is tested directly and exhaustively.

Queues are served in descending priority, jobs within a queue in the order they became RUNNABLE,
and a queue's compute environments in ascending `order`. A job that does not fit now does not
block smaller ones behind it (AWS gives no strict priority guarantee either). A job that needs
consumable resources fits only while each has enough available (`consumables.shortfall`), and
placing it takes its quantities from what the jobs after it see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.engine import consumables

MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - All compute environments have a maxVcpu "
    "setting that is smaller than the job requirements."
)
# A multi-node parallel job's nodes start together or not at all: while the whole gang does not
# fit the free capacity, it waits with AWS's capacity diagnostic (nothing of it holds capacity).
INSUFFICIENT_CAPACITY = (
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - All compute environments have insufficient capacity to service the job."
)
JOB_REQUIREMENT = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - All compute environments have no connected "
    "instances that meet the job requirements."
)


@dataclass(frozen=True)
class Candidate:
    job_id: str
    queue_arn: str
    vcpus: float
    memory_mib: int
    gpus: int = 0
    gang: bool = False  # all nodes of an MNP job: the resources are their sum, placed in one decision
    needs: tuple[consumables.Need, ...] = ()  # consumable resources: (name, quantity) each


@dataclass(frozen=True)
class QueueView:
    arn: str
    priority: int
    environments: tuple[str, ...]  # CE names in ascending order


@dataclass(frozen=True)
class EnvironmentView:
    name: str
    enabled: bool
    max_vcpus: float | None  # None: no cap of its own (unmanaged without unmanagedvCpus)
    used_vcpus: float = 0.0


@dataclass(frozen=True)
class Resources:
    vcpus: float
    memory_mib: int
    gpus: int = 0


@dataclass(frozen=True)
class Placement:
    job_id: str
    environment: str


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    # job id -> RUNNABLE statusReason (None clears a stale one) for jobs left waiting.
    diagnostics: dict[str, str | None] = field(default_factory=dict)


def _never_fits(
    job: Candidate, envs: Sequence[EnvironmentView], host_total: Resources, largest_host: Resources | None = None
) -> str | None:
    # A gang's resources are its nodes' sum, spread over hosts: only the executor can tell whether
    # each node fits one (the Ray executor fails a gang with a node no host holds).
    for limit in (host_total, None if job.gang else largest_host):
        if limit is not None and (
            job.vcpus > limit.vcpus or job.memory_mib > limit.memory_mib or job.gpus > limit.gpus
        ):
            return JOB_REQUIREMENT
    caps = [env.max_vcpus for env in envs]
    if caps and all(cap is not None and job.vcpus > cap for cap in caps):
        return MAX_RESOURCE
    return None


def plan(
    candidates: Sequence[Candidate],
    queues: Sequence[QueueView],
    environments: Sequence[EnvironmentView],
    host_free: Resources,
    host_total: Resources,
    largest_host: Resources | None = None,
    available: Mapping[str, int] | None = None,
) -> Plan:
    """Choose which runnable jobs start now and where. `candidates` are in RUNNABLE order.

    `largest_host`: where capacity is spread over several hosts, the biggest one (no job larger
    than it can ever start). `available`: each existing consumable resource's available quantity
    (needed only when some candidate has `needs`)."""
    result = Plan()
    free_units = dict(available or {})
    envs = {env.name: env for env in environments}
    used = {env.name: env.used_vcpus for env in environments}
    free = [host_free.vcpus, float(host_free.memory_mib), float(host_free.gpus)]
    by_queue: dict[str, list[Candidate]] = {}
    for job in candidates:
        by_queue.setdefault(job.queue_arn, []).append(job)
    for queue in sorted(queues, key=lambda q: (-q.priority, q.arn)):
        queue_envs = [envs[name] for name in queue.environments if name in envs]
        for job in by_queue.get(queue.arn, []):
            problem = _never_fits(job, queue_envs, host_total, largest_host)
            if problem is not None:
                result.diagnostics[job.job_id] = problem
                continue
            short = consumables.shortfall(job.needs, free_units) if job.needs else None
            if short is not None:
                result.diagnostics[job.job_id] = short
                continue
            need = (job.vcpus, float(job.memory_mib), float(job.gpus))
            waiting = INSUFFICIENT_CAPACITY if job.gang else None
            if any(n > f + 1e-9 for n, f in zip(need, free, strict=True)):
                result.diagnostics[job.job_id] = waiting
                continue
            target = next(
                (
                    env.name
                    for env in queue_envs
                    if env.enabled and (env.max_vcpus is None or used[env.name] + job.vcpus <= env.max_vcpus + 1e-9)
                ),
                None,
            )
            if target is None:
                result.diagnostics[job.job_id] = waiting
                continue
            used[target] += job.vcpus
            free = [f - n for f, n in zip(free, need, strict=True)]
            consumables.take(job.needs, free_units)
            result.placements.append(Placement(job.job_id, target))
    return result
