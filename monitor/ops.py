"""Operator actions run from the CLI: manual failover, pins, the audit log, explanations.

They share the database with a running daemon (which re-reads group records on every
evaluation) and take the same care as automatic switches: pre-flight, compare-and-set,
intent, update, read-back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeVar

from monitor.config import Config, GroupConfig, build_targets
from monitor.convai import ConvaiClient
from monitor.domain.outcome import ProbeResult
from monitor.durations import format_duration
from monitor.probes import ChatProber
from monitor.report import iso
from monitor.runtime.failover import find_endpoint
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.store import Store
from monitor.store.switching import EventRecord, GroupRecord, SwitchLog

T = TypeVar("T")


class OperatorError(Exception):
    """The operator asked for something that cannot be done; one line, exit 2."""


async def _direct(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # The CLI is single-threaded: store calls run inline.
    return fn(*args, **kwargs)


def require_group(config: Config, name: str) -> GroupConfig:
    group = config.group(name)
    if group is None:
        known = ", ".join(g.model_group_name for g in config.groups)
        raise OperatorError(f"no group named {name!r} in the config (configured: {known})")
    return group


def require_endpoint(group: GroupConfig, name: str) -> None:
    if group.endpoint(name) is None:
        known = ", ".join(e.name for e in group.endpoints)
        raise OperatorError(
            f"group {group.model_group_name} has no endpoint {name!r} (configured: {known})"
        )


@dataclass(frozen=True, slots=True)
class ManualResult:
    outcome: SwitchOutcome | None
    from_endpoint: str | None
    message: str


async def manual_failover(
    config: Config,
    store: Store,
    convai: ConvaiClient,
    group_name: str,
    to: str,
    *,
    force: bool,
    yes: bool = False,
) -> ManualResult:
    from monitor.app import switch_log

    group = require_group(config, group_name)
    require_endpoint(group, to)
    if force and not yes:
        down = down_text(store, group_name, to, time.time())
        if down is not None:
            raise OperatorError(
                f"{down}: --force skips the pre-flight and sends every character of "
                f"{group_name} to it; add --yes to switch anyway"
            )
    switches = switch_log(config, store)
    listing = await convai.list_models()
    registered = listing.get(group_name)
    if registered is None:
        raise OperatorError(f"Convai has no model group {group_name}")
    current = find_endpoint(group, registered.base_url)
    # The operator acts on what Convai says now: adopt it as the belief first, so the
    # compare-and-set below guards against anything that changes in between.
    switches.observe_registration(
        group_name,
        registered_base_url=registered.base_url,
        model_name=registered.model_name,
        monitored=True,
        active_endpoint=current,
        at=time.time(),
    )
    if current == to:
        return ManualResult(None, current, f"{group_name} is already on {to}; nothing to do")
    model = group.model_name or registered.model_name
    targets = {
        t.endpoint: t for t in build_targets(config, {group_name: model}) if t.group == group_name
    }
    prober = ChatProber(1, config.probes.max_body_bytes)
    try:

        async def probe(target: Any) -> ProbeResult:
            return await prober.probe(target)

        switcher = Switcher(convai, switches, _direct, probe)
        outcome = await switcher.switch(
            SwitchRequest(
                group=group_name,
                kind="manual",
                automatic=False,
                expected_active=current,
                candidates=(targets[to],),
                reason=f"operator switched to {to}" + (" (pre-flight skipped)" if force else ""),
                preflight=not force,
                details={"to_primary": to == group.primary.name},
            ),
            registered.base_url,
        )
    finally:
        await prober.aclose()
    if outcome.status in ("preflight_failed", "drift", "skipped"):
        # Nothing was switched, but the operator's attempt belongs in the audit log like
        # any other (a failed update is recorded by the switch itself).
        switches.record(
            group_name,
            "manual_failed",
            f"operator switch {current} -> {to} not done ({outcome.status}): {outcome.message}",
            time.time(),
        )
    return ManualResult(outcome, current, outcome.message)


def down_text(store: Store, group: str, endpoint: str, now: float) -> str | None:
    """`backup is down (for 3m 2s; last probe: model_not_found HTTP 404)`, or None."""
    state = store.health().get((group, endpoint))
    if state is None or state.health.value != "down":
        return None
    since = f"for {format_duration(now - state.since)}" if state.since else "down"
    endpoint_id = store.endpoint_ids().get((group, endpoint))
    last = store.last_probe(endpoint_id) if endpoint_id is not None else None
    probe = ""
    if last is not None:
        status = f" HTTP {last.http_status}" if last.http_status else ""
        probe = f"; last probe: {last.outcome}{status}"
    return f"{endpoint} is down ({since}{probe})"


def pin(store: Store, group: str, endpoint: str, seconds: float) -> float:
    until = time.time() + seconds
    SwitchLog(store).pin(group, endpoint, until, time.time())
    return until


def unpin(store: Store, group: str) -> bool:
    return SwitchLog(store).unpin(group, time.time())


def history(store: Store, group: str | None, since: float) -> list[EventRecord]:
    return SwitchLog(store).history(group, time.time() - since)


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


def explain(config: Config, store: Store, group_name: str, now: float) -> list[str]:
    """Why the group is on its endpoint now, in plain words, from the records."""
    group = require_group(config, group_name)
    switches = SwitchLog(store)
    record: GroupRecord | None = switches.group(group_name)
    if record is None:
        return [f"{group_name}: the daemon has not recorded anything about this group yet."]
    health = store.health()
    lines = []
    active = record.active_endpoint
    primary = group.primary.name
    if active is None:
        lines.append(
            f"{group_name} points at {record.registered_base_url}, which is none of the configured "
            "endpoints: someone changed it outside this daemon, so it is left alone."
        )
    elif active == primary:
        lines.append(f"{group_name} is on its primary endpoint, {primary}.")
    else:
        lines.append(f"{group_name} is on {active}, not on its primary {primary}.")
    last = switches.last_switch(group_name)
    if last is not None and last.completed_at is not None:
        ago = format_duration(now - last.completed_at)
        how = "automatically" if last.automatic else "by an operator"
        lines.append(
            f"It was switched {how} from {last.from_endpoint} to {last.to_endpoint} {ago} ago "
            f"({last.kind}): {last.reason}."
            + (f" Convai transactionID {last.transaction_id}." if last.transaction_id else "")
        )
    else:
        lines.append("The daemon has never switched it.")
    for endpoint in group.endpoints:
        state = health.get((group_name, endpoint.name))
        if state is None:
            continue
        since = f" for {format_duration(now - state.since)}" if state.since else ""
        role = " (primary)" if endpoint.name == primary else ""
        lines.append(f"  {endpoint.name}{role}: {state.health.value}{since}")
    if active and active != primary:
        state = health.get((group_name, primary))
        policy = group.policy
        if state is not None and state.health.value == "up":
            if policy.failback == "manual":
                lines.append(
                    f"The primary is up again; failback is manual. To return: convai-monitor "
                    f"failover -c FILE {group_name} --to {primary}"
                )
            else:
                lines.append(
                    f"The primary is up; it fails back automatically once it has been up for "
                    f"{format_duration(policy.failback_after)} (longer after repeated switches) "
                    f"and {format_duration(policy.min_dwell)} have passed since the last switch."
                )
        else:
            lines.append("The primary is not up, so the group stays where it is.")
    if record.pinned_endpoint and record.pinned_until and record.pinned_until > now:
        lines.append(
            f"Pinned to {record.pinned_endpoint} for another "
            f"{format_duration(record.pinned_until - now)}: no automatic switch until then."
        )
    if record.condition:
        lines.append(f"Current condition: {record.condition} (state {record.state}).")
    return lines
