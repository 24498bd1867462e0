"""The scheduler's candidates for one queue: FIFO for a plain queue, fair-share order otherwise.

For a queue with a scheduling policy, candidates are fetched per share (the best `limit` of each,
so one share with a long backlog cannot hide the others), usage is summed per share in SQL from
the share's recent attempts (`Repository.share_usage`, the formula of `fair_share.decayed_usage`),
and `fair_share.order` decides the order; the planner then takes them in that order.
"""

from __future__ import annotations

from kiln.clock import now_ms
from kiln.engine import fair_share
from kiln.engine.lifecycle import Status
from kiln.store.repository import Repository, Row


def runnable_candidates(repo: Repository, queue: Row, limit: int, max_vcpus: float, max_memory_mib: int) -> list[Row]:
    """Same rows as `Repository.runnable_candidates`, in the order the queue's policy wants."""
    queue_arn = queue["jobQueueArn"]
    policy_arn = queue.get("schedulingPolicyArn")
    if not policy_arn:
        return repo.runnable_candidates(queue_arn, Status.RUNNABLE.value, limit, max_vcpus, max_memory_mib)
    rows = repo.share_candidates(queue_arn, Status.RUNNABLE.value, limit, max_vcpus, max_memory_mib)
    if not rows:
        return []
    stored = repo.get_scheduling_policy(arn=policy_arn)
    policy = fair_share.FairShare.from_document((stored or {}).get("doc", {}).get("fairsharePolicy"))
    jobs = [fair_share.ShareJob(r["id"], r["share_identifier"], r["scheduling_priority"], r["vcpus"]) for r in rows]
    if len({job.share for job in jobs}) == 1 and not policy.compute_reservation:
        ordered = fair_share.order(jobs, policy, {})  # one share: usage cannot change the order
    else:
        window_ms = policy.decay_seconds * 1000
        totals = repo.share_usage(queue_arn, now_ms(), window_ms, fair_share.MIN_CHARGE_SECONDS)
        ordered = fair_share.order(jobs, policy, {t["share_identifier"]: float(t["usage"]) for t in totals})
        if policy.compute_reservation:
            max_total, used = _queue_capacity(repo, queue)
            running = {t["share_identifier"] for t in totals if t["running"]}
            ordered = fair_share.reserve(ordered, policy.compute_reservation, running, max_total, used)
    by_id = {row["id"]: row for row in rows}
    return [by_id[job.job_id] for job in ordered[:limit]]


def _queue_capacity(repo: Repository, queue: Row) -> tuple[float | None, float]:
    """The queue's compute environments together: their vCPU cap (None: one has none) and use."""
    names = [item["computeEnvironment"].rsplit("/", 1)[-1] for item in queue.get("computeEnvironmentOrder") or []]
    total: float | None = 0.0
    for name in names:
        row = repo.get_named("ce", name)
        doc = row["doc"] if row else {}
        cap = (
            doc.get("unmanagedvCpus")
            if doc.get("type") == "UNMANAGED"
            else (doc.get("computeResources") or {}).get("maxvCpus")
        )
        total = None if cap is None or total is None else total + cap
    used = sum(a["vcpus"] for a in repo.active_usage() if a["compute_environment"] in names)
    return total, used
