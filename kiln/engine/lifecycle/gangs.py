"""A running multi-node parallel job follows its main node (https://docs.aws.amazon.com/batch/latest/userguide/multi-node-parallel-jobs.html).

The scheduler places an MNP job's nodes together (one decision for the whole gang, see
`scheduling.plan`), and every tick with node events it calls `sync`: the job becomes RUNNING when
its main node does, and when the main node ends the job takes its result. The other nodes are
then stopped. If the job's `retryStrategy` grants another attempt, the job goes back to RUNNABLE
only once every node has stopped (their capacity is free), and its nodes wait again for the next
gang placement. A node that ends on its own does not affect the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.engine.lifecycle.states import ACTIVE, FINISHED, TERMINAL, Status
from kiln.engine.lifecycle.stops import restart_gang, stop_running
from kiln.engine.lifecycle.transitions import Move, transition, transition_each
from kiln.engine.retry import AttemptOutcome, should_retry
from kiln.executors.base import ESSENTIAL_CONTAINER_EXITED, TIMEOUT_STATUS_REASON
from kiln.store.records import Attempt, Job
from kiln.store.repository import Repository

MAIN_NODE_EXITED = "Stopped: the main node (#{main}) of its multi-node parallel job exited"


def main_node(job: Job) -> int:
    return int(job.spec["nodeProperties"]["mainNode"])


def outcome(job: Job, main: Job, last_attempt: Attempt | None) -> tuple[Status, str | None]:
    """The MNP job's next state once its main node has ended: its result, a retry, or a failure.

    Pure. Only a main-node failure consumes an attempt (AWS); a terminated or timed-out job is
    never retried."""
    if main.status == Status.SUCCEEDED.value:
        return Status.SUCCEEDED, ESSENTIAL_CONTAINER_EXITED
    if job.is_terminated:
        return Status.FAILED, job.spec.get("stopReason") or main.status_reason
    if last_attempt is not None and last_attempt.status_reason != TIMEOUT_STATUS_REASON:
        # An absent reason matches evaluateOnExit patterns as empty text (`retry.matches`).
        attempt = AttemptOutcome(last_attempt.status_reason, last_attempt.reason, last_attempt.exit_code)
        if should_retry(job.spec.get("retryStrategy"), job.attempt_count, attempt):
            return Status.RUNNABLE, None
    return Status.FAILED, main.status_reason


def sync(repo: Repository, now: int, job_ids: Sequence[str] | None) -> bool:
    """Move STARTING/RUNNING MNP jobs (those in `job_ids`, or all) along with their main node.

    Returns True when nodes were asked to stop (the scheduler then delivers the signals)."""
    stopping = False
    for job in repo.jobs.multinode([s.value for s in ACTIVE], job_ids):
        nodes = repo.jobs.children(job.id)  # in node order
        main = nodes[main_node(job)]
        if main.started_at is not None and job.status == Status.STARTING.value:
            transition_each(repo, Status.RUNNING, [Move(job.id, main.started_at)])
        if Status(main.status) not in TERMINAL:
            continue
        last = repo.attempts.of_jobs([main.id])[main.id]
        target, reason = outcome(job, main, last[-1] if last else None)
        stopping |= _stop_others(repo, nodes, main_node(job))
        if target is Status.RUNNABLE:
            _retry_when_stopped(repo, job, nodes, now)
        else:
            transition(repo, [job.id], target, reason, now, only_from=ACTIVE)
    return stopping


def _stop_others(repo: Repository, nodes: list[Job], main: int) -> bool:
    live = [node for node in nodes if Status(node.status) in ACTIVE and not node.is_terminated]
    stop_running(repo, live, MAIN_NODE_EXITED.format(main=main))
    return bool(live)


def _retry_when_stopped(repo: Repository, job: Job, nodes: list[Job], now: int) -> None:
    if any(Status(node.status) not in TERMINAL for node in nodes):
        return  # stopping nodes still hold their capacity: the next gang waits for them
    restart_gang(repo, job, nodes, now)


def fail_stranded(repo: Repository, now: int) -> bool:
    """Nodes of an MNP job that ended before placing them (cancelled, a dependency failed, a
    time limit) end with it, with its reason."""
    stranded = repo.jobs.stranded_nodes(Status.SUBMITTED.value, FINISHED)
    by_reason: dict[str | None, list[str]] = {}
    for node_id, reason in stranded:
        by_reason.setdefault(reason, []).append(node_id)
    for reason, ids in by_reason.items():
        transition(repo, ids, Status.FAILED, reason, now, only_from=frozenset({Status.SUBMITTED}))
    return bool(stranded)
