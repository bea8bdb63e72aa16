"""Status and check reports: plain data for --json, and tables for people."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.config import Config
from monitor.domain.health import Health
from monitor.domain.outcome import ProbeResult
from monitor.store import Store
from monitor.store.outbox import Deliveries
from monitor.store.switching import GroupRecord, SwitchLog

# Uptime over each window; 7d and 30d are answered from the hourly rollups.
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def check_report(results: Sequence[ProbeResult]) -> dict[str, Any]:
    return {
        "results": [
            {
                "model_group_name": r.group,
                "endpoint": r.endpoint,
                "ok": r.ok,
                "outcome": r.outcome.value,
                "latency_ms": _round(r.latency_ms),
                "http_status": r.http_status,
                "detail": r.detail,
            }
            for r in results
        ]
    }


def status_report(config: Config, store: Store, now: float) -> dict[str, Any]:
    """Per group and endpoint, what the daemon has recorded. Shape documented in README."""
    ids = store.endpoint_ids()
    health = store.health()
    switches = SwitchLog(store)
    records = switches.groups()
    groups = []
    for group in config.groups:
        endpoints = []
        for endpoint in group.endpoints:
            key = (group.model_group_name, endpoint.name)
            endpoint_id = ids.get(key)
            state = health.get(key)
            last = store.last_probe(endpoint_id) if endpoint_id is not None else None
            windows = {
                name: store.window(endpoint_id, seconds, now) if endpoint_id is not None else None
                for name, seconds in WINDOWS.items()
            }
            endpoints.append(
                {
                    "name": endpoint.name,
                    "base_url": endpoint.base_url,
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
                        name: _round(w.uptime * 100.0, 3) if w and w.uptime is not None else None
                        for name, w in windows.items()
                    },
                    "latency_ms": _latency(windows["1h"]),
                    "latency_ms_24h": _latency(windows["24h"]),
                }
            )
        record = records.get(group.model_group_name)
        switch = switches.last_switch(group.model_group_name)
        pinned = (
            record is not None and record.pinned_until is not None and record.pinned_until > now
        )
        groups.append(
            {
                "model_group_name": group.model_group_name,
                "state": _state(record, pinned),
                "active_endpoint": record.active_endpoint if record else None,
                "registered_base_url": record.registered_base_url if record else None,
                "condition": record.condition if record else None,
                "pinned": {"endpoint": record.pinned_endpoint, "until": iso(record.pinned_until)}
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
        {"model_group_name": r.name, "base_url": r.registered_base_url}
        for r in records.values()
        if not r.monitored and config.group(r.name) is None
    ]
    deliveries = Deliveries(store).summary()
    last_failure = deliveries.last_failure
    if last_failure is not None:
        from monitor.alerts.targets import target_names

        names = target_names([(t.url.get_secret_value(), t.name) for t in config.alerts.targets])
        key = last_failure.pop("target_id", None)
        last_failure["target"] = names.get(str(key), "a target no longer configured")
    return {
        "generated_at": iso(now),
        "groups": groups,
        "unmonitored": unmonitored,
        "alerts": {
            "pending": deliveries.pending,
            "delivered": deliveries.delivered,
            "failed": deliveries.failed,
            "last_failure": last_failure,
        },
    }


def _state(record: GroupRecord | None, pinned: bool) -> str | None:
    if record is None:
        return None
    return "pinned" if pinned else record.state


def _latency(window: Any) -> dict[str, float | None]:
    if window is None:
        return {"p50": None, "p95": None}
    return {"p50": _round(window.p50_ms), "p95": _round(window.p95_ms)}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def ago(seconds: float) -> str:
    """`12s ago`, `3m ago`, `2h 5m ago`, `3d ago`: how long ago, to the unit that matters."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 86400:
        hours, minutes = divmod(int(seconds // 60), 60)
        return f"{hours}h {minutes}m ago" if minutes else f"{hours}h ago"
    return f"{seconds // 86400:.0f}d ago"


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def history_lines(events: Sequence[Any], now: float, width: int) -> list[str]:
    """The audit log for people: one heading line per event (UTC and how long ago, group,
    kind), the message wrapped under it to the terminal's width."""
    import textwrap

    width = max(40, width)
    lines: list[str] = []
    for event in events:
        head = f"{utc(event.at)}  {ago(now - event.at):>8}  {event.group}  {event.kind}"
        lines.append(head[:width])
        text = event.message
        tid = (event.details or {}).get("transaction_id")
        if tid:
            text += f" (Convai transactionID {tid})"
        lines.extend(
            textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    ") or ["    -"]
        )
    return lines


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
