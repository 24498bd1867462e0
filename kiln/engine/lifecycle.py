"""A job's lifecycle: the one writer of its `status`, `statusReason` and stop flags.

Every change of `status`/`statusReason` goes through `transition` (or `transition_each`, its
batched form); the flags DescribeJobs shows as `isCancelled`/`isTerminated`, with the reason a
stop will end the job with, are written only by `cancel`, `terminate`, `expire`, `stop_running`
and `restart_gang` here. Callers say what happened (a user cancelled, a time limit passed, a
gang's main node ended) and this module decides which jobs move and how, by their state.

The table follows AWS Batch (https://docs.aws.amazon.com/batch/latest/userguide/job_states.html);
an array parent only ever shows SUBMITTED, PENDING, SUCCEEDED and FAILED. A transition names the
states it may leave, so a late or duplicate event (an exit reported for a job a user already
terminated) changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.store.repository import Repository


class Status(StrEnum):
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNABLE = "RUNNABLE"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED})
ACTIVE = frozenset({Status.STARTING, Status.RUNNING})
NOT_STARTED = frozenset({Status.SUBMITTED, Status.PENDING, Status.RUNNABLE})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SUBMITTED: frozenset({Status.PENDING, Status.RUNNABLE, Status.FAILED}),
    # PENDING -> SUCCEEDED only for an array parent whose children all succeeded.
    Status.PENDING: frozenset({Status.RUNNABLE, Status.FAILED, Status.SUCCEEDED}),
    Status.RUNNABLE: frozenset({Status.STARTING, Status.FAILED}),
    Status.STARTING: frozenset({Status.RUNNING, Status.RUNNABLE, Status.FAILED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.RUNNABLE, Status.FAILED}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
}

# Reasons Kiln writes itself (exact AWS texts where AWS has one).
DEPENDENT_JOB_FAILED = "Dependent Job failed"
ARRAY_CHILD_FAILED = "Array Child Job failed"


def sources_of(target: Status) -> frozenset[Status]:
    """States from which `target` may be entered."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


def transition(
    repo: Repository,
    job_ids: Sequence[str],
    target: Status,
    reason: str | None,
    now_ms: int,
    *,
    only_from: frozenset[Status] | None = None,
) -> list[str]:
    """Move jobs to `target` where the table allows it; returns the ids that moved.

    Timestamps follow the model: `runnable_at` (queue order) on entering RUNNABLE, `startedAt` on
    RUNNING, `stoppedAt` on a terminal state.
    """
    allowed = sources_of(target) if only_from is None else sources_of(target) & only_from
    values: dict[str, object] = {"status": target.value, "status_reason": reason}
    if target is Status.RUNNABLE:
        values["runnable_at"] = now_ms
    elif target is Status.RUNNING:
        values["started_at"] = now_ms
    elif target in TERMINAL:
        values["stopped_at"] = now_ms
    return repo.update_jobs(job_ids, [s.value for s in allowed], values)


@dataclass(frozen=True)
class Move:
    """One job's move in a batch: when, why, and any other columns that change with it."""

    job_id: str
    at_ms: int
    reason: str | None = None
    values: Mapping[str, object] = field(default_factory=dict)


def transition_each(
    repo: Repository,
    target: Status,
    moves: Sequence[Move],
    *,
    only_from: frozenset[Status] | None = None,
    through_running: bool = False,
) -> None:
    """`transition` for many jobs in one statement (group commit), each with its own time and reason.

    With `through_running`, a STARTING job passes through RUNNING on its way to `target` (each
    move's values carry its `started_at`): a job whose start and end are recorded in the same
    transaction costs one write, as no reader can see the state in between.
    """
    allowed = sources_of(target) if only_from is None else sources_of(target) & only_from
    if through_running and target in TRANSITIONS[Status.RUNNING]:
        allowed |= sources_of(Status.RUNNING) & {Status.STARTING}
    time_column = _TIME_COLUMN.get(target)
    rows = []
    for move in moves:
        row: dict[str, object] = {"_id": move.job_id, "status": target.value, "status_reason": move.reason}
        row.update(move.values)
        if time_column is not None:
            row[time_column] = move.at_ms
        rows.append(row)
    repo.update_jobs_each(rows, [s.value for s in allowed])


_TIME_COLUMN = {
    Status.RUNNABLE: "runnable_at",
    Status.RUNNING: "started_at",
    Status.SUCCEEDED: "stopped_at",
    Status.FAILED: "stopped_at",
}


def set_reason(repo: Repository, job_ids: Sequence[str], in_status: Status, reason: str | None) -> list[str]:
    """Change only the reason of jobs staying in `in_status` (RUNNABLE capacity diagnostics)."""
    return repo.update_jobs(job_ids, [in_status.value], {"status_reason": reason})


def restart_nodes(repo: Repository, node_ids: Sequence[str]) -> list[str]:
    """A retried multi-node parallel job's nodes wait again (SUBMITTED) for the job's next placement.

    The one way out of a terminal state, and only for node jobs (`<job>#<i>`): AWS gives every node
    of an MNP job a new attempt when the job is retried. A node leaves SUCCEEDED/FAILED only, so
    one whose attempt still runs stays put; the terminate flag set when the main node ended is cleared.
    """
    ids = [job_id for job_id in node_ids if "#" in job_id]
    values = {"status": Status.SUBMITTED.value, "status_reason": None, "started_at": None, "stopped_at": None,
              "is_terminated": False}  # fmt: skip
    return repo.update_jobs(ids, [s.value for s in TERMINAL], values)


