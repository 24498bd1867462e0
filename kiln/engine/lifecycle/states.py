"""A job's states and the moves AWS Batch allows between them
(https://docs.aws.amazon.com/batch/latest/userguide/job_states.html), and the reasons Kiln writes
itself."""

from __future__ import annotations

from enum import StrEnum


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
# The terminal states as the store compares them (it names no state itself).
FINISHED = tuple(sorted(status.value for status in TERMINAL))

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
