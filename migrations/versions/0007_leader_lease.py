"""The leader lease (one row), instance heartbeats, and the fencing token on switches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    lease = op.create_table(
        "lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("renewed_at", sa.Float(), nullable=True),
    )
    # The row exists from the start, so taking the lease is always an UPDATE of a locked
    # row, never two instances racing to INSERT it.
    op.bulk_insert(lease, [{"name": "leader", "holder": None, "token": 0, "expires_at": 0.0}])
    op.create_table(
        "instances",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("switches") as batch:
        batch.add_column(sa.Column("fencing_token", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("switches") as batch:
        batch.drop_column("fencing_token")
    op.drop_table("instances")
    op.drop_table("lease")
