"""Check reports and the text helpers (tables, times, figures) the CLI renders with.

The state itself (status, history, explain) is read in monitor.state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.domain.outcome import ProbeResult
from monitor.redact import redact


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


def dumps(data: Any) -> str:
    """JSON as `--json` prints it and the API serves it: indented, redacted."""
    return redact(json.dumps(data, indent=2, sort_keys=False))


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
