"""The alert outbox: alerts written in the same transaction as the event that caused
them, delivered later by a separate job that records every attempt.

healthchecks.io's lesson: failover never waits on a notification, and a notification is
never lost because a webhook hiccupped or the process restarted.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.alerts.render import render
from monitor.domain.alerts import (
    Effect,
    Rule,
    Severity,
    notify_kind,
    reminder_due,
    routed,
    rule_for,
)
from monitor.store.store import Store
from monitor.store.tables import AttemptRow, EventRow, IncidentRow, OutboxRow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class Route:
    target_id: str
    min_severity: Severity


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    target_id: str
    title: str
    body: str
    notify_type: str
    attempts: int
    created_at: float
    group: str
    kind: str


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    pending: int
    delivered: int
    failed: int
    last_failure: dict[str, Any] | None


class Outbox:
    """Turns events into outbox rows, inside the caller's transaction."""

    def __init__(
        self, routes: list[Route], *, prefix: str | None = None, drill: bool = False
    ) -> None:
        self.routes = routes
        self.prefix = prefix
        self.drill = drill

    def enqueue(self, session: Session, event: EventRow, details: dict[str, Any] | None) -> int:
        """Queue the alerts an event calls for; return how many rows were written."""
        rule = rule_for(event.kind, details)
        if rule is None:
            return 0
        incident = self._incident(session, event, rule)
        return self._write(
            session,
            event.group_name,
            event.kind,
            event.message,
            details,
            rule,
            incident,
            event.at,
            event.id,
        )

    def _incident(self, session: Session, event: EventRow, rule: Rule) -> IncidentRow | None:
        incident = session.scalars(
            select(IncidentRow).where(
                IncidentRow.group_name == event.group_name, IncidentRow.closed_at.is_(None)
            )
        ).first()
        if rule.effect is Effect.OPEN:
            if incident is None:
                incident = IncidentRow(
                    group_name=event.group_name,
                    opened_at=event.at,
                    severity=int(rule.severity),
                    title=event.message[:200],
                    last_sent_at=event.at,
                )
                session.add(incident)
                session.flush()
            else:
                incident.severity = max(incident.severity, int(rule.severity))
                incident.last_sent_at = event.at
        elif rule.effect is Effect.CLOSE and incident is not None:
            incident.closed_at = event.at
        elif rule.effect is Effect.NONE:
            return None
        return incident

    def _write(
        self,
        session: Session,
        group: str,
        kind: str,
        message: str,
        details: dict[str, Any] | None,
        rule: Rule,
        incident: IncidentRow | None,
        at: float,
        event_id: int | None,
    ) -> int:
        title, body = render(
            kind=kind,
            group=group,
            message=message,
            details=details,
            rule=rule,
            incident=incident.id if incident else None,
            opened_at=incident.opened_at if incident else None,
            prefix=self.prefix,
            drill=self.drill,
        )
        # A resolution goes wherever the incident's alerts went: the pager that was told
        # of the outage must be told it is over.
        reach = rule.severity
        if rule.effect is Effect.CLOSE and incident is not None:
            reach = max(reach, Severity(incident.severity))
        written = 0
        for route in self.routes:
            if not routed(reach, route.min_severity):
                continue
            session.add(
                OutboxRow(
                    event_id=event_id,
                    incident_id=incident.id if incident else None,
                    group_name=group,
                    kind=kind,
                    target_id=route.target_id,
                    severity=int(rule.severity),
                    notify_type=notify_kind(rule).value,
                    title=title,
                    body=body,
                    status=PENDING,
                    attempts=0,
                    created_at=at,
                    next_attempt_at=at,
                )
            )
            written += 1
        return written

    def remind(
        self, session: Session, now: float, interval: float, serving: Collection[str] = ()
    ) -> int:
        """Queue a reminder for every open critical incident due one (domain.alerts)."""
        written = 0
        for incident in session.scalars(
            select(IncidentRow).where(
                IncidentRow.closed_at.is_(None),
                IncidentRow.severity >= int(Severity.CRITICAL),
                IncidentRow.last_sent_at <= now - interval,
            )
        ):
            due = reminder_due(
                True,
                Severity(min(incident.severity, Severity.CRITICAL)),
                incident.last_sent_at,
                now,
                interval,
                serving=incident.group_name in serving,
            )
            if not due:
                continue
            incident.last_sent_at = now
            rule = Rule(Severity.CRITICAL, Effect.ATTACH)
            message = self._reminder_text(session, incident, now)
            written += self._write(
                session, incident.group_name, "reminder", message, None, rule, incident, now, None
            )
        return written

    def _reminder_text(self, session: Session, incident: IncidentRow, now: float) -> str:
        """The newest critical alert of the incident (what is broken, where the group is,
        the command), not its first line: an incident's story moves on."""
        latest = session.scalars(
            select(OutboxRow.body)
            .where(
                OutboxRow.incident_id == incident.id,
                OutboxRow.severity >= int(Severity.CRITICAL),
                OutboxRow.kind != "reminder",
            )
            .order_by(OutboxRow.id.desc())
            .limit(1)
        ).first()
        minutes = max(0, round((now - incident.opened_at) / 60))
        head = f"Still unresolved after {minutes} min."
        if latest is None:
            return f"{head} {incident.title}"
        body = "\n".join(
            line for line in latest.splitlines() if not line.startswith(("Incident #", "This is"))
        )
        return f"{head} The latest:\n{body}"


