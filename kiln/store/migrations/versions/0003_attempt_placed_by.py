"""attempts remember which server placed them (its host and data dir)

Revision ID: 0003
Revises: 0002

Servers sharing one PostgreSQL database each run their own attempt supervisor: after a takeover,
only the placing server's supervisor can account for an attempt; for any other it is a lost host.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("placed_by", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("placed_by")