def placed(repo: Repository, moves: Sequence[Move]) -> None:
    """The scheduler placed these RUNNABLE jobs (each move's values carry the new attempt count)."""
    transition_each(repo, Status.STARTING, moves, only_from=frozenset({Status.RUNNABLE}))


def running(repo: Repository, moves: Sequence[Move]) -> None:
    """Their attempts' processes are up (executor events): STARTING jobs are RUNNING."""
    transition_each(repo, Status.RUNNING, moves, only_from=frozenset({Status.STARTING}))


def release_gang_nodes(repo: Repository, node_ids: Sequence[str], now_ms: int) -> None:
    """A multi-node job's gang was placed: its waiting (SUBMITTED) nodes become RUNNABLE, to be
    moved to STARTING in the same transaction."""
    transition(repo, node_ids, Status.RUNNABLE, None, now_ms, only_from=frozenset({Status.SUBMITTED}))


def diagnose(repo: Repository, job_id: str, reason: str | None) -> None:
    """Why a RUNNABLE job cannot be placed (AWS's capacity diagnostics), or None once it can."""
    set_reason(repo, [job_id], Status.RUNNABLE, reason)


class Stop(StrEnum):
    """Who stops a job, as the flag DescribeJobs shows: a cancel or a terminate."""

    CANCEL = "is_cancelled"
    TERMINATE = "is_terminated"


JobRow = Mapping[str, Any]


def cancel(repo: Repository, jobs: Sequence[JobRow], reason: str, now_ms: int) -> None:
    """CancelJob: jobs not yet STARTING fail with `reason`; running ones are left alone (as AWS)."""
    _stop_not_started(repo, [job for job in jobs if Status(job["status"]) in NOT_STARTED], reason, Stop.CANCEL, now_ms)


def terminate(repo: Repository, jobs: Sequence[JobRow], reason: str, now_ms: int) -> None:
    """TerminateJob: like cancel for jobs not started; running attempts (an array's or a
    multi-node job's included) are flagged, and the scheduler stops them with this reason."""
    _stop_not_started(
        repo, [job for job in jobs if Status(job["status"]) in NOT_STARTED], reason, Stop.TERMINATE, now_ms
    )
    running = [job for job in jobs if Status(job["status"]) in ACTIVE]
    for job in jobs:  # a PENDING array parent may have running children: terminate reaches them too
        if job["array_size"] is not None or job["num_nodes"] is not None:
            running += repo.children(job["id"], [s.value for s in ACTIVE])
    stop_running(repo, running, reason)


def expire(repo: Repository, job_ids: Sequence[str], stop: Stop, reason: str, now_ms: int) -> bool:
    """A job-state time limit passed: RUNNABLE jobs fail with `reason`, flagged as `stop` says."""
    moved = transition(repo, job_ids, Status.FAILED, reason, now_ms, only_from=frozenset({Status.RUNNABLE}))
    for job_id in moved:
        repo.update_job_fields(job_id, {stop.value: True})
    return bool(moved)


def stop_running(repo: Repository, jobs: Sequence[JobRow], reason: str) -> None:
    """Flag running jobs for termination: the scheduler signals their attempts, whose exits then
    end the jobs with `reason` (their `stopReason`), never retried."""
    for job in jobs:
        repo.update_job_fields(job["id"], {Stop.TERMINATE.value: True, "spec": {**job["spec"], "stopReason": reason}})


def restart_gang(repo: Repository, job: JobRow, nodes: Sequence[JobRow], now_ms: int) -> None:
    """A retried multi-node job whose nodes have all stopped waits (RUNNABLE) for its next gang;
    its nodes wait with it, their stop reasons cleared."""
    for node in nodes:
        spec = {key: value for key, value in node["spec"].items() if key != "stopReason"}
        repo.update_job_fields(node["id"], {"spec": spec})
    restart_nodes(repo, [node["id"] for node in nodes])
    transition(repo, [job["id"]], Status.RUNNABLE, None, now_ms, only_from=ACTIVE)


def _stop_not_started(repo: Repository, jobs: Sequence[JobRow], reason: str, stop: Stop, now_ms: int) -> None:
    """Fail jobs that never started. For an array parent, fail its children that never started;
    the parent itself ends (with `reason`) once every child is done, as on AWS."""
    ids = [job["id"] for job in jobs if job["array_size"] is None]
    for mnp in (job for job in jobs if job["num_nodes"] is not None):  # its nodes wait with it, and end with it
        ids += [node["id"] for node in repo.children(mnp["id"], [Status.SUBMITTED.value])]
    for parent in (job for job in jobs if job["array_size"] is not None):
        ids += [child["id"] for child in repo.children(parent["id"], [s.value for s in NOT_STARTED])]
        repo.update_job_fields(parent["id"], {stop.value: True, "spec": {**parent["spec"], "stopReason": reason}})
    for job_id in transition(repo, ids, Status.FAILED, reason, now_ms, only_from=NOT_STARTED):
        repo.update_job_fields(job_id, {stop.value: True})