class Deliveries:
    """Store side of the delivery job: what is due, and what each attempt did."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def due(self, now: float, limit: int = 50) -> list[Delivery]:
        with self.store.session() as session:
            # A target with a row waiting for its retry gets nothing newer before it, so
            # each target sees its alerts in order.
            blocked = select(OutboxRow.target_id).where(
                OutboxRow.status == PENDING, OutboxRow.next_attempt_at > now
            )
            rows = session.scalars(
                select(OutboxRow)
                .where(
                    OutboxRow.status == PENDING,
                    OutboxRow.next_attempt_at <= now,
                    OutboxRow.target_id.not_in(blocked),
                )
                .order_by(OutboxRow.id)
                .limit(limit)
            ).all()
            return [
                Delivery(
                    r.id,
                    r.target_id,
                    r.title,
                    r.body,
                    r.notify_type,
                    r.attempts,
                    r.created_at,
                    r.group_name,
                    r.kind,
                )
                for r in rows
            ]

    def attempted(
        self,
        outbox_id: int,
        *,
        ok: bool,
        error: str | None,
        elapsed_ms: float,
        at: float,
        retry_at: float | None,
    ) -> str:
        """Record an attempt; `retry_at` None after a failure means give up. New status."""
        with self.store.session() as session, session.begin():
            row = session.get_one(OutboxRow, outbox_id)
            row.attempts += 1
            session.add(
                AttemptRow(outbox_id=outbox_id, at=at, ok=ok, error=error, elapsed_ms=elapsed_ms)
            )
            if ok:
                row.status, row.delivered_at, row.last_error = DELIVERED, at, None
            elif retry_at is None:
                row.status, row.last_error = FAILED, error
            else:
                row.next_attempt_at, row.last_error = retry_at, error
            return row.status

    def remind(
        self, outbox: Outbox, now: float, interval: float, serving: Collection[str] = ()
    ) -> int:
        with self.store.session() as session, session.begin():
            return outbox.remind(session, now, interval, serving)

    def summary(self) -> DeliverySummary:
        with self.store.session() as session:
            counts = dict(
                session.execute(
                    select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
                ).all()
            )
            last = session.scalars(
                select(OutboxRow)
                .where(OutboxRow.status == FAILED)
                .order_by(OutboxRow.id.desc())
                .limit(1)
            ).first()
            failure = (
                None
                if last is None
                else {
                    "group": last.group_name,
                    "kind": last.kind,
                    "attempts": last.attempts,
                    "error": last.last_error,
                    "target_id": last.target_id,
                }
            )
        return DeliverySummary(
            counts.get(PENDING, 0), counts.get(DELIVERED, 0), counts.get(FAILED, 0), failure
        )

    def finished(self, since: float, names: dict[str, str]) -> list[dict[str, Any]]:
        """Alerts delivered or given up on since `since`, for the timeline. `names` maps a
        target id to how the target is shown (never its URL)."""
        last_attempt = func.max(AttemptRow.at)
        with self.store.session() as session:
            rows = session.execute(
                select(OutboxRow, last_attempt)
                .outerjoin(AttemptRow, AttemptRow.outbox_id == OutboxRow.id)
                .where(OutboxRow.status.in_((DELIVERED, FAILED)), OutboxRow.created_at >= since)
                .group_by(OutboxRow.id)
            ).all()
            return [
                {
                    "at": r.delivered_at if r.status == DELIVERED else (at or r.next_attempt_at),
                    "id": r.id,
                    "event": r.event_id,
                    "group": r.group_name,
                    "kind": r.kind,
                    "status": r.status,
                    "attempts": r.attempts,
                    "error": r.last_error,
                    "target": names.get(r.target_id, "a target no longer configured"),
                }
                for r, at in rows
            ]

    def attempts(self) -> list[tuple[int, bool, str | None]]:
        with self.store.session() as session:
            return [
                (r.outbox_id, r.ok, r.error)
                for r in session.scalars(select(AttemptRow).order_by(AttemptRow.id))
            ]

    def rows(self) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return [
                {
                    "id": r.id,
                    "group": r.group_name,
                    "kind": r.kind,
                    "status": r.status,
                    "attempts": r.attempts,
                    "incident": r.incident_id,
                    "title": r.title,
                }
                for r in session.scalars(select(OutboxRow).order_by(OutboxRow.id))
            ]
