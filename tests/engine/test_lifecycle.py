"""The one owner of job status: the transition table (https://docs.aws.amazon.com/batch/latest/userguide/job_states.html) and `transition`
against a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from kiln.engine.lifecycle import (
    ACTIVE,
    NOT_STARTED,
    TERMINAL,
    TRANSITIONS,
    Move,
    Status,
    set_reason,
    sources_of,
    transition,
    transition_each,
)
from kiln.store.database import Database
from kiln.store.records import Job
from kiln.store.repository import Repository

S = Status
NOW = 1_700_000_000_000


# -- the table ------------------------------------------------------------------------------------


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert set(Status) == TERMINAL | ACTIVE | NOT_STARTED
    assert not (TERMINAL & ACTIVE or TERMINAL & NOT_STARTED or ACTIVE & NOT_STARTED)


def test_table_matches_the_aws_state_machine() -> None:
    assert {
        S.SUBMITTED: {S.PENDING, S.RUNNABLE, S.FAILED},
        S.PENDING: {S.RUNNABLE, S.FAILED, S.SUCCEEDED},
        S.RUNNABLE: {S.STARTING, S.FAILED},
        S.STARTING: {S.RUNNING, S.RUNNABLE, S.FAILED},
        S.RUNNING: {S.SUCCEEDED, S.RUNNABLE, S.FAILED},
        S.SUCCEEDED: set(),
        S.FAILED: set(),
    } == TRANSITIONS


def test_terminal_states_have_no_exits() -> None:
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
    assert {S.SUCCEEDED, S.FAILED} == TERMINAL


def test_no_state_leads_back_to_submitted() -> None:
    assert sources_of(S.SUBMITTED) == frozenset()


def test_runnable_cannot_go_straight_to_running() -> None:
    assert S.RUNNING not in TRANSITIONS[S.RUNNABLE]
    assert sources_of(S.RUNNING) == {S.STARTING}


def test_retry_goes_back_to_runnable() -> None:
    assert S.RUNNABLE in TRANSITIONS[S.RUNNING]
    assert S.RUNNABLE in TRANSITIONS[S.STARTING]
    assert S.SUBMITTED not in TRANSITIONS[S.RUNNING]
    assert S.PENDING not in TRANSITIONS[S.RUNNING]


def test_succeeded_only_from_running_or_pending_array_parent() -> None:
    assert sources_of(S.SUCCEEDED) == {S.RUNNING, S.PENDING}


def test_sources_of() -> None:
    assert sources_of(S.PENDING) == {S.SUBMITTED}
    assert sources_of(S.RUNNABLE) == {S.SUBMITTED, S.PENDING, S.STARTING, S.RUNNING}
    assert sources_of(S.STARTING) == {S.RUNNABLE}
    assert sources_of(S.FAILED) == set(Status) - TERMINAL


@pytest.mark.parametrize("target", list(Status))
def test_sources_of_inverts_the_table(target: Status) -> None:
    assert sources_of(target) == {source for source, targets in TRANSITIONS.items() if target in targets}


# -- transition against SQLite --------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def job_row(job_id: str, status: Status, **extra: Any) -> Job:
    row = Job.new(
        job_id,
        f"name-{job_id}",
        "arn:aws:batch:us-east-1:123456789012:job-queue/q",
        "arn:aws:batch:us-east-1:123456789012:job-definition/d:1",
        status.value,
        NOW - 1000,
        vcpus=1.0,
        memory_mib=128,
    )
    return replace(row, **extra)


def insert(db: Database, *rows: Job) -> None:
    with db.begin() as connection:
        Repository(connection).jobs.insert(list(rows))


def get(db: Database, job_id: str) -> Job:
    with db.read() as connection:
        row = Repository(connection).jobs.get(job_id)
    assert row is not None
    return row


def move(db: Database, job_ids: list[str], target: Status, reason: str | None = None, **kwargs: Any) -> list[str]:
    with db.begin() as connection:
        return transition(Repository(connection), job_ids, target, reason, NOW, **kwargs)


def test_illegal_transition_changes_nothing(db: Database) -> None:
    insert(db, job_row("r", S.RUNNABLE, status_reason="waiting", runnable_at=NOW - 500))
    before = get(db, "r")
    assert move(db, ["r"], S.RUNNING) == []
    assert move(db, ["r"], S.SUCCEEDED, "nope") == []
    assert get(db, "r") == before


def test_terminal_jobs_never_move(db: Database) -> None:
    insert(db, job_row("done", S.SUCCEEDED, stopped_at=NOW - 1), job_row("failed", S.FAILED, stopped_at=NOW - 1))
    before = [get(db, "done"), get(db, "failed")]
    for target in Status:
        assert move(db, ["done", "failed"], target, "late event") == []
    assert [get(db, "done"), get(db, "failed")] == before


def test_entering_runnable_sets_runnable_at(db: Database) -> None:
    insert(db, job_row("j", S.SUBMITTED))
    assert move(db, ["j"], S.RUNNABLE) == ["j"]
    row = get(db, "j")
    assert (row.status, row.runnable_at, row.started_at, row.stopped_at) == ("RUNNABLE", NOW, None, None)


def test_starting_sets_no_timestamp_and_clears_reason(db: Database) -> None:
    insert(db, job_row("j", S.RUNNABLE, status_reason="CAPACITY:...", runnable_at=NOW - 5))
    assert move(db, ["j"], S.STARTING) == ["j"]
    row = get(db, "j")
    assert (row.status, row.status_reason, row.runnable_at, row.started_at) == (
        "STARTING",
        None,
        NOW - 5,
        None,
    )


def test_running_sets_started_at(db: Database) -> None:
    insert(db, job_row("j", S.STARTING, runnable_at=NOW - 5))
    assert move(db, ["j"], S.RUNNING) == ["j"]
    row = get(db, "j")
    assert (row.status, row.started_at, row.stopped_at) == ("RUNNING", NOW, None)


@pytest.mark.parametrize("target", [S.SUCCEEDED, S.FAILED])
def test_terminal_state_sets_stopped_at_and_reason(db: Database, target: Status) -> None:
    insert(db, job_row("j", S.RUNNING, runnable_at=NOW - 5, started_at=NOW - 3))
    assert move(db, ["j"], target, "Essential container in task exited") == ["j"]
    row = get(db, "j")
    assert row.status == target.value
    assert row.status_reason == "Essential container in task exited"
    assert (row.runnable_at, row.started_at, row.stopped_at) == (NOW - 5, NOW - 3, NOW)


def test_retry_back_to_runnable_refreshes_runnable_at(db: Database) -> None:
    insert(db, job_row("j", S.RUNNING, runnable_at=NOW - 5, started_at=NOW - 3))
    assert move(db, ["j"], S.RUNNABLE) == ["j"]
    row = get(db, "j")
    assert (row.status, row.runnable_at, row.started_at, row.stopped_at) == ("RUNNABLE", NOW, NOW - 3, None)


def test_only_allowed_jobs_of_a_batch_move(db: Database) -> None:
    insert(
        db,
        job_row("submitted", S.SUBMITTED),
        job_row("pending", S.PENDING),
        job_row("runnable", S.RUNNABLE, runnable_at=NOW - 1),
        job_row("succeeded", S.SUCCEEDED, stopped_at=NOW - 1),
    )
    moved = move(db, ["submitted", "pending", "runnable", "succeeded", "missing"], S.FAILED, "Dependent Job failed")
    assert sorted(moved) == ["pending", "runnable", "submitted"]
    for job_id in moved:
        row = get(db, job_id)
        assert (row.status, row.status_reason, row.stopped_at) == ("FAILED", "Dependent Job failed", NOW)
    assert get(db, "succeeded").stopped_at == NOW - 1


def test_only_from_narrows_the_sources(db: Database) -> None:
    insert(db, job_row("submitted", S.SUBMITTED), job_row("pending", S.PENDING))
    assert move(db, ["submitted", "pending"], S.FAILED, "cancel", only_from=frozenset({S.SUBMITTED})) == ["submitted"]
    assert get(db, "pending").status == "PENDING"


def test_only_from_cannot_widen_the_table(db: Database) -> None:
    insert(db, job_row("r", S.RUNNABLE))
    assert move(db, ["r"], S.RUNNING, only_from=frozenset({S.RUNNABLE})) == []
    assert get(db, "r").status == "RUNNABLE"


def test_set_reason_changes_only_jobs_in_that_status(db: Database) -> None:
    insert(db, job_row("r", S.RUNNABLE, runnable_at=NOW - 1), job_row("s", S.STARTING))
    with db.begin() as connection:
        changed = set_reason(Repository(connection), ["r", "s"], S.RUNNABLE, "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY")
    assert changed == ["r"]
    assert get(db, "r").status_reason == "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"
    assert get(db, "r").status == "RUNNABLE"
    assert get(db, "s").status_reason is None


def test_through_running_records_a_start_and_an_end_in_one_write(db: Database) -> None:
    """An attempt that started and ended between two scheduler ticks: STARTING -> SUCCEEDED with both
    times, never from a state that could not have run (RUNNABLE), never out of a terminal state."""
    insert(
        db,
        job_row("starting", S.STARTING, runnable_at=NOW - 9),
        job_row("running", S.RUNNING, runnable_at=NOW - 9, started_at=NOW - 5),
        job_row("runnable", S.RUNNABLE, runnable_at=NOW - 9),
        job_row("failed", S.FAILED, stopped_at=NOW - 1),
    )
    moves = [Move(job_id, NOW, "Essential container in task exited", {"started_at": NOW - 3})
             for job_id in ("starting", "running", "runnable", "failed")]  # fmt: skip
    with db.begin() as connection:
        transition_each(Repository(connection), S.SUCCEEDED, moves, through_running=True)
    assert [(get(db, j).status, get(db, j).started_at, get(db, j).stopped_at) for j in ("starting", "running")] == [
        ("SUCCEEDED", NOW - 3, NOW),
        ("SUCCEEDED", NOW - 3, NOW),
    ]
    assert (get(db, "runnable").status, get(db, "runnable").started_at) == ("RUNNABLE", None)
    assert get(db, "failed").stopped_at == NOW - 1


def test_without_through_running_a_starting_job_cannot_end(db: Database) -> None:
    insert(db, job_row("starting", S.STARTING))
    with db.begin() as connection:
        transition_each(Repository(connection), S.SUCCEEDED, [Move("starting", NOW)])
    assert get(db, "starting").status == "STARTING"
