"""Alembic environment: always run with a connection handed over by monitor.store."""

from __future__ import annotations

from alembic import context

from monitor.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running alembic by hand
    raise SystemExit("run migrations with `convai-monitor db upgrade -c FILE`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables safely.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
