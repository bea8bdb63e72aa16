"""Vantages: every probe result names the instance that probed, and each instance's view of
each endpoint's health is kept apart.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("probe_results") as batch:
        batch.add_column(sa.Column("vantage", sa.String(100), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Several instances probing 1,000 endpoints every 10 s write 300 rows a second:
        # a 32-bit id runs out within months. SQLite's ids are 64-bit already.
        op.execute("ALTER TABLE probe_results ALTER COLUMN id TYPE BIGINT")
        op.execute("ALTER SEQUENCE probe_results_id_seq AS BIGINT")
    op.create_table(
        "vantage_health",
        sa.Column(
            "endpoint_id",
            sa.Integer(),
            sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("vantage", sa.String(100), primary_key=True),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("health_since", sa.Float(), nullable=True),
        sa.Column("last_probe_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("vantage_health")
    with op.batch_alter_table("probe_results") as batch:
        batch.drop_column("vantage")
