"""Operator actions run from the CLI: manual failover and pins.

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
from monitor.runtime.failover import find_endpoint
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.store import Store
from monitor.store.switching import SwitchLog

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
    hold: float | None = None,
    yes: bool = False,
) -> ManualResult:
    """Move the group to `to` now; then hold it there `hold` seconds (None or 0: no hold),
    so automatic failback does not undo what the operator meant."""
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
        message = f"{group_name} is already on {to}; nothing to do"
        if hold:
            until = pin(store, group_name, to, hold)
            message = f"{group_name} is already on {to}; held there until {_iso(until)}"
        return ManualResult(None, current, message)
    # Convai's model is what characters get (update cannot change it): pre-flight with it.
    model = registered.model_name or group.model_name
    models = {group_name: model} if model else {}
    targets = {t.endpoint: t for t in build_targets(config, models) if t.group == group_name}
    prober = ChatProber(1, config.probes.max_body_bytes, config.instance.name)
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
                hold=hold or None,
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


def _iso(at: float) -> str:
    from monitor.report import iso

    return str(iso(at))


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
