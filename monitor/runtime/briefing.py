"""What a critical page must tell on-call: what is broken (outcome, since when), where the
group is, and the exact command that acts on it. Built from the engine's evidence at the
moment the event is recorded, so the page is true when it is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from monitor.domain.failover import Action, Decision, GroupView, pinned
from monitor.domain.health import Health, HealthState
from monitor.durations import format_duration
from monitor.runtime.evidence import Evidence
from monitor.store import EndpointKey


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


def broken(
    group: str,
    endpoint: str,
    evidence: dict[EndpointKey, Evidence],
    states: dict[EndpointKey, HealthState],
    now: float,
) -> str:
    """`vllm: timeout since 12:01:03Z (2m 5s)`."""
    seen = evidence.get((group, endpoint))
    state = states.get((group, endpoint))
    last = seen.recent[-1] if seen is not None and seen.recent else None
    if last is not None:
        what = last.outcome.value + (f" HTTP {last.http_status}" if last.http_status else "")
    else:
        what = state.health.value if state is not None else "unknown"
    since = seen.first_failure_at if seen is not None else None
    if since is None and state is not None and state.health is Health.DOWN:
        since = state.since
    return f"{endpoint}: {what}" + (
        f" since {clock(since)} ({format_duration(now - since)})" if since else ""
    )


def brief(
    *,
    group: str,
    view: GroupView,
    decision: Decision,
    evidence: dict[EndpointKey, Evidence],
    states: dict[EndpointKey, HealthState],
    config_path: str | None,
    now: float,
) -> dict[str, Any]:
    config = config_path or "CONFIG"
    health = {e.name: e.health for e in view.endpoints}
    # The active endpoint first: it is what characters are talking to.
    down = [e.name for e in view.endpoints if e.health is Health.DOWN and e.name != view.active]
    if view.active is not None and health.get(view.active, Health.DOWN) is Health.DOWN:
        down.insert(0, view.active)
    what = "; ".join(broken(group, n, evidence, states, now) for n in down)
    if decision.action is Action.ISOLATED:
        # Why nothing is switched: Convai fails too, so this host's network is suspect.
        what = f"{what}; Convai unreachable too" if what else "Convai unreachable"
    if view.active is None:
        where = "on a base_url that matches no configured endpoint"
    elif view.active in health:
        where = f"on {view.active} ({health[view.active].value})"
    else:
        where = f"on {view.active} (no longer in the config)"
    if pinned(view, now):
        until = f" until {clock(view.pinned_until)}" if view.pinned_until is not None else ""
        where = f"{where}, pinned to {view.pinned_to}{until}"
    to = decision.candidates[0] if decision.candidates else None
    move = f"convai-monitor failover -c {config} {group} --to {to}" if to else None
    check = f"convai-monitor check -c {config} --group {group}"
    command = {
        Action.FLAPPING: move,
        Action.PINNED_DOWN: move,
        Action.FAILOVER: f"convai-monitor explain -c {config} {group}",
    }.get(decision.action) or check
    return {"broken": what or "no endpoint is judged down", "where": where, "command": command}
