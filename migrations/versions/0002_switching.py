"""Groups, switches (intent -> confirmation) and the audit log of events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
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
        "groups",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("active_endpoint", sa.String(100), nullable=True),
        sa.Column("registered_base_url", sa.String(2000), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("monitored", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("condition", sa.String(32), nullable=True),
        sa.Column("last_switch_at", sa.Float(), nullable=True),
        sa.Column("operator_at", sa.Float(), nullable=True),
        sa.Column("pinned_endpoint", sa.String(100), nullable=True),
        sa.Column("pinned_until", sa.Float(), nullable=True),
        sa.Column("synced_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "switches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("from_endpoint", sa.String(100), nullable=True),
        sa.Column("to_endpoint", sa.String(100), nullable=False),
        sa.Column("to_base_url", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=True),
        sa.Column("intent_at", sa.Float(), nullable=False),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.Column("transaction_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_switches_group_at", "switches", ["group_name", "intent_at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("switch_id", sa.Integer(), sa.ForeignKey("switches.id"), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
    )
    op.create_index("ix_events_group_at", "events", ["group_name", "at"])
    op.create_index("ix_events_at", "events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_events_at", "events")
    op.drop_index("ix_events_group_at", "events")
    op.drop_table("events")
    op.drop_index("ix_switches_group_at", "switches")
    op.drop_table("switches")
    op.drop_table("groups")
