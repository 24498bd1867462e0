"""Moving jobs along before and after they run: dependencies, array parents, attempt outcomes.

Each function takes a repository inside a transaction and decides with `transitions.transition`; the
scheduler calls them every tick. They are idempotent: running one twice changes nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiln.engine.lifecycle.states import ARRAY_CHILD_FAILED, DEPENDENT_JOB_FAILED, FINISHED, TERMINAL, Status
from kiln.engine.lifecycle.stops import came_too_late
from kiln.engine.lifecycle.transitions import Move, transition, transition_each
from kiln.engine.retry import AttemptOutcome, should_retry
from kiln.executors.base import ESSENTIAL_CONTAINER_EXITED, AttemptExited
from kiln.store.records import Attempt, Job
from kiln.store.repository import Repository


def _dependency_state(repo: Repository, job_ids: list[str]) -> dict[str, str]:
    """Per job: 'ready' (all dependencies succeeded), 'failed' (one failed) or 'waiting'."""
    deps = repo.jobs.dependencies_of(job_ids)
    targets = sorted({dep.depends_on for edges in deps.values() for dep in edges})
    statuses = repo.jobs.statuses_of(targets)
    state: dict[str, str] = {}
    for job_id, edges in deps.items():
        seen = [statuses.get(dep.depends_on, Status.SUCCEEDED.value) for dep in edges]
        if any(s == Status.FAILED.value for s in seen):
            state[job_id] = "failed"
        elif all(s == Status.SUCCEEDED.value for s in seen):
            state[job_id] = "ready"
        else:
            state[job_id] = "waiting"
    return state


def _release_children(repo: Repository, parent_id: str, now: int) -> None:
    """An array parent's dependencies are met: children start their own lives."""
    children = [child.id for child in repo.jobs.children(parent_id, [Status.SUBMITTED.value])]
    state = _dependency_state(repo, children)
    transition(repo, [j for j in children if state[j] != "ready"], Status.PENDING, None, now)
    transition(repo, [j for j in children if state[j] == "ready"], Status.RUNNABLE, None, now)


def advance_submitted(repo: Repository, now: int) -> bool:
    """SUBMITTED top-level jobs go to PENDING (dependencies or array) or RUNNABLE."""
    jobs = repo.jobs.with_status([Status.SUBMITTED.value], limit=1000, top_level=True)
    if not jobs:
        return False
    state = _dependency_state(repo, [job.id for job in jobs])
    waits = {job.id: state[job.id] != "ready" or job.array_size is not None for job in jobs}
    transition(repo, [job_id for job_id, waiting in waits.items() if waiting], Status.PENDING, None, now)
    transition(repo, [job_id for job_id, waiting in waits.items() if not waiting], Status.RUNNABLE, None, now)
    return True


def advance_pending(repo: Repository, now: int) -> bool:
    """PENDING jobs whose dependencies finished: run (or release children), or fail and cascade."""
    pending = repo.jobs.with_status([Status.PENDING.value])
    if not pending:
        return False
    state = _dependency_state(repo, [job.id for job in pending])
    moved = False
    for job in pending:
        verdict = state[job.id]
        if verdict == "failed":
            moved |= _fail_dependent(repo, job, now)
        elif verdict == "ready" and job.array_size is not None:
            if repo.jobs.children(job.id, [Status.SUBMITTED.value]):
                _release_children(repo, job.id, now)
                moved = True
        elif verdict == "ready":
            moved |= bool(transition(repo, [job.id], Status.RUNNABLE, None, now))
    return moved


def _fail_dependent(repo: Repository, job: Job, now: int) -> bool:
    ids = [job.id]
    if job.array_size is not None:
        ids += [child.id for child in repo.jobs.children(job.id, [Status.SUBMITTED.value, Status.PENDING.value])]
    return bool(transition(repo, ids, Status.FAILED, DEPENDENT_JOB_FAILED, now))


