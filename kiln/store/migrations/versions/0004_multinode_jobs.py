"""multi-node parallel jobs: a job's node count and each node job's index

Revision ID: 0004
Revises: 0003

An MNP job is a top-level row with `num_nodes` set; its nodes are rows `<jobId>#<i>` with
`parent_id` = the job and `node_index` = i, so ListJobs(multiNodeJobId) pages them in SQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("num_nodes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("node_index", sa.Integer(), nullable=True))
        batch_op.create_index("ix_jobs_status_node", ["status", "node_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_node")
        batch_op.drop_column("node_index")
        batch_op.drop_column("num_nodes")
