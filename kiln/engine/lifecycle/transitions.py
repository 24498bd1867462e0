"""The one writer of `status` and `statusReason`: moves allowed by the table of `states`, with the
timestamps each state sets. A transition names the states it may leave, so a late or duplicate
event (an exit reported for a job a user already terminated) changes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.engine.lifecycle.states import TERMINAL, TRANSITIONS, Status, sources_of
from kiln.store.repository import Repository

# The time each state sets: `runnable_at` (queue order) on entering RUNNABLE, `startedAt` on
# RUNNING, `stoppedAt` on a terminal state.
_TIME_COLUMN = {Status.RUNNABLE: "runnable_at", Status.RUNNING: "started_at"} | dict.fromkeys(TERMINAL, "stopped_at")


def _allowed(target: Status, only_from: frozenset[Status] | None) -> frozenset[Status]:
    """The states a job may leave for `target`: the table's, narrowed to `only_from` if given."""
    return sources_of(target) if only_from is None else sources_of(target) & only_from


def transition(
    repo: Repository,
    job_ids: Sequence[str],
    target: Status,
    reason: str | None,
    now_ms: int,
    *,
    only_from: frozenset[Status] | None = None,
) -> list[str]:
    """Move jobs to `target` where the table allows it, setting the time that state sets
    (`_TIME_COLUMN`); returns the ids that moved."""
    values: dict[str, object] = {"status": target.value, "status_reason": reason, "status_changed_at": now_ms}
    time_column = _TIME_COLUMN.get(target)
    if time_column is not None:
        values[time_column] = now_ms
    return repo.jobs.update(job_ids, [s.value for s in _allowed(target, only_from)], values)


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
    allowed = _allowed(target, only_from)
    if through_running and target in TRANSITIONS[Status.RUNNING]:
        allowed |= sources_of(Status.RUNNING) & {Status.STARTING}
    time_column = _TIME_COLUMN.get(target)
    rows = []
    for move in moves:
        row: dict[str, object] = {
            "_id": move.job_id, "status": target.value, "status_reason": move.reason, "status_changed_at": move.at_ms,
        }  # fmt: skip
        row.update(move.values)
        if time_column is not None:
            row[time_column] = move.at_ms
        rows.append(row)
    repo.jobs.update_each(rows, [s.value for s in allowed])


def set_reason(repo: Repository, job_ids: Sequence[str], in_status: Status, reason: str | None) -> list[str]:
    """Change only the reason of jobs staying in `in_status` (RUNNABLE capacity diagnostics)."""
    return repo.jobs.update(job_ids, [in_status.value], {"status_reason": reason})


def restart_nodes(repo: Repository, node_ids: Sequence[str], now_ms: int) -> list[str]:
    """A retried multi-node parallel job's nodes wait again (SUBMITTED) for the job's next placement.

    The one way out of a terminal state, and only for node jobs (`<job>#<i>`): AWS gives every node
    of an MNP job a new attempt when the job is retried. A node leaves SUCCEEDED/FAILED only, so
    one whose attempt still runs stays put; the terminate flag set when the main node ended is cleared.
    """
    ids = [job_id for job_id in node_ids if "#" in job_id]
    values = {"status": Status.SUBMITTED.value, "status_reason": None, "started_at": None, "stopped_at": None,
              "is_terminated": False, "status_changed_at": now_ms}  # fmt: skip
    return repo.jobs.update(ids, [s.value for s in TERMINAL], values)
