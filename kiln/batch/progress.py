"""Moving jobs along before and after they run: dependencies, array parents, attempt outcomes.

Each function takes a repository inside a transaction and decides with `status.transition`; the
scheduler calls them every tick. They are idempotent: running one twice changes nothing more.
"""

from __future__ import annotations

from typing import Any

from kiln.batch.retry import AttemptOutcome, should_retry
from kiln.batch.status import (
    ARRAY_CHILD_FAILED,
    DEPENDENT_JOB_FAILED,
    TERMINAL,
    Status,
    transition,
)
from kiln.executors.base import ESSENTIAL_CONTAINER_EXITED, AttemptExited
from kiln.store.repository import Repository

Row = dict[str, Any]


def _dependency_state(repo: Repository, job_ids: list[str]) -> dict[str, str]:
    """Per job: 'ready' (all dependencies succeeded), 'failed' (one failed) or 'waiting'."""
    deps = repo.dependencies_of(job_ids)
    targets = sorted({dep["depends_on"] for rows in deps.values() for dep in rows})
    statuses = repo.statuses_of(targets)
    state: dict[str, str] = {}
    for job_id, rows in deps.items():
        seen = [statuses.get(dep["depends_on"], Status.SUCCEEDED.value) for dep in rows]
        if any(s == Status.FAILED.value for s in seen):
            state[job_id] = "failed"
        elif all(s == Status.SUCCEEDED.value for s in seen):
            state[job_id] = "ready"
        else:
            state[job_id] = "waiting"
    return state


def _release_children(repo: Repository, parent_id: str, now: int) -> None:
    """An array parent's dependencies are met: children start their own lives."""
    children = [child["id"] for child in repo.children(parent_id, [Status.SUBMITTED.value])]
    state = _dependency_state(repo, children)
    transition(repo, [j for j in children if state[j] != "ready"], Status.PENDING, None, now)
    transition(repo, [j for j in children if state[j] == "ready"], Status.RUNNABLE, None, now)


def advance_submitted(repo: Repository, now: int) -> bool:
    """SUBMITTED top-level jobs go to PENDING (dependencies or array) or RUNNABLE."""
    jobs = repo.jobs_with_status([Status.SUBMITTED.value], limit=1000, top_level=True)
    if not jobs:
        return False
    state = _dependency_state(repo, [job["id"] for job in jobs])
    for job in jobs:
        has_deps = state[job["id"]] != "ready" or job["array_size"] is not None
        transition(repo, [job["id"]], Status.PENDING if has_deps else Status.RUNNABLE, None, now)
    return True


def advance_pending(repo: Repository, now: int) -> bool:
    """PENDING jobs whose dependencies finished: run (or release children), or fail and cascade."""
    pending = repo.jobs_with_status([Status.PENDING.value])
    if not pending:
        return False
    state = _dependency_state(repo, [job["id"] for job in pending])
    moved = False
    for job in pending:
        verdict = state[job["id"]]
        if verdict == "failed":
            moved |= _fail_dependent(repo, job, now)
        elif verdict == "ready" and job["array_size"] is not None:
            if repo.children(job["id"], [Status.SUBMITTED.value]):
                _release_children(repo, job["id"], now)
                moved = True
        elif verdict == "ready":
            moved |= bool(transition(repo, [job["id"]], Status.RUNNABLE, None, now))
    return moved


def _fail_dependent(repo: Repository, job: Row, now: int) -> bool:
    ids = [job["id"]]
    if job["array_size"] is not None:
        ids += [child["id"] for child in repo.children(job["id"], [Status.SUBMITTED.value, Status.PENDING.value])]
    return bool(transition(repo, ids, Status.FAILED, DEPENDENT_JOB_FAILED, now))


def finish_array_parents(repo: Repository, now: int) -> bool:
    """A PENDING array parent ends once every child is terminal: SUCCEEDED iff all succeeded."""
    pending = repo.jobs_with_status([Status.PENDING.value], top_level=True)
    parents = [job for job in pending if job["array_size"] is not None]
    counts = repo.status_counts([job["id"] for job in parents])
    moved = False
    for parent in parents:
        summary = counts[parent["id"]]
        done = sum(summary.get(s.value, 0) for s in TERMINAL)
        if done < parent["array_size"]:
            continue
        if summary.get(Status.FAILED.value, 0) == 0:
            moved |= bool(transition(repo, [parent["id"]], Status.SUCCEEDED, None, now))
        else:
            reason = parent["spec"].get("stopReason") or ARRAY_CHILD_FAILED
            moved |= bool(transition(repo, [parent["id"]], Status.FAILED, reason, now))
    return moved


def record_exit(repo: Repository, job: Row, attempt: Row, event: AttemptExited, retry_strategy: Any) -> None:
    """Write the attempt's outcome and decide the job's next state (done, retried or failed)."""
    repo.update_attempt(
        attempt["task_id"],
        {"active": False, "stopped_at": event.at_ms, "exit_code": event.exit_code,
         "reason": event.reason, "status_reason": event.status_reason,
         "started_at": attempt["started_at"] or (event.at_ms if event.started else None)},
    )  # fmt: skip
    if event.exit_code == 0 and not (event.terminated or event.timed_out):
        transition(repo, [job["id"]], Status.SUCCEEDED, ESSENTIAL_CONTAINER_EXITED, event.at_ms)
        return
    stop_reason = job["spec"].get("stopReason")
    if event.terminated or job["is_terminated"]:
        transition(repo, [job["id"]], Status.FAILED, stop_reason or event.status_reason, event.at_ms)
        return
    outcome = AttemptOutcome(event.status_reason, event.reason, event.exit_code)
    if not event.timed_out and should_retry(retry_strategy, job["attempt_count"], outcome):
        transition(repo, [job["id"]], Status.RUNNABLE, None, event.at_ms)
    else:
        transition(repo, [job["id"]], Status.FAILED, event.status_reason, event.at_ms)
