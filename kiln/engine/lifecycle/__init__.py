"""A job's lifecycle: the one writer of its `status`, `statusReason` and stop flags.

The package holds the states and their table (`states`), the writer (`transitions`), what the
scheduler reports (`starts`), stops (`stops`), and the decisions that follow from what happened
to a job: its dependencies, array children and attempts (`progress`) and, for a multi-node job, its
main node (`gangs`). Nothing outside it chooses a job's next state or writes its stop flags.

Every change of `status`/`statusReason` goes through `transition` (or `transition_each`, its
batched form); the flags DescribeJobs shows as `isCancelled`/`isTerminated`, with the reason a
stop will end the job with, are written only by `cancel`, `terminate`, `expire`, `stop_running`
and `restart_gang` here. Callers say what happened (a user cancelled, a time limit passed, a
gang's main node ended) and the lifecycle decides which jobs move and how, by their state.

The table follows AWS Batch (https://docs.aws.amazon.com/batch/latest/userguide/job_states.html);
an array parent only ever shows SUBMITTED, PENDING, SUCCEEDED and FAILED. A transition names the
states it may leave, so a late or duplicate event (an exit reported for a job a user already
terminated) changes nothing.
"""

from kiln.engine.lifecycle.starts import diagnose, placed, release_gang_nodes, running
from kiln.engine.lifecycle.states import (
    ACTIVE,
    ARRAY_CHILD_FAILED,
    DEPENDENT_JOB_FAILED,
    FINISHED,
    NOT_STARTED,
    TERMINAL,
    TRANSITIONS,
    Status,
    sources_of,
)
from kiln.engine.lifecycle.stops import Stop, cancel, expire, restart_gang, stop_running, terminate
from kiln.engine.lifecycle.transitions import Move, restart_nodes, set_reason, transition, transition_each

__all__ = [
    "ACTIVE", "ARRAY_CHILD_FAILED", "DEPENDENT_JOB_FAILED", "FINISHED", "NOT_STARTED", "TERMINAL", "TRANSITIONS", "Move", "Status",
    "Stop", "cancel", "diagnose", "expire", "placed", "release_gang_nodes", "restart_gang", "restart_nodes",
    "running", "set_reason", "sources_of", "stop_running", "terminate", "transition", "transition_each",
]  # fmt: skip