def finish_array_parents(repo: Repository, now: int, only: Sequence[str] | None = None) -> bool:
    """A PENDING array parent ends once every child is terminal: SUCCEEDED iff all succeeded.

    `only` limits the check to parents whose children just finished (the scheduler's hot path);
    an index on (parent_id, status) makes "any child still unfinished?" one lookup.
    """
    if only is None:
        pending = repo.jobs.with_status([Status.PENDING.value], top_level=True)
    else:
        pending = [job for job in repo.jobs.get_many(only) if job.status == Status.PENDING.value]
    parents = [  # (parent, array size)
        (job, job.array_size)
        for job in pending
        if job.array_size is not None and not repo.jobs.has_unfinished_children(job.id, FINISHED)
    ]
    counts = repo.jobs.status_counts([parent.id for parent, _ in parents])
    moved = False
    for parent, size in parents:
        summary = counts[parent.id]
        done = sum(summary.get(s.value, 0) for s in TERMINAL)
        if done < size:
            continue
        if summary.get(Status.FAILED.value, 0) == 0:
            moved |= bool(transition(repo, [parent.id], Status.SUCCEEDED, None, now))
        else:
            reason = parent.spec.get("stopReason") or ARRAY_CHILD_FAILED
            moved |= bool(transition(repo, [parent.id], Status.FAILED, reason, now))
    return moved


@dataclass(frozen=True)
class Exit:
    """An attempt that ended, with what deciding the job's next state needs."""

    job: Job
    attempt: Attempt
    event: AttemptExited
    retry_strategy: Any


def exit_decision(job: Job, event: AttemptExited, retry_strategy: Any) -> tuple[Status, str | None]:
    """Done, retried or failed (and why), from the attempt's outcome: AWS's rules, no I/O."""
    if event.exit_code == 0 and not (event.terminated or event.timed_out):
        return Status.SUCCEEDED, ESSENTIAL_CONTAINER_EXITED
    if event.terminated or job.is_terminated:
        return Status.FAILED, job.spec.get("stopReason") or event.status_reason
    outcome = AttemptOutcome(event.status_reason, event.reason, event.exit_code)
    # A node of a multi-node parallel job is never retried alone: its job is (kiln/engine/lifecycle/gangs.py).
    is_node = job.node_index is not None
    if not event.timed_out and not is_node and should_retry(retry_strategy, job.attempt_count, outcome):
        return Status.RUNNABLE, None
    return Status.FAILED, event.status_reason


def _started_at(e: Exit) -> int | None:
    if e.attempt.started_at is not None:
        return e.attempt.started_at
    if not e.event.started:
        return None
    return e.event.started_at if e.event.started_at is not None else e.event.at_ms


def record_exits(repo: Repository, exits: Sequence[Exit]) -> dict[str, Status]:
    """Write every attempt's outcome and move each job on, in a few statements for the batch.

    Returns the job id -> new status decided for each exit.
    """
    started = {e.attempt.task_id: _started_at(e) for e in exits}
    repo.attempts.update_each(
        [
            {"_task_id": e.attempt.task_id, "active": False, "stopped_at": e.event.at_ms,
             "exit_code": e.event.exit_code, "reason": e.event.reason, "status_reason": e.event.status_reason,
             "started_at": started[e.attempt.task_id]}
            for e in exits
        ]
    )  # fmt: skip
    # A job whose attempt ran passes through RUNNING, as every AWS job that ran does, also when its
    # start was not recorded on its own (it ended in the same batch, or while the server was down).
    decided: dict[str, Status] = {}
    moves: dict[tuple[Status, bool], list[Move]] = {}
    for e in exits:
        target, reason = exit_decision(e.job, e.event, e.retry_strategy)
        decided[e.job.id] = target
        ran = e.event.started
        values = {"started_at": started[e.attempt.task_id] or e.event.at_ms} if ran else {}
        moves.setdefault((target, ran), []).append(Move(e.job.id, e.event.at_ms, reason, values))
    for (target, ran), batch in moves.items():
        transition_each(repo, target, batch, through_running=ran)
    came_too_late(repo, [e.job for e in exits if e.job.is_terminated and decided[e.job.id] is Status.SUCCEEDED])
    return decided
