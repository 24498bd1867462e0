"""Stopping jobs: the only writer of the flags DescribeJobs shows as `isCancelled`/`isTerminated`
and of the reason a stop ends a job with. Callers say what happened (a user cancelled or
terminated, a time limit passed, a gang's main node ended); this decides, by each job's state,
which jobs fail now and which attempts the scheduler must stop."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from kiln.engine.lifecycle.states import ACTIVE, NOT_STARTED, Status
from kiln.engine.lifecycle.transitions import restart_nodes, transition
from kiln.store.records import Document, Job
from kiln.store.repository import Repository


class Stop(StrEnum):
    """Who stops a job, as the flag DescribeJobs shows: a cancel or a terminate."""

    CANCEL = "is_cancelled"
    TERMINATE = "is_terminated"


def cancel(repo: Repository, jobs: Sequence[Job], reason: str, now_ms: int) -> None:
    """CancelJob: jobs not yet STARTING fail with `reason`; running ones are left alone (as AWS)."""
    _stop_not_started(repo, [job for job in jobs if Status(job.status) in NOT_STARTED], reason, Stop.CANCEL, now_ms)


def terminate(repo: Repository, jobs: Sequence[Job], reason: str, now_ms: int) -> None:
    """TerminateJob: like cancel for jobs not started; running attempts (an array's or a
    multi-node job's included) are flagged, and the scheduler stops them with this reason."""
    _stop_not_started(repo, [job for job in jobs if Status(job.status) in NOT_STARTED], reason, Stop.TERMINATE, now_ms)
    running = [job for job in jobs if Status(job.status) in ACTIVE]
    for job in jobs:  # a PENDING array parent may have running children: terminate reaches them too
        if job.array_size is not None or job.num_nodes is not None:
            running += repo.jobs.children(job.id, [s.value for s in ACTIVE])
    stop_running(repo, running, reason)


def expire(repo: Repository, job_ids: Sequence[str], stop: Stop, reason: str, now_ms: int) -> bool:
    """A job-state time limit passed: RUNNABLE jobs fail with `reason`, flagged as `stop` says."""
    moved = transition(repo, job_ids, Status.FAILED, reason, now_ms, only_from=frozenset({Status.RUNNABLE}))
    repo.jobs.update(moved, None, {stop.value: True})
    return bool(moved)


def stop_running(repo: Repository, jobs: Sequence[Job], reason: str) -> None:
    """Flag running jobs for termination: the scheduler signals their attempts, whose exits then
    end the jobs with `reason` (their `stopReason`), never retried."""
    for job in jobs:
        _flag(repo, job, Stop.TERMINATE, reason)


def came_too_late(repo: Repository, jobs: Sequence[Job]) -> None:
    """Jobs flagged for termination that succeeded anyway (their process exited 0 before the
    signal reached it): the terminate stopped nothing, so they are not shown as terminated."""
    for job in jobs:
        repo.jobs.update_fields(job.id, {Stop.TERMINATE.value: False, "spec": _without_stop_reason(job)})


def _without_stop_reason(job: Job) -> Document:
    """The job's spec without the reason a stop would have ended it with."""
    return {key: value for key, value in job.spec.items() if key != "stopReason"}


def _flag(repo: Repository, job: Job, stop: Stop, reason: str) -> None:
    """Flag `job` as stopped by `stop`, and keep `reason` as the one its end will carry."""
    repo.jobs.update_fields(job.id, {stop.value: True, "spec": {**job.spec, "stopReason": reason}})


def restart_gang(repo: Repository, job: Job, nodes: Sequence[Job], now_ms: int) -> None:
    """A retried multi-node job whose nodes have all stopped waits (RUNNABLE) for its next gang;
    its nodes wait with it, their stop reasons cleared."""
    for node in nodes:
        repo.jobs.update_fields(node.id, {"spec": _without_stop_reason(node)})
    restart_nodes(repo, [node.id for node in nodes], now_ms)
    transition(repo, [job.id], Status.RUNNABLE, None, now_ms, only_from=ACTIVE)


def _stop_not_started(repo: Repository, jobs: Sequence[Job], reason: str, stop: Stop, now_ms: int) -> None:
    """Fail jobs that never started. For an array parent, fail its children that never started;
    the parent itself ends (with `reason`) once every child is done, as on AWS."""
    ids = [job.id for job in jobs if job.array_size is None]
    for mnp in (job for job in jobs if job.num_nodes is not None):  # its nodes wait with it, and end with it
        ids += [node.id for node in repo.jobs.children(mnp.id, [Status.SUBMITTED.value])]
    for parent in (job for job in jobs if job.array_size is not None):
        ids += [child.id for child in repo.jobs.children(parent.id, [s.value for s in NOT_STARTED])]
        _flag(repo, parent, stop, reason)
    failed = transition(repo, ids, Status.FAILED, reason, now_ms, only_from=NOT_STARTED)
    repo.jobs.update(failed, None, {stop.value: True})
