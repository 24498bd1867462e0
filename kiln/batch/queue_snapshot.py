"""GetJobQueueSnapshot: the front of a queue as the scheduler will take it, and what the queue holds.

"Why is my job not starting?" The answer must come from the scheduler's own ordering, not a copy:
the jobs listed are `share_queue.runnable_candidates` for the queue (FIFO for a plain queue, fair
share for a queue with a policy, priorities and compute reservation included), the same call the
scheduler's tick makes, with no capacity bound. A job's `earliestTimeAtPosition` is when it became
RUNNABLE: Kiln does not record when a job moved up the queue
(https://docs.aws.amazon.com/batch/latest/APIReference/API_GetJobQueueSnapshot.html).
"""

from __future__ import annotations

from typing import Any

from kiln.batch.environments import get_job_queue
from kiln.clock import now_ms
from kiln.context import Context
from kiln.engine.share_queue import runnable_candidates

FRONT_OF_QUEUE = 100  # AWS: the first 100 RUNNABLE jobs
TOP_SHARES = 20
_NO_BOUND_VCPUS = float("inf")
_NO_BOUND_MIB = 2**62


def get_job_queue_snapshot(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    queue = get_job_queue(ctx, params["jobQueue"])
    front = runnable_candidates(ctx.repo, queue, FRONT_OF_QUEUE, _NO_BOUND_VCPUS, _NO_BOUND_MIB)
    now = now_ms()
    jobs = [
        {"jobArn": ctx.arns.job(job.id), "earliestTimeAtPosition": job.runnable_at or job.created_at or now}
        for job in front
    ]
    in_use = ctx.repo.attempts.vcpus_in_use_by_share(queue["jobQueueArn"])
    utilization: dict[str, Any] = {
        "totalCapacityUsage": [{"capacityUnit": "VCPU", "quantity": float(sum(in_use.values()))}],
        "lastUpdatedAt": now,
    }
    if queue.get("schedulingPolicyArn"):
        shares = sorted(((share, vcpus) for share, vcpus in in_use.items() if share is not None), key=lambda s: -s[1])
        utilization["fairshareUtilization"] = {
            "activeShareCount": len(shares),
            "topCapacityUtilization": [
                {"shareIdentifier": share, "capacityUsage": [{"capacityUnit": "VCPU", "quantity": vcpus}]}
                for share, vcpus in shares[:TOP_SHARES]
            ],
        }
    return {"frontOfQueue": {"jobs": jobs, "lastUpdatedAt": now}, "queueUtilization": utilization}
