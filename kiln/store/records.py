"""Typed records the store reads and writes: one dataclass per table row, and one per partial row a
query returns (the scheduler's candidates, usage sums, log streams). Field order is the table's
column order, so a full row becomes a record without a dict in between.

Records are plain mutable dataclasses: the store fills them and the engine may note a value it just
wrote (an attempt's start) without reading the row again. JSON columns stay `Document`s: they hold
AWS's own shapes (a queue's JobQueueDetail, a job's resolved spec), whose keys AWS owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

Document = dict[str, Any]  # a JSON document in AWS's shape (JobQueueDetail, a job's resolved spec, ...)


@dataclass(slots=True)
class Job:
    """A job: top-level, an array child (`parent_id`, `array_index`) or a node of a multi-node
    parallel job (`parent_id`, `node_index`). Children carry an empty `spec`: they read the parent's."""

    id: str
    name: str
    queue_arn: str
    definition_arn: str
    status: str
    status_reason: str | None
    created_at: int
    runnable_at: int | None  # when it last entered RUNNABLE: FIFO order within a queue
    started_at: int | None
    stopped_at: int | None
    parent_id: str | None
    array_index: int | None
    array_size: int | None
    num_nodes: int | None
    node_index: int | None
    attempt_count: int
    vcpus: float
    memory_mib: int
    gpus: int
    is_cancelled: bool
    is_terminated: bool
    spec: Document = field(default_factory=dict)
    status_changed_at: int | None = None  # when the status last changed

    @classmethod
    def new(
        cls, id: str, name: str, queue_arn: str, definition_arn: str, status: str, created_at: int, *,
        vcpus: float, memory_mib: int, gpus: int = 0, spec: Document | None = None, parent_id: str | None = None,
        array_index: int | None = None, array_size: int | None = None, num_nodes: int | None = None,
        node_index: int | None = None,
    ) -> Job:  # fmt: skip
        """A job as SubmitJob first stores it: no reason, times, attempts or stop flags yet."""
        return cls(id, name, queue_arn, definition_arn, status, None, created_at, None, None, None, parent_id,
                   array_index, array_size, num_nodes, node_index, 0, vcpus, memory_mib, gpus, False, False,
                   {} if spec is None else spec, created_at)  # fmt: skip


@dataclass(slots=True)
class Dependency:
    job_id: str
    depends_on: str
    type: str | None


@dataclass(slots=True)
class Attempt:
    """One try of a job on an executor; `active` while it holds capacity."""

    task_id: str
    job_id: str
    number: int
    compute_environment: str
    log_stream: str
    vcpus: float
    memory_mib: int
    gpus: int
    active: bool = True  # holds its vCPUs, memory and GPUs in its compute environment
    started_at: int | None = None
    stopped_at: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    status_reason: str | None = None
    placed_by: str | None = None  # "<host id>:<data dir>" of the server whose supervisor runs it


@dataclass(slots=True)
class Named:
    """A resource whose name is its key (compute environments, job queues, scheduling policies)."""

    name: str
    arn: str


@dataclass(slots=True)
class ComputeEnvironment(Named):
    """Where jobs may run, and how much of it (`doc`): the scheduler's capacity per environment."""

    state: str  # ENABLED or DISABLED: a disabled environment takes no new placements
    status: str  # VALID, DELETING, ... (AWS's lifecycle of the resource itself)
    created_at: int
    doc: Document  # the ComputeEnvironmentDetail DescribeComputeEnvironments returns


@dataclass(slots=True)
class JobQueue(Named):
    """Jobs wait here; `priority` orders queues that share an environment."""

    state: str  # ENABLED or DISABLED: a disabled queue refuses SubmitJob and places nothing
    status: str  # VALID, DELETING, ...
    priority: int
    created_at: int
    doc: Document  # the JobQueueDetail DescribeJobQueues returns


@dataclass(slots=True)
class JobDefinition:
    """One revision of a definition; SubmitJob resolves a name to its newest ACTIVE revision."""

    id: int | None  # assigned by the database on insert
    name: str
    revision: int
    arn: str
    status: str
    created_at: int
    doc: Document  # the JobDefinition DescribeJobDefinitions returns


@dataclass(slots=True)
class SchedulingPolicy(Named):
    """A fair-share policy queues may name (share weights, decay, compute reservation in `doc`)."""

    created_at: int
    doc: Document  # the SchedulingPolicyDetail


@dataclass(slots=True)
class ConsumableResource(Named):
    """A count of something outside compute environments (licences, connections) that jobs take
    while they run. Only the total is stored; what is in use is summed from active attempts."""

    resource_type: str  # REPLENISHABLE (units come back when an attempt ends) or NON_REPLENISHABLE
    total_quantity: int  # a NON_REPLENISHABLE total drops by what each placed attempt takes
    created_at: int
    doc: Document  # tags, and recent UpdateConsumableResource client tokens


@dataclass(slots=True)
class JobConsumable:
    """How much of one consumable resource a job needs: on the job that carries the spec (an array
    parent stands for its children, each of which takes the quantity on its own)."""

    job_id: str
    resource_name: str
    quantity: int


@dataclass(slots=True)
class JobShare:
    """A job's share in a fair-share queue: one for a job and one for each of its children."""

    job_id: str
    queue_arn: str
    share_identifier: str
    scheduling_priority: int


@dataclass(slots=True)
class Candidate:
    """A RUNNABLE job as the scheduler weighs it, without its spec; the share and priority are
    set for a fair-share queue."""

    id: str
    queue_arn: str
    parent_id: str | None
    vcpus: float
    memory_mib: int
    gpus: int
    status_reason: str | None
    num_nodes: int | None
    runnable_at: int | None = None
    created_at: int | None = None
    share_identifier: str | None = None
    scheduling_priority: int = 0


@dataclass(slots=True)
class Waiting:
    """A RUNNABLE job with a diagnostic reason, as a job-state time limit weighs it."""

    id: str
    queue_arn: str
    runnable_at: int  # epoch ms it last entered RUNNABLE
    status_reason: str | None


@dataclass(slots=True)
class ArraySummary:
    """An array parent's children: how many are in each status, and when a status last changed."""

    counts: dict[str, int]
    changed_at: int | None = None


@dataclass(slots=True)
class ShareUsage:
    share_identifier: str
    usage: float  # decayed vCPU-seconds
    running: int  # attempts holding capacity


@dataclass(slots=True)
class EnvironmentUsage:
    """What running attempts hold in one compute environment."""

    compute_environment: str
    vcpus: float
    memory_mib: int
    gpus: int
    attempts: int


@dataclass(slots=True)
class Stream:
    """A started attempt as a CloudWatch log stream; `last` orders streams by when they stopped."""

    task_id: str
    log_stream: str
    started_at: int | None
    stopped_at: int | None
    last: int | None = None


@dataclass(slots=True)
class JobCount:
    queue_arn: str
    status: str
    child: bool
    count: int


def field_names(record: type[Any]) -> tuple[str, ...]:
    """A record type's fields in order (cached: `fields()` costs more than building a small record)."""
    names = _FIELD_NAMES.get(record)
    if names is None:
        names = _FIELD_NAMES[record] = tuple(f.name for f in fields(record))
    return names


def values_of(record: Any) -> dict[str, Any]:
    """A record's columns for an INSERT (shallow: documents are not copied, unlike `asdict`)."""
    return {name: getattr(record, name) for name in field_names(type(record))}


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}
