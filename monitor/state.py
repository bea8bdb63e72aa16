"""What is the state: the one place that reads it from the database.

`status`, `history` and `explain` on the command line and the status page (`GET /`,
`/api/*`) are renderings of what this module answers; none of them queries the store
itself. Everything here is plain data (dicts of JSON types, lists of lines): text, JSON
and HTML are made elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from monitor.config import Config, display_url
from monitor.domain.failover import failback_wait
from monitor.domain.health import Health, HealthState
from monitor.domain.latency import Bucket, fold, hist_percentile
from monitor.domain.quorum import Tally, Vote, tally
from monitor.durations import format_duration
from monitor.report import iso
from monitor.store import Store
from monitor.store.lease import Leases
from monitor.store.outbox import Deliveries
from monitor.store.store import HOUR, Usage, WindowStats
from monitor.store.switching import EventRecord, GroupRecord, SwitchLog
from monitor.store.tables import EventRow

# Uptime over each window; 7d and 30d are answered from the hourly rollups.
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
DAY = 86400
# The page's bar of days (Gatus and Uptime Kuma show about this much) and latency chart.
PAGE_DAYS = 90
PAGE_HOURS = 24


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _latency(window: WindowStats | None) -> dict[str, float | None]:
    if window is None:
        return {"p50": None, "p95": None}
    return {"p50": _round(window.p50_ms), "p95": _round(window.p95_ms)}


# A month, for the cost estimate: the last 24 hours times this.
MONTH_DAYS = 30


def _usage(usage: Usage | None, price_per_1k: float | None) -> dict[str, Any]:
    """Probes and tokens of the last 24 h, a month at that pace, and money when priced."""
    probes = usage.probes if usage else 0
    tokens = usage.tokens if usage else 0
    month = tokens * MONTH_DAYS
    return {
        "probes": probes,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "tokens": tokens,
        "probes_per_month": probes * MONTH_DAYS,
        "tokens_per_month": month,
        "price_per_1k_tokens": price_per_1k,
        "cost": None if price_per_1k is None else round(tokens / 1000 * price_per_1k, 4),
        "cost_per_month": None if price_per_1k is None else round(month / 1000 * price_per_1k, 2),
    }


def _votes(seen: Mapping[str, HealthState], verdict: Tally, leader: str | None) -> str:
    """Each vantage's view of one endpoint in a line, and how the quorum counted it."""
    parts = []
    for name, view in sorted(seen.items()):
        role = verdict.role(name)
        notes = (["leader"] if name == leader else []) + ([role] if role != "counted" else [])
        parts.append(f"{name} {view.health.value}" + (f" ({', '.join(notes)})" if notes else ""))
    return (
        f"seen from {', '.join(parts)}: {len(verdict.down)} of {verdict.counted} counted "
        f"see it down, {verdict.needed} needed"
    )


def _pinned(record: GroupRecord | None, now: float) -> bool:
    return record is not None and record.pinned_until is not None and record.pinned_until > now


def event_dict(event: EventRecord) -> dict[str, Any]:
    details = event.details or {}
    return {
        "at": iso(event.at),
        "model_group_name": event.group,
        "kind": event.kind,
        "message": event.message,
        "transaction_id": details.get("transaction_id"),
        "detection_to_switch_s": details.get("detection_to_switch_s"),
        "details": details or None,
    }


@dataclass(frozen=True, slots=True)
class Voters:
    """Who votes on the endpoints' health, as the database says now (see State.voters)."""

    leader: str | None
    isolated: frozenset[str]
    quorum: int | None

    def tally(self, seen: Mapping[str, HealthState], now: float, fresh_for: float) -> Tally | None:
        """The leader's verdict from the stored views, counted as the leader counts them;
        None with one vantage or none (its own view is the verdict)."""
        if len(seen) < 2:
            return None
        votes = [Vote.of(name, state) for name, state in seen.items()]
        return tally(
            votes, now, fresh_for, quorum=self.quorum, own=self.leader, isolated=self.isolated
        )


@dataclass(frozen=True, slots=True)
class DayUptime:
    day: str  # YYYY-MM-DD, UTC
    probes: int
    uptime: float | None  # percent; None: nothing probed that day


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    at: float  # start of the stretch
    seconds: float
    probes: int
    p50: float | None
    p95: float | None


