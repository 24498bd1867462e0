"""consumable resources and what each job needs of them

Revision ID: 0007
Revises: 0006

Two new tables, nothing existing changes: `consumable_resources` (the resources and their totals)
and `job_consumables` (a job's quantity of each). What is in use is never stored: it is summed
from the active attempts of the jobs that need the resource.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumable_resources",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("arn", sa.String(length=512), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("total_quantity", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("arn"),
    )
    op.create_table(
        "job_consumables",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("resource_name", sa.String(length=128), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "resource_name"),
    )
    with op.batch_alter_table("job_consumables", schema=None) as batch_op:
        batch_op.create_index("ix_job_consumables_resource", ["resource_name", "job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_consumables", schema=None) as batch_op:
        batch_op.drop_index("ix_job_consumables_resource")
    op.drop_table("job_consumables")
    op.drop_table("consumable_resources")
