"""The scheduler's candidates for one queue: FIFO for a plain queue, fair-share order otherwise.

For a queue with a scheduling policy, candidates are fetched per share (the best `limit` of each,
so one share with a long backlog cannot hide the others), usage is summed per share in SQL from
the share's recent attempts (`repo.shares.usage`, the formula of `fair_share.decayed_usage`),
and `fair_share.order` decides the order; the planner then takes them in that order.
"""

from __future__ import annotations

from kiln.clock import now_ms
from kiln.engine import fair_share
from kiln.engine.lifecycle import Status
from kiln.store.records import Candidate, Document
from kiln.store.repository import Repository


def runnable_candidates(
    repo: Repository, queue: Document, limit: int, max_vcpus: float, max_memory_mib: int
) -> list[Candidate]:
    """Same candidates as `repo.jobs.candidates`, in the order the queue's policy wants (`queue`
    is its JobQueueDetail)."""
    queue_arn = queue["jobQueueArn"]
    policy_arn = queue.get("schedulingPolicyArn")
    if not policy_arn:
        return repo.jobs.candidates(queue_arn, Status.RUNNABLE.value, limit, max_vcpus, max_memory_mib)
    candidates = repo.shares.candidates(queue_arn, Status.RUNNABLE.value, limit, max_vcpus, max_memory_mib)
    if not candidates:
        return []
    stored = repo.policies.get_by_arn(policy_arn)
    policy = fair_share.FairShare.from_document(stored.doc.get("fairsharePolicy") if stored else None)
    # The store joins every candidate here to its share, so `share_identifier` is never None.
    jobs = [fair_share.ShareJob(c.id, c.share_identifier or "", c.scheduling_priority, c.vcpus) for c in candidates]
    if len({job.share for job in jobs}) == 1 and not policy.compute_reservation:
        ordered = fair_share.order(jobs, policy, {})  # one share: usage cannot change the order
    else:
        window_ms = policy.decay_seconds * 1000
        totals = repo.shares.usage(queue_arn, now_ms(), window_ms, fair_share.MIN_CHARGE_SECONDS)
        ordered = fair_share.order(jobs, policy, {t.share_identifier: t.usage for t in totals})
        if policy.compute_reservation:
            max_total, used = _queue_capacity(repo, queue)
            running = {t.share_identifier for t in totals if t.running}
            ordered = fair_share.reserve(ordered, policy.compute_reservation, running, max_total, used)
    by_id = {candidate.id: candidate for candidate in candidates}
    return [by_id[job.job_id] for job in ordered[:limit]]


def _queue_capacity(repo: Repository, queue: Document) -> tuple[float | None, float]:
    """The queue's compute environments together: their vCPU cap (None: one has none) and use."""
    names = [item["computeEnvironment"].rsplit("/", 1)[-1] for item in queue.get("computeEnvironmentOrder") or []]
    total: float | None = 0.0
    for name in names:
        environment = repo.environments.get(name)
        doc = environment.doc if environment else {}
        cap = (
            doc.get("unmanagedvCpus")
            if doc.get("type") == "UNMANAGED"
            else (doc.get("computeResources") or {}).get("maxvCpus")
        )
        total = None if cap is None or total is None else total + cap
    usage = repo.attempts.usage_by_environment()
    used = sum(held.vcpus for env, held in usage.items() if env in names)
    return total, used
