"""FIFO candidates: jobs that became RUNNABLE together are taken in submit order

Revision ID: 0005
Revises: 0004

The scheduler reads a queue's RUNNABLE jobs by (runnable_at, created_at, array_index, id): jobs
released by the same pass share runnable_at, and the oldest submission must go first, not the
lowest random id. The index gains created_at so that read stays an index-ordered scan.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = ["queue_arn", "status", "runnable_at", "array_index", "id"]
NEW = ["queue_arn", "status", "runnable_at", "created_at", "array_index", "id"]


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queue_status_runnable")
        batch_op.create_index("ix_jobs_queue_status_runnable", NEW, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queue_status_runnable")
        batch_op.create_index("ix_jobs_queue_status_runnable", OLD, unique=False)
