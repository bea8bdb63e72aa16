"""Acting on a decision: run the switch through the Switcher, record lasting conditions,
and back off retries of switches that went nowhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from monitor.config import GroupConfig
from monitor.domain.failover import Action, Decision, GroupView
from monitor.domain.health import Health
from monitor.runtime.context import Context
from monitor.runtime.evidence import Evidence
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.store import EndpointKey
from monitor.store.switching import GroupRecord

log = structlog.get_logger()

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
# After a switch attempt that went nowhere (update failed, no candidate passed pre-flight)
# the group is retried after RETRY_BASE seconds, doubling up to RETRY_MAX: a revoked Convai
# key must not mean an update call (and pre-flight probes) every tick.
RETRY_BASE = 2.0
RETRY_MAX = 120.0


class Actor:
    def __init__(
        self,
        ctx: Context,
        switcher: Switcher,
        evidence: dict[EndpointKey, Evidence],
        resync: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self.ctx = ctx
        self.beliefs = ctx.beliefs
        self.switcher = switcher
        self.evidence = evidence
        self.resync = resync
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
        if decision.switches:
            await self._switch(group, record, decision)
            return
        if decision.action is Action.STAY:
            self.dry_noted.discard(name)
            active = next((e for e in view.endpoints if e.name == view.active), None)
            if active is None or active.health is not Health.UP:
                return
            if record.condition in TROUBLE:
                await self.beliefs.condition(
                    name, "recovered", f"recovered: {decision.reason}", now, clear=True
                )
            elif active is view.endpoints[0] and name in self.beliefs.incidents:
                # The incident ends when the group is well again, whatever switch got it
                # there: a failover that landed on the primary, an operator's move, a pin
                # that ended. Otherwise reminders would page about an outage that is over.
                await self.beliefs.condition(
                    name,
                    "recovered",
                    f"recovered: back on its primary {active.name}, which is up",
                    now,
                    clear=True,
                )
            return
        details = None
        if decision.action is Action.PRIMARY_RECOVERED and decision.candidates:
            config = self.ctx.config_path or "CONFIG"
            to = decision.candidates[0]
            details = {"command": f"convai-monitor failover -c {config} {name} --to {to}"}
        await self.beliefs.condition(
            name, decision.action.value, decision.reason, now, details=details
        )

    async def _switch(self, group: GroupConfig, record: GroupRecord, decision: Decision) -> None:
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
        active_cfg = group.endpoint(active) if active else None
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
                decision.action is Action.FAILOVER and record.condition != "failover_failed"
            ),
        )
        try:
            outcome = await self.switcher.switch(
                request, active_cfg.base_url if active_cfg else None
            )
        finally:
            self.beliefs.stale()  # the switcher wrote switch and group rows
        if outcome.status in ("confirmed", "failed", "dry_run"):
            self.ctx.monitor.metrics.switches.labels(name, kind, outcome.status).inc()
        await self._after_switch(name, kind, outcome)

    async def _after_switch(self, name: str, kind: str, outcome: SwitchOutcome) -> None:
        now = time.time()
        status = outcome.status
        if status == "confirmed":
            self.retry.pop(name, None)
            self.ctx.monitor.urgent.discard(name)
        elif status == "dry_run":
            self.dry_noted.add(name)
        elif status == "drift":
            # Convai moved under us: re-read it (outside this group's lock, which sync
            # takes), adopt, and decide again on the next tick.
            self.ctx.background(self.resync(), f"sync-after-drift:{name}")
        elif status == "skipped":
            # The belief changed, or a switch is still open: a sync sorts out which.
            self.ctx.background(self.resync(), f"sync-after-skip:{name}")
        else:
            self._back_off(name, now)
            if status == "preflight_failed" and kind == "failover":
                await self.beliefs.condition(name, "preflight_failed", outcome.message, now)
            elif status == "preflight_failed":
                # The group is fine where it is; the better endpoint just is not ready.
                log.warning("failback_postponed", group=name, reason=outcome.message)
            elif status == "failed":
                await self.beliefs.write(self.beliefs.switches.set_state, name, "degraded")

    def _back_off(self, name: str, now: float) -> None:
        _until, last = self.retry.get(name, (0.0, 0.0))
        delay = min(RETRY_MAX, last * 2) if last else RETRY_BASE
        self.retry[name] = (now + delay, delay)
