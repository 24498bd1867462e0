"""Table definitions. Resource documents (definitions, queues, environments) live in a JSON column
beside the few columns queries filter on, so new AWS fields need no migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

compute_environments = Table(
    "compute_environments",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("arn", String(512), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("doc", JSON, nullable=False),
)

job_queues = Table(
    "job_queues",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("arn", String(512), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("doc", JSON, nullable=False),
)

job_definitions = Table(
    "job_definitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("arn", String(512), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("doc", JSON, nullable=False),
    UniqueConstraint("name", "revision", name="uq_job_definitions_name_revision"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("queue_arn", String(512), nullable=False),
    Column("definition_arn", String(512), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text),
    Column("created_at", BigInteger, nullable=False),
    # When the job last entered RUNNABLE: FIFO order within a queue.
    Column("runnable_at", BigInteger),
    Column("started_at", BigInteger),
    Column("stopped_at", BigInteger),
    Column("parent_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE")),
    Column("array_index", Integer),
    Column("array_size", Integer),
    # Multi-node parallel (migration 0004): the job's node count; a node job's index (id `<job>#<i>`).
    Column("num_nodes", Integer),
    Column("node_index", Integer),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("vcpus", Float, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("gpus", Integer, nullable=False, default=0),
    Column("is_cancelled", Boolean, nullable=False, default=False),
    Column("is_terminated", Boolean, nullable=False, default=False),
    # The resolved job: container (after overrides and Ref:: substitution), parameters,
    # retryStrategy, timeout, dependsOn, tags, platformCapabilities, ...
    Column("spec", JSON, nullable=False),
    # When the status last changed (migration 0006): an array parent's statusSummaryLastUpdatedAt
    # is its children's latest.
    Column("status_changed_at", BigInteger),
    Index("ix_jobs_queue_status_created", "queue_arn", "status", "created_at"),
    Index("ix_jobs_status_runnable", "status", "runnable_at"),
    # Candidates: released together (same runnable_at) -> submit order -> array index.
    Index("ix_jobs_queue_status_runnable", "queue_arn", "status", "runnable_at", "created_at", "array_index", "id"),
    Index("ix_jobs_parent_index", "parent_id", "array_index"),
    # An array parent's statusSummary and statusSummaryLastUpdatedAt, from the index alone (0008).
    Index("ix_jobs_parent_status_changed", "parent_id", "status", "status_changed_at"),
    Index("ix_jobs_stopped", "stopped_at"),
    Index("ix_jobs_status_node", "status", "node_index"),
)

job_dependencies = Table(
    "job_dependencies",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("depends_on", String(64), primary_key=True),
    Column("type", String(16)),
    Index("ix_job_dependencies_depends_on", "depends_on"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("compute_environment", String(128), nullable=False),
    Column("log_stream", String(512), nullable=False),
    Column("vcpus", Float, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("gpus", Integer, nullable=False, default=0),
    # Set while the attempt holds capacity; cleared when it exits.
    Column("active", Boolean, nullable=False, default=True),
    Column("started_at", BigInteger),
    Column("stopped_at", BigInteger),
    Column("exit_code", Integer),
    Column("reason", Text),
    Column("status_reason", Text),
    # "<host id>:<data dir>" of the server that placed it (migration 0003): only that server's
    # supervisor can account for it after a restart or a takeover.
    Column("placed_by", String(1024)),
    Index("ix_attempts_job", "job_id", "number"),
    Index("ix_attempts_active", "active"),
)

# Fair-share scheduling policies (migration 0002). The document is the SchedulingPolicyDetail.
scheduling_policies = Table(
    "scheduling_policies",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("arn", String(512), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("doc", JSON, nullable=False),
)

# A job's share in a fair-share queue (migration 0002): one row for a job and for each array child,
# so the scheduler orders RUNNABLE jobs per share and sums usage per share without decoding specs.
job_shares = Table(
    "job_shares",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("queue_arn", String(512), nullable=False),
    Column("share_identifier", String(255), nullable=False),
    Column("scheduling_priority", Integer, nullable=False),
    Index("ix_job_shares_queue_share", "queue_arn", "share_identifier"),
)

# Consumable resources (migration 0007): a named count (licences, connections) jobs take while they
# run. Only the total is stored; what is in use is derived from the active attempts of the jobs
# that need it (`job_consumables`), so a crash can neither leak nor double-count a unit.
consumable_resources = Table(
    "consumable_resources",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("arn", String(512), nullable=False, unique=True),
    Column("resource_type", String(32), nullable=False),
    # NON_REPLENISHABLE: lowered in the transaction that places a job needing it.
    Column("total_quantity", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Tags and recent UpdateConsumableResource client tokens.
    Column("doc", JSON, nullable=False),
)

# What a job needs of each consumable resource (migration 0007): one row per resource for the job
# that carries the spec (an array parent stands for its children).
job_consumables = Table(
    "job_consumables",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("resource_name", String(128), primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Index("ix_job_consumables_resource", "resource_name", "job_id"),
)
