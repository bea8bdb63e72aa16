"""SQLAlchemy 2.0 typed tables. No secret has a column here: keys live only in config."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class EndpointRow(Base):
    """One configured endpoint and its persisted health, so a restart remembers a `down`."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("group_name", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    base_url: Mapped[str] = mapped_column(String(2000))
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    successes: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    health_since: Mapped[float | None] = mapped_column(Float)
    last_probe_at: Mapped[float | None] = mapped_column(Float)


class ResultRow(Base):
    """One probe's raw outcome, kept for `storage.retention`."""

    __tablename__ = "probe_results"
    __table_args__ = (
        Index("ix_probe_results_endpoint_at", "endpoint_id", "at"),
        Index("ix_probe_results_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)  # epoch seconds: compact and fast to compare
    ok: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(24))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    http_status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)


class RollupRow(Base):
    """Per endpoint per hour: counts and a latency histogram, kept long after raw rows."""

    __tablename__ = "rollups"

    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)  # epoch seconds, hour start
    probes: Mapped[int] = mapped_column(Integer)
    successes: Mapped[int] = mapped_column(Integer)
    # JSON {bucket: count} over log-spaced latency buckets of successful probes.
    histogram: Mapped[str] = mapped_column(Text)


class MetaRow(Base):
    """Small key/value facts about the database itself (rollup watermark, ...)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
