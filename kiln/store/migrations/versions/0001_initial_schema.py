"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compute_environments",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("arn", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "job_definitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("arn", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("name", "revision", name="uq_job_definitions_name_revision"),
    )
    op.create_table(
        "job_queues",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("arn", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("queue_arn", sa.String(length=512), nullable=False),
        sa.Column("definition_arn", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("runnable_at", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("stopped_at", sa.BigInteger(), nullable=True),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("array_index", sa.Integer(), nullable=True),
        sa.Column("array_size", sa.Integer(), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("is_cancelled", sa.Boolean(), nullable=False),
        sa.Column("is_terminated", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_parent_index", ["parent_id", "array_index"], unique=False)
        batch_op.create_index("ix_jobs_parent_status", ["parent_id", "status"], unique=False)
        batch_op.create_index("ix_jobs_queue_status_created", ["queue_arn", "status", "created_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_queue_status_runnable", ["queue_arn", "status", "runnable_at", "array_index", "id"], unique=False
        )
        batch_op.create_index("ix_jobs_status_runnable", ["status", "runnable_at"], unique=False)
        batch_op.create_index("ix_jobs_stopped", ["stopped_at"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("compute_environment", sa.String(length=128), nullable=False),
        sa.Column("log_stream", sa.String(length=512), nullable=False),
        sa.Column("vcpus", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("stopped_at", sa.BigInteger(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index("ix_attempts_active", ["active"], unique=False)
        batch_op.create_index("ix_attempts_job", ["job_id", "number"], unique=False)

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("depends_on", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "depends_on"),
    )
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.create_index("ix_job_dependencies_depends_on", ["depends_on"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.drop_index("ix_job_dependencies_depends_on")

    op.drop_table("job_dependencies")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_attempts_job")
        batch_op.drop_index("ix_attempts_active")

    op.drop_table("attempts")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_stopped")
        batch_op.drop_index("ix_jobs_status_runnable")
        batch_op.drop_index("ix_jobs_queue_status_runnable")
        batch_op.drop_index("ix_jobs_queue_status_created")
        batch_op.drop_index("ix_jobs_parent_status")
        batch_op.drop_index("ix_jobs_parent_index")

    op.drop_table("jobs")
    op.drop_table("job_queues")
    op.drop_table("job_definitions")
    op.drop_table("compute_environments")
