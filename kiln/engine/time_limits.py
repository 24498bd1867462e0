"""A queue's `jobStateTimeLimitActions`: fail jobs stuck in RUNNABLE for a known reason.

AWS applies an action to the job at the *head* of the queue once it has been blocked in RUNNABLE
for `maxTimeSeconds` by the action's `reason` (one of the `CAPACITY:`/`MISCONFIGURATION:` codes of
https://docs.aws.amazon.com/batch/latest/userguide/job_stuck_in_runnable.html). Kiln keeps a RUNNABLE diagnostic per job rather than per queue head, so
it applies the rule to every job: a job RUNNABLE for at least `maxTimeSeconds` (counted from when
it last became RUNNABLE) whose current `statusReason` matches the action's `reason` goes to FAILED
with `Canceled by JobStateTimeLimit action due to reason: <reason>`. CANCEL and TERMINATE mean the
same for a job that never started; they differ only in the flag recorded (`isCancelled` /
`isTerminated`). Kiln itself writes the two MISCONFIGURATION diagnostics, `CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY`
only for waiting multi-node gangs, and its own `CONSUMABLE_RESOURCE:` codes for jobs waiting for a
consumable resource (which AWS also lets a time limit end).

`decide` is pure; `enforce` reads the queues, calls it and applies the result through `lifecycle.expire`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.engine import lifecycle
from kiln.engine.lifecycle import Status
from kiln.store.records import Waiting
from kiln.store.repository import Repository

CANCELED_BY_ACTION = "Canceled by JobStateTimeLimit action due to reason: {reason}"
# Jobs looked at per queue and sweep; the rest wait for the next sweep (a second later).
ENFORCED_PER_QUEUE = 1000


@dataclass(frozen=True)
class Expired:
    job_id: str
    action: str  # CANCEL | TERMINATE
    status_reason: str  # what the job's statusReason becomes


def reason_matches(action_reason: str, status_reason: str | None) -> bool:
    """The action names a diagnostic by its code (`MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT`) or
    by its full text; a job's reason is `<code> - <explanation>`."""
    if not status_reason:
        return False
    wanted = action_reason.strip()
    return status_reason == wanted or status_reason.split(" - ", 1)[0].strip() == wanted


def decide(jobs: Sequence[Waiting], actions: Mapping[str, Sequence[Mapping[str, Any]]], now_ms: int) -> list[Expired]:
    """Which jobs an action fails now. `actions` maps a queue ARN to its jobStateTimeLimitActions;
    the first action (in list order) that applies to a job decides."""
    expired: list[Expired] = []
    for job in jobs:
        for action in actions.get(job.queue_arn, ()):
            if action.get("state", "RUNNABLE") != Status.RUNNABLE.value:
                continue
            old_enough = now_ms - job.runnable_at >= int(action["maxTimeSeconds"]) * 1000
            if old_enough and reason_matches(action["reason"], job.status_reason):
                reason = CANCELED_BY_ACTION.format(reason=action["reason"])
                expired.append(Expired(job.id, action["action"], reason))
                break
    return expired


def enforce(repo: Repository, now_ms: int) -> bool:
    """Apply every queue's actions (scheduler sweep); returns whether a job moved."""
    actions = {
        queue.doc["jobQueueArn"]: queue.doc["jobStateTimeLimitActions"]
        for queue in repo.queues.all()
        if queue.doc.get("jobStateTimeLimitActions")
    }
    waiting: list[Waiting] = []
    for queue_arn, queue_actions in actions.items():
        shortest = min(int(action["maxTimeSeconds"]) for action in queue_actions)
        cutoff = now_ms - shortest * 1000
        waiting += repo.jobs.diagnosed_waiting(queue_arn, Status.RUNNABLE.value, cutoff, ENFORCED_PER_QUEUE)
    groups: dict[tuple[str, str], list[str]] = {}
    for item in decide(waiting, actions, now_ms):
        groups.setdefault((item.action, item.status_reason), []).append(item.job_id)
    moved = False
    for (action, reason), job_ids in groups.items():
        stop = lifecycle.Stop.TERMINATE if action == "TERMINATE" else lifecycle.Stop.CANCEL
        moved |= lifecycle.expire(repo, job_ids, stop, reason, now_ms)
    return moved
