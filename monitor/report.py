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


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
