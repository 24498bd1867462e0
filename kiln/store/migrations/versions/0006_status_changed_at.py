"""jobs remember when their status last changed

Revision ID: 0006
Revises: 0005

An array parent's `statusSummaryLastUpdatedAt` is the latest status change among its children;
it was the time of the request. Rows from before this revision get the latest time they recorded
(stopped, started, runnable or created).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_changed_at", sa.BigInteger(), nullable=True))
    op.execute("UPDATE jobs SET status_changed_at = COALESCE(stopped_at, started_at, runnable_at, created_at)")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("status_changed_at")