def daily_uptime(hours: Sequence[Bucket], now: float, days: int) -> list[DayUptime]:
    """One entry per UTC day, oldest first, the last being today (so far)."""
    today = int(now // DAY) * DAY
    first = today - (days - 1) * DAY
    probes = [0] * days
    successes = [0] * days
    for h in hours:
        index = int(h.start - first) // DAY
        if 0 <= index < days:
            probes[index] += h.probes
            successes[index] += h.successes
    return [
        DayUptime(
            datetime.fromtimestamp(first + i * DAY, UTC).date().isoformat(),
            probes[i],
            round(successes[i] * 100.0 / probes[i], 3) if probes[i] else None,
        )
        for i in range(days)
    ]


# The raw results not rolled up yet (at most about the last hour) are drawn finer than
# the hourly rollups, aiming at this many points over the chart, but never finer than
# MIN_STEP nor coarser than MAX_STEP: a daemon started minutes ago still gets a line.
TAIL_POINTS = 48
MIN_STEP, MAX_STEP = 1.0, 300.0


def latency_series(
    hours: Sequence[Bucket],
    raw: Sequence[tuple[float, bool, float | None]],
    now: float,
    span: float,
) -> list[LatencyPoint]:
    """p50/p95 of successful probes over the last `span` seconds, oldest first: a point per
    rolled-up hour, then finer points for the raw results after them."""
    start = now - span
    rolled = [h for h in hours if h.start + h.seconds > start]
    tail = [r for r in raw if r[0] >= start]
    if not rolled and not tail:
        return []
    first = rolled[0].start if rolled else tail[0][0]
    step = min(MAX_STEP, max(MIN_STEP, (now - max(first, start)) / TAIL_POINTS))
    return [
        LatencyPoint(
            b.start,
            b.seconds,
            b.probes,
            _round(hist_percentile(b.histogram, 50)),
            _round(hist_percentile(b.histogram, 95)),
        )
        for b in [*rolled, *fold(tail, step)]
    ]


# The daemon writes its heartbeat every 5 s; three missed beats mean it is gone.
DAEMON_STALE_AFTER = 15.0


def daemon_liveness(beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """Is a daemon running against this database? From its heartbeat row."""
    if beat is None:
        return {
            "running": False,
            "last_seen": None,
            "stopped": False,
            "seconds_ago": None,
            "text": "daemon has never run against this database",
        }
    at = float(beat["at"])
    ago = max(0, round(now - at))
    running = not beat.get("stopped") and now - at <= DAEMON_STALE_AFTER
    if running:
        text = f"daemon running (pid {beat.get('pid')}, last seen {ago} s ago)"
    elif beat.get("stopped"):
        text = f"daemon not running (stopped {ago} s ago)"
    else:
        text = f"daemon not running (last seen {ago} s ago)"
    return {
        "running": running,
        "last_seen": iso(at),
        "stopped": bool(beat.get("stopped")),
        "seconds_ago": ago,
        "text": text,
    }


class State:
    """Reads the state of every configured group from the store, for one `now`."""

    def __init__(self, config: Config, store: Store, config_path: str = "FILE") -> None:
        self.config = config
        self.store = store
        self.switches = SwitchLog(store)
        self.config_path = config_path  # for the commands shown to operators

    def bring_back(self, group_name: str, health: dict[Any, Any] | None = None) -> str:
        """The command that points an unmanaged group at a configured endpoint again: the
        first endpoint up, else the primary."""
        group = self.config.group(group_name)
        assert group is not None, "callers check the group exists"
        health = self.store.health() if health is None else health
        up = [
            e.name
            for e in group.endpoints
            if (state := health.get((group_name, e.name))) is not None
            and state.health.value == "up"
        ]
        to = up[0] if up else group.primary.name
        return f"convai-monitor failover -c {self.config_path} {group_name} --to {to}"

    # --- status --------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """Per group and endpoint, what the daemon has recorded. Shape documented in README."""
        store = self.store
        ids = store.endpoint_ids()
        health = store.health()
        views = store.vantage_health()
        voters = self.voters()
        shapes = store.probe_shapes()
        records = self.switches.groups()
        groups = []
        for group in self.config.groups:
            endpoints = []
            for endpoint in group.endpoints:
                key = (group.model_group_name, endpoint.name)
                endpoint_id = ids.get(key)
                state = health.get(key)
                seen = views.get(key, {})
                verdict = voters.tally(seen, now, 2 * group.policy.interval)
                if verdict is not None and verdict.counted:
                    # What the leader acts on: the quorum of the vantages' views.
                    state = HealthState(verdict.health, since=verdict.since)
                last = store.last_probe(endpoint_id) if endpoint_id is not None else None
                windows = {
                    name: store.window(endpoint_id, seconds, now)
                    if endpoint_id is not None
                    else None
                    for name, seconds in WINDOWS.items()
                }
                endpoints.append(
                    {
                        "name": endpoint.name,
                        # Query strings can carry tokens: never shown.
                        "base_url": display_url(endpoint.base_url),
                        "health": (state.health if state else Health.UNKNOWN).value,
                        "health_since": iso(state.since) if state else None,
                        "last_probe": None
                        if last is None
                        else {
                            "at": iso(last.at),
                            "ok": last.ok,
                            "outcome": last.outcome,
                            "latency_ms": _round(last.latency_ms),
                            "http_status": last.http_status,
                            "detail": last.detail,
                        },
                        "uptime": {
                            name: _round(w.uptime * 100.0, 3)
                            if w and w.uptime is not None
                            else None
                            for name, w in windows.items()
                        },
                        "latency_ms": _latency(windows["1h"]),
                        "latency_ms_24h": _latency(windows["24h"]),
                        # The request shape the probe was adapted to; None: as configured.
                        "probe": shapes.get(key),
                        # Each instance's own judgement, and whether it counts.
                        "vantages": {
                            name: {
                                "health": view.health.value,
                                "since": iso(view.since),
                                "last_probe_at": iso(view.last_probe_at),
                                "vote": verdict.role(name) if verdict else "counted",
                            }
                            for name, view in sorted(seen.items())
                        },
                        # Several vantages: how many judge it down and up, of how many
                        # counted, and how many votes make a verdict.
                        "quorum": None
                        if verdict is None
                        else {
                            "needed": verdict.needed,
                            "counted": verdict.counted,
                            "down": len(verdict.down),
                            "up": len(verdict.up),
                        },
                        "usage_24h": _usage(
                            store.usage(endpoint_id, now - DAY, now)
                            if endpoint_id is not None
                            else None,
                            endpoint.price_per_1k_tokens,
                        ),
                    }
                )
            record = records.get(group.model_group_name)
            switch = self.switches.last_switch(group.model_group_name)
            pinned = _pinned(record, now)
            groups.append(
                {
                    "model_group_name": group.model_group_name,
                    "state": None
                    if record is None
                    else self._pin_kind(group.model_group_name)
                    if pinned
                    else record.state,
                    "active_endpoint": record.active_endpoint if record else None,
                    "registered_base_url": display_url(record.registered_base_url)
                    if record and record.registered_base_url
                    else None,
                    "condition": record.condition if record else None,
                    # Convai points at no configured endpoint: what brings it back.
                    "unmanaged_fix": self.bring_back(group.model_group_name)
                    if record is not None and record.condition == "unmanaged"
                    else None,
                    "pinned": {
                        "endpoint": record.pinned_endpoint,
                        "until": iso(record.pinned_until),
                    }
                    if pinned and record is not None
                    else None,
                    "last_switch": None
                    if switch is None
                    else {
                        "at": iso(switch.completed_at),
                        "from": switch.from_endpoint,
                        "to": switch.to_endpoint,
                        "kind": switch.kind,
                        "reason": switch.reason,
                        "transaction_id": switch.transaction_id,
                    },
                    "endpoints": endpoints,
                }
            )
        unmonitored = [
            {
                "model_group_name": r.name,
                "base_url": display_url(r.registered_base_url) if r.registered_base_url else None,
            }
            for r in records.values()
            if not r.monitored and self.config.group(r.name) is None
        ]
        deliveries = Deliveries(store).summary()
        last_failure = deliveries.last_failure
        if last_failure is not None:
            failed_id = str(last_failure.pop("target_id", ""))
            last_failure["target"] = self._target_names().get(
                failed_id, "a target no longer configured"
            )
        return {
            "generated_at": iso(now),
            "cluster": self.cluster(),
            # What stays the same between two reads of one heartbeat (the page and
            # `status --json` agree); "N s ago" is for people and is worded by the caller.
            "daemon": {
                k: v
                for k, v in daemon_liveness(self.store.last_beat(), now).items()
                if k in ("running", "last_seen", "stopped")
            },
            "groups": groups,
            "unmonitored": unmonitored,
            "alerts": {
                "pending": deliveries.pending,
                "delivered": deliveries.delivered,
                "failed": deliveries.failed,
                "last_failure": last_failure,
            },
        }

    def voters(self) -> Voters:
        """Who votes on the endpoints' health now: the live leader (its view is always
        counted) and the instances that are cut off (theirs never are)."""
        lease, instances = Leases(self.store).read()
        return Voters(
            lease.holder if lease.live else None,
            frozenset(i.name for i in instances if i.isolated),
            self.config.ha.quorum,
        )

    def cluster(self) -> dict[str, Any]:
        """The leader, its lease and every instance's last heartbeat. Times are the
        database's clock, as absolute times: two reads of an idle system agree."""
        lease, instances = Leases(self.store).read()
        return {
            "leader": lease.holder if lease.live else None,
            "fencing_token": lease.token,
            "lease_expires_at": iso(lease.expires_at) if lease.live else None,
            "instances": [
                {
                    "name": i.name,
                    "version": i.version,
                    "leader": lease.live and i.name == lease.holder,
                    "heartbeat_at": iso(i.heartbeat_at),
                    "started_at": iso(i.started_at),
                    "isolated": i.isolated,
                }
                for i in instances
            ],
        }

    # --- history -------------------------------------------------------------------------

    def history(self, group: str | None, since: float, now: float) -> list[dict[str, Any]]:
        """The audit log of the last `since` seconds, oldest first."""
        return [event_dict(e) for e in self.switches.history(group, now - since)]

    # --- the page ------------------------------------------------------------------------

    def page(self, now: float, since: float = DAY * 7) -> dict[str, Any]:
        """`status` plus what the page draws: per endpoint a bar of days and a latency
        series, and the timeline (events and alert deliveries) newest first."""
        status = self.status(now)
        ids = self.store.endpoint_ids()
        start = (int(now // DAY) - (PAGE_DAYS - 1)) * DAY
        span = PAGE_HOURS * HOUR
        for group in status["groups"]:
            for endpoint in group["endpoints"]:
                endpoint_id = ids.get((group["model_group_name"], endpoint["name"]))
                hours, raw = (
                    self.store.hours(endpoint_id, start, now, histograms_from=now - span)
                    if endpoint_id is not None
                    else ([], [])
                )
                endpoint["days"] = [
                    {"day": d.day, "probes": d.probes, "uptime": d.uptime}
                    for d in daily_uptime(hours + fold(raw, HOUR), now, PAGE_DAYS)
                ]
                endpoint["latency"] = [
                    {
                        "at": iso(p.at),
                        "seconds": p.seconds,
                        "probes": p.probes,
                        "p50": p.p50,
                        "p95": p.p95,
                    }
                    for p in latency_series(hours, raw, now, span)
                ]
        events = self.switches.history(None, now - since)
        timeline = [{**event_dict(e), "source": "event"} for e in events]
        timeline += self._deliveries(now - since)
        timeline.sort(key=lambda e: e["at"] or "", reverse=True)
        status["timeline"] = timeline
        status["timeline_since"] = iso(now - since)
        return status

    def _deliveries(self, since: float) -> list[dict[str, Any]]:
        """Finished alerts for the timeline: one entry per event for those delivered (to
        every target it went to), one per target for those that failed, with the error."""
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for d in Deliveries(self.store).finished(since, self._target_names()):
            delivered = d["status"] == "delivered" and d["event"] is not None
            key = ("event", d["event"]) if delivered else ("row", d["id"])
            entry = merged.setdefault(key, {**d, "targets": []})
            entry["targets"].append(d["target"])
            entry["at"] = max(entry["at"], d["at"])
        return [
            {
                "at": iso(d["at"]),
                "model_group_name": d["group"],
                "kind": "alert_" + d["status"],
                "message": f"alert about {d['kind']} {d['status']} to {', '.join(d['targets'])}"
                + (f" after {d['attempts']} attempts: {d['error']}" if d["error"] else ""),
                "transaction_id": None,
                "detection_to_switch_s": None,
                "details": None,
                "source": "alert",
            }
            for d in merged.values()
        ]

    def _pin_kind(self, group: str) -> str:
        """`held` when the group's pin came from `failover --hold`, else `pinned`: both are
        a pin underneath, told apart by the event that set it."""
        with self.store.session() as session:
            kind = session.scalar(
                select(EventRow.kind)
                .where(
                    EventRow.group_name == group,
                    EventRow.kind.in_(("pinned", "held", "unpinned")),
                )
                .order_by(EventRow.at.desc(), EventRow.id.desc())
                .limit(1)
            )
        return "held" if kind == "held" else "pinned"

    def _target_names(self) -> dict[str, str]:
        from monitor.alerts.targets import target_names

        targets = self.config.alerts.targets
        return target_names([(t.url.get_secret_value(), t.name) for t in targets])

    # --- explain -------------------------------------------------------------------------

    def explain(self, group_name: str, now: float) -> list[str]:
        """Why the group is on its endpoint now, in plain words, from the records."""
        group = self.config.group(group_name)
        assert group is not None, "callers check the group exists"
        switches = self.switches
        record = switches.group(group_name)
        if record is None:
            return [f"{group_name}: the daemon has not recorded anything about this group yet."]
        health = self.store.health()
        lines = []
        daemon = daemon_liveness(self.store.last_beat(), now)
        if not daemon["running"]:
            lines.append(f"Note: {daemon['text']}; what follows is what it last recorded.")
        active = record.active_endpoint
        primary = group.primary.name
        if active is None:
            lines.append(
                f"{group_name} points at {display_url(record.registered_base_url)}, which is none "
                "of the configured endpoints: someone changed it outside this daemon, so it is "
                "unmanaged: nothing is switched until it points at one. To bring it back: "
                + self.bring_back(group_name, health)
            )
        elif active == primary:
            lines.append(f"{group_name} is on its primary endpoint, {primary}.")
        else:
            lines.append(f"{group_name} is on {active}, not on its primary {primary}.")
        last = switches.last_switch(group_name)
        if last is not None and last.completed_at is not None:
            ago = format_duration(now - last.completed_at)
            how = "automatically" if last.automatic else "by an operator"
            done = {
                # Same endpoint, new address or key: Convai was updated, the group did not move.
                "rehome": f"Convai was moved to {last.to_endpoint}'s new base_url",
                "key_rotation": f"Convai was given {last.to_endpoint}'s new api_key",
            }.get(
                last.kind,
                f"It was switched {how} from {last.from_endpoint} to {last.to_endpoint}",
            )
            lines.append(
                f"{done} {ago} ago ({last.kind}): {last.reason}."
                + (f" Convai transactionID {last.transaction_id}." if last.transaction_id else "")
            )
        else:
            lines.append("The daemon has never switched it.")
        views = self.store.vantage_health()
        voters = self.voters()
        for endpoint in group.endpoints:
            key = (group_name, endpoint.name)
            state = health.get(key)
            seen = views.get(key, {})
            verdict = voters.tally(seen, now, 2 * group.policy.interval)
            if verdict is not None and verdict.counted:
                state = HealthState(verdict.health, since=verdict.since)
                health[key] = state
            if state is None:
                continue
            since = f" for {format_duration(now - state.since)}" if state.since else ""
            role = " (primary)" if endpoint.name == primary else ""
            lines.append(f"  {endpoint.name}{role}: {state.health.value}{since}")
            if verdict is not None:
                lines.append("    " + _votes(seen, verdict, voters.leader))
        pinned_now = _pinned(record, now)
        if active and active != primary:
            state = health.get((group_name, primary))
            policy = group.policy
            if state is not None and state.health.value == "up":
                if pinned_now:
                    lines.append(
                        "The primary is up; the group stays where it is while it is pinned "
                        "(see below)."
                    )
                elif policy.failback == "manual":
                    lines.append(
                        f"The primary is up again; failback is manual. To return: convai-monitor "
                        f"failover -c FILE {group_name} --to {primary}"
                    )
                else:
                    # The same wait decide() applies: doubled for each repeat switch.
                    counted_from = now - HOUR
                    if record.operator_at is not None:
                        counted_from = max(counted_from, record.operator_at)
                    wait = failback_wait(
                        policy.failback_after, len(switches.switch_times(group_name, counted_from))
                    )
                    lines.append(
                        f"The primary is up; it fails back automatically once it has been up for "
                        f"{format_duration(wait)} and {format_duration(policy.min_dwell)} have "
                        "passed since the last switch."
                    )
            else:
                lines.append("The primary is not up, so the group stays where it is.")
        if pinned_now:
            assert record.pinned_until is not None
            lines.append(
                f"Pinned to {record.pinned_endpoint} for another "
                f"{format_duration(record.pinned_until - now)}: no automatic switch until then."
            )
        if record.condition:
            lines.append(f"Current condition: {record.condition} (state {record.state}).")
        return lines
