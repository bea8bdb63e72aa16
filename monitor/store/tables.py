"""SQLAlchemy 2.0 typed tables. No secret has a column here: keys live only in config."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
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

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)  # epoch seconds: compact and fast to compare
    # The instance that probed (None: written before instances had names).
    vantage: Mapped[str | None] = mapped_column(String(100))
    ok: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(24))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    http_status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)


class VantageHealthRow(Base):
    """One instance's judgement of one endpoint: what it would vote, kept per vantage."""

    __tablename__ = "vantage_health"

    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    vantage: Mapped[str] = mapped_column(String(100), primary_key=True)
    health: Mapped[str] = mapped_column(String(16))
    successes: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    health_since: Mapped[float | None] = mapped_column(Float)
    last_probe_at: Mapped[float | None] = mapped_column(Float)


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
    # Tokens the hour's probes spent, as the endpoints reported them in `usage`.
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class MetaRow(Base):
    """Small key/value facts about the database itself (rollup watermark, ...)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class GroupRow(Base):
    """What the daemon believes about a Convai model group, shared with the CLI."""

    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    active_endpoint: Mapped[str | None] = mapped_column(String(100))
    registered_base_url: Mapped[str | None] = mapped_column(String(2000))
    model_name: Mapped[str | None] = mapped_column(String(200))
    monitored: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(24), default="healthy")
    # The last condition recorded as an event (all_down, flapping, ...), so a condition
    # that lasts is recorded once, not on every evaluation.
    condition: Mapped[str | None] = mapped_column(String(32))
    last_switch_at: Mapped[float | None] = mapped_column(Float)
    operator_at: Mapped[float | None] = mapped_column(Float)
    pinned_endpoint: Mapped[str | None] = mapped_column(String(100))
    pinned_until: Mapped[float | None] = mapped_column(Float)
    synced_at: Mapped[float | None] = mapped_column(Float)
    # A digest of the api_key Convai was last given (store.switching.key_digest): a key
    # changed in the config is noticed, even across restarts, without storing the key.
    key_digest: Mapped[str | None] = mapped_column(String(64))


class SwitchRow(Base):
    """One switch, written as an intent before Convai is called, completed after read-back."""

    __tablename__ = "switches"
    __table_args__ = (Index("ix_switches_group_at", "group_name", "intent_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # failover | failback | manual
    automatic: Mapped[bool] = mapped_column(Boolean)
    from_endpoint: Mapped[str | None] = mapped_column(String(100))
    to_endpoint: Mapped[str] = mapped_column(String(100))
    to_base_url: Mapped[str] = mapped_column(String(2000))
    # intent -> confirmed | failed | abandoned; dry_run never leaves the daemon
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[float | None] = mapped_column(Float)  # first failed probe
    intent_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # The leader lease's token the intent was written under (None: CLI or before leases).
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)


class EventRow(Base):
    """The audit log: everything the daemon decided or noticed about a group."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_group_at", "group_name", "at"), Index("ix_events_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    group_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    switch_id: Mapped[int | None] = mapped_column(ForeignKey("switches.id"))
    details: Mapped[str | None] = mapped_column(Text)  # JSON, redacted


class IncidentRow(Base):
    """One story per group: opened by the first critical event, closed by a resolution."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_group_open", "group_name", "closed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(200))
    opened_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)
    severity: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    last_sent_at: Mapped[float] = mapped_column(Float)  # for reminders


class OutboxRow(Base):
    """One alert for one target, written with the event; delivered by a separate job."""

    __tablename__ = "alert_outbox"
    __table_args__ = (Index("ix_alert_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    group_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(32))  # hash of the apprise URL
    severity: Mapped[int] = mapped_column(Integer)
    notify_type: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


class AttemptRow(Base):
    """Every delivery attempt and how it went."""

    __tablename__ = "alert_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("alert_outbox.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    elapsed_ms: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """The leader lease: who holds it, its fencing token, and when it lapses (by the
    database's clock, so the hosts' clocks never matter)."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(100))
    # Grows by one every time the lease changes hands; a write carrying an older one is
    # from a leader that lost the lease (paused, partitioned) and is refused.
    token: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
    renewed_at: Mapped[float | None] = mapped_column(Float)


class InstanceRow(Base):
    """Every instance that shares the database, and its last heartbeat (database clock)."""

    __tablename__ = "instances"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    # It sees every endpoint and Convai unreachable: its votes on endpoints do not count.
    isolated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
