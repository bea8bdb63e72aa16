"""Alert text: a one-line title and a short body, built from an event. Pure, redacted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from monitor.domain.alerts import Effect, Rule
from monitor.redact import redact

HEADLINES = {
    "failover": "failed over",
    "failover_failed": "failover FAILED",
    "all_down": "all endpoints down",
    "isolated": "monitor looks cut off; switching nothing",
    "flapping": "flapping; switching frozen",
    "preflight_failed": "no fallback passed pre-flight",
    "endpoint_down": "a fallback is down",
    "auth_error": "an endpoint rejects its API key",
    "drift": "changed outside the monitor",
    "primary_recovered": "primary is back; failback is manual",
    "switch_abandoned": "an interrupted switch was not applied",
    "model_mismatch": "model name differs from Convai's",
    "not_registered": "no longer registered in Convai",
    "failback": "failed back; resolved",
    "recovered": "recovered; resolved",
    "manual": "switched by an operator",
    "endpoint_up": "a fallback is back",
    "dry_run": "would switch (dry run)",
    "unmonitored": "removed from the config",
    "pinned_down": "pinned to a down endpoint",
    "unmanaged": "points at no configured endpoint; unmanaged",
    "managed": "points at a configured endpoint again",
    "rehome": "moved to its endpoint's new base_url",
    "key_rotation": "endpoint key rotated in Convai",
    "convai_auth_failed": "Convai rejects the monitor's key; no switch possible",
    "convai_auth_ok": "Convai accepts the monitor's key again; resolved",
    "convai_unreachable": "Convai unreachable; failover impossible",
    "convai_reachable": "Convai reachable again; resolved",
    "reminder": "still unresolved",
    "test": "test notification",
}


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


def probe_text(probe: dict[str, Any]) -> str:
    """`http_5xx (HTTP 500): overloaded`, saying the status once even when the probe's
    detail starts with it."""
    status = probe.get("http_status")
    detail = str(probe.get("detail") or "")
    if status and detail.startswith(f"HTTP {status}"):
        detail = detail.removeprefix(f"HTTP {status}").lstrip(":").strip()
    return (
        str(probe.get("outcome"))
        + (f" (HTTP {status})" if status else "")
        + (f": {detail}" if detail else "")
    )


def render(
    *,
    kind: str,
    group: str,
    message: str,
    details: dict[str, Any] | None,
    rule: Rule,
    incident: int | None,
    opened_at: float | None = None,
    prefix: str | None = None,
    drill: bool = False,
) -> tuple[str, str]:
    details = details or {}
    tag = "DRILL " if drill else ""
    label = "RESOLVED" if rule.effect is Effect.CLOSE else rule.severity.label.upper()
    head = f"{prefix} " if prefix else ""
    title = f"{tag}[{label}] {head}{group}: {HEADLINES.get(kind, kind)}"
    lines = [message]
    probes = details.get("failed_probes") or []
    if probes:
        lines.append("Last failed probes:")
        for probe in probes[-5:]:
            lines.append(f"  {_clock(float(probe['at']))} {probe_text(probe)}")
    if details.get("detection_to_switch_s") is not None:
        lines.append(f"Detection to switch: {details['detection_to_switch_s']}s")
    if details.get("transaction_id"):
        lines.append(f"Convai transactionID: {details['transaction_id']}")
    if details.get("broken"):
        lines.append(f"Broken: {details['broken']}")
    if details.get("where"):
        lines.append(f"The group is {details['where']}")
    if details.get("command"):
        lines.append(f"To act: {details['command']}")
    if details.get("unpin"):
        lines.append(f"Or let it switch by itself again: {details['unpin']}")
    if incident is not None:
        since = f", open since {_clock(opened_at)}" if opened_at else ""
        lines.append(f"Incident #{incident}{since}")
    if drill:
        lines.append("This is a drill: nothing was changed in Convai.")
    return redact(title), redact("\n".join(lines))
