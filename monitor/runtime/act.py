"""Acting on a decision: run the switch through the Switcher, record lasting conditions,
and back off retries of switches that went nowhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog

from monitor.config import GroupConfig
from monitor.domain.failover import Action, Decision, GroupView, pinned
from monitor.domain.health import Health
from monitor.runtime.briefing import brief
from monitor.runtime.context import Context
from monitor.runtime.evidence import Evidence
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.runtime.sync import Sync
from monitor.store import EndpointKey
from monitor.store.switching import GroupRecord

log = structlog.get_logger()

# Critical conditions: their page says what is broken, where the group is, what to run.
_BRIEFED = frozenset({Action.ALL_DOWN, Action.ISOLATED, Action.FLAPPING, Action.PINNED_DOWN})

# Switches whose failure leaves characters on a broken endpoint or key: on-call hears.
_ANNOUNCED = frozenset({Action.FAILOVER, Action.REHOME, Action.KEY_ROTATION})
# Conditions that end with a `recovered` event when the group is healthy again.
TROUBLE = frozenset(
    {
        Action.ALL_DOWN,
        Action.ISOLATED,
        Action.FLAPPING,
        "failover_failed",
        "preflight_failed",
        "not_registered",
    }
)
# Decisions that leave characters served when the active endpoint is up (a STAY clears a
# trouble condition on the way): the group's open incident then waits without reminders.
_SERVED = frozenset(
    {
        Action.STAY,
        Action.FAILBACK,
        Action.PRIMARY_RECOVERED,
        Action.PINNED,
        Action.REHOME,
        Action.KEY_ROTATION,
    }
)
# After a switch attempt that went nowhere (update failed, no candidate passed pre-flight)
# the group is retried after RETRY_BASE seconds, doubling up to RETRY_MAX: a revoked Convai
# key must not mean an update call (and pre-flight probes) every tick. A switch that found
# Convai moved (drift) or the belief changed (skipped) backs off the same way: a group
# missing from Convai's list must not cost a pre-flight and two list calls every second.
RETRY_BASE = 2.0
RETRY_MAX = 120.0


class Actor:
    def __init__(
        self,
        ctx: Context,
        switcher: Switcher,
        evidence: dict[EndpointKey, Evidence],
        sync: Sync,
    ) -> None:
        self.ctx = ctx
        self.beliefs = ctx.beliefs
        self.switcher = switcher
        self.evidence = evidence
        self.sync = sync
        self.resync: Callable[[], Coroutine[Any, Any, None]] = sync.sync
        self.retry: dict[str, tuple[float, float]] = {}  # group -> (not before, last delay)
        self.dry_noted: set[str] = set()

    def waiting(self, name: str, now: float) -> bool:
        """A switch of this group went nowhere a moment ago: not yet again."""
        return self.retry.get(name, (0.0, 0.0))[0] > now

    async def act(
        self,
        group: GroupConfig,
        record: GroupRecord,
        view: GroupView,
        decision: Decision,
        now: float,
    ) -> None:
        name = group.model_group_name
        active = next((e for e in view.endpoints if e.name == view.active), None)
        active_up = active is not None and active.health is Health.UP
        if (
            record.condition == Action.PINNED_DOWN
            and decision.action is not Action.PINNED_DOWN
            and (active_up or not pinned(view, now))
        ):
            why = f"{view.active} is up again" if active_up else "the pin ended"
            await self.beliefs.condition(
                name,
                "recovered",
                f"recovered: {why}; no longer pinned to a down endpoint",
                now,
                clear=True,
            )
            record = replace(record, condition=None)
        if (
            active_up
            and decision.action in _SERVED
            and (decision.action is Action.STAY or record.condition not in TROUBLE)
        ):
            self.beliefs.serving.add(name)
        else:
            self.beliefs.serving.discard(name)
        if decision.switches:
            await self._switch(group, record, decision, view)
            return
        if decision.action is Action.STAY:
            self.dry_noted.discard(name)
            if not active_up:
                return
            # The incident, if any, is over: the next one starts its retries afresh.
            self.retry.pop(name, None)
            if record.condition in TROUBLE:
                await self.beliefs.condition(
                    name, "recovered", f"recovered: {decision.reason}", now, clear=True
                )
            elif view.active == view.endpoints[0].name and name in self.beliefs.incidents:
                # The incident ends when the group is well again, whatever switch got it
                # there: a failover that landed on the primary, an operator's move, a pin
                # that ended. Otherwise reminders would page about an outage that is over.
                await self.beliefs.condition(
                    name,
                    "recovered",
                    f"recovered: back on its primary {view.active}, which is up",
                    now,
                    clear=True,
                )
            return
        details = None
        reason = decision.reason
        config = self.ctx.config_path or "CONFIG"
        if decision.action is Action.PRIMARY_RECOVERED and decision.candidates:
            to = decision.candidates[0]
            details = {"command": f"convai-monitor failover -c {config} {name} --to {to}"}
        elif decision.action is Action.PINNED_DOWN and decision.candidates:
            to = decision.candidates[0]
            move = f"convai-monitor failover -c {config} {name} --to {to}"
            unpin = f"convai-monitor unpin -c {config} {name}"
            reason = f"{reason}: pinned to a down endpoint; unpin ({unpin}) or move it ({move})"
            details = {"unpin": unpin}
        if decision.action in _BRIEFED:
            details = {**self._brief(name, view, decision, now), **(details or {})}
        await self.beliefs.condition(name, decision.action.value, reason, now, details=details)

    def _brief(self, name: str, view: GroupView, decision: Decision, now: float) -> dict[str, Any]:
        return brief(
            group=name,
            view=view,
            decision=decision,
            evidence=self.evidence,
            states=self.ctx.monitor.states,
            config_path=self.ctx.config_path,
            now=now,
        )

    async def _switch(
        self, group: GroupConfig, record: GroupRecord, decision: Decision, view: GroupView
    ) -> None:
        name = group.model_group_name
        active = record.active_endpoint
        kind = decision.action.value
        targets = self.ctx.monitor.targets
        candidates = tuple(targets[(name, n)] for n in decision.candidates if (name, n) in targets)
        evidence = self.evidence.get((name, active or ""), Evidence())
        details: dict[str, Any] = {
            "reason": decision.reason,
            "failed_probes": [
                {
                    "at": r.at,
                    "outcome": r.outcome.value,
                    "http_status": r.http_status,
                    "detail": r.detail,
                }
                for r in evidence.recent
            ],
        }
        briefing: dict[str, Any] = {}
        if decision.action is Action.FAILOVER:
            briefing = self._brief(name, view, decision, time.time())
            config = self.ctx.config_path or "CONFIG"
            to = decision.candidates[0] if decision.candidates else None
            if to is not None:
                # Said by the failover_failed page: the group is still on a down endpoint.
                briefing["retry_command"] = f"convai-monitor failover -c {config} {name} --to {to}"
            details.update(briefing)
        request = SwitchRequest(
            group=name,
            kind=kind,
            automatic=True,
            expected_active=active,
            candidates=candidates,
            reason=evidence.reason(decision),
            detected_at=evidence.first_failure_at if decision.action is Action.FAILOVER else None,
            details=details,
            # A failed failback leaves the group on a working endpoint: recorded, not paged.
            announce_failure=(
                decision.action in _ANNOUNCED and record.condition != "failover_failed"
            ),
            key_only=decision.action is Action.KEY_ROTATION,
        )
        try:
            # Checked against where Convai was last seen pointing: for a rehome that is the
            # endpoint's old URL, which the config no longer has.
            outcome = await self.switcher.switch(request, record.registered_base_url)
        finally:
            self.beliefs.stale()  # the switcher wrote switch and group rows
        if outcome.unsettled:
            self.ctx.background(self.resync(), f"sync-after-readback:{name}")
        if outcome.status in ("confirmed", "failed", "dry_run"):
            self.ctx.monitor.metrics.switches.labels(name, kind, outcome.status).inc()
        await self._after_switch(name, kind, outcome, briefing)

    async def _after_switch(
        self, name: str, kind: str, outcome: SwitchOutcome, briefing: dict[str, Any]
    ) -> None:
        now = time.time()
        status = outcome.status
        if status == "confirmed":
            self.retry.pop(name, None)
            self.ctx.monitor.urgent.discard(name)
        elif status == "dry_run":
            self.dry_noted.add(name)
        elif status in ("drift", "skipped", "unrecorded"):
            # Convai moved under us (drift), the belief changed or a switch is still open
            # (skipped), or a landed switch could not be recorded: re-read Convai (outside
            # this group's lock, which sync takes), adopt, and decide again after a pause.
            if status == "unrecorded" and outcome.switch is not None:
                self.sync.unsettled.add(outcome.switch.id)
            self._back_off(name, now)
            self.ctx.background(self.resync(), f"sync-after-{status}:{name}")
        else:
            self._back_off(name, now)
            if status == "preflight_failed" and kind == "failover":
                details = {k: v for k, v in briefing.items() if k != "retry_command"}
                if details:
                    config = self.ctx.config_path or "CONFIG"
                    details["command"] = f"convai-monitor check -c {config} --group {name}"
                await self.beliefs.condition(
                    name, "preflight_failed", outcome.message, now, details=details or None
                )
            elif status == "preflight_failed":
                # The group is fine where it is; the better endpoint just is not ready.
                log.warning("failback_postponed", group=name, reason=outcome.message)
            elif status == "failed":
                await self.beliefs.write(self.beliefs.switches.set_state, name, "degraded")

    def _back_off(self, name: str, now: float) -> None:
        _until, last = self.retry.get(name, (0.0, 0.0))
        delay = min(RETRY_MAX, last * 2) if last else RETRY_BASE
        self.retry[name] = (now + delay, delay)
