"""scheduling policies and job shares (fair-share queues)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduling_policies",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("arn", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "job_shares",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("queue_arn", sa.String(length=512), nullable=False),
        sa.Column("share_identifier", sa.String(length=255), nullable=False),
        sa.Column("scheduling_priority", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id"),
    )
    with op.batch_alter_table("job_shares", schema=None) as batch_op:
        batch_op.create_index("ix_job_shares_queue_share", ["queue_arn", "share_identifier"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_shares", schema=None) as batch_op:
        batch_op.drop_index("ix_job_shares_queue_share")

    op.drop_table("job_shares")
    op.drop_table("scheduling_policies")
