"""The failover engine: keeps each group's belief in sync with Convai and acts on decisions.

It listens to health transitions, evaluates a group (pure `decide`), and runs switches
through the Switcher. Evaluations of one group are serialised; groups never wait on each
other, and probing never waits on any of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from monitor.config import Config, GroupConfig, Target, normalize_url
from monitor.convai import ConvaiClient, ConvaiError, ConvaiUnreachable, ModelList
from monitor.domain.failover import (
    HOUR,
    Action,
    Decision,
    EndpointView,
    GroupView,
    Rules,
    decide,
    group_state,
)
from monitor.domain.health import Health, HealthState, Transition
from monitor.domain.outcome import Outcome, ProbeResult, Verdict
from monitor.runtime.monitor import Monitor
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.store.switching import GroupRecord, SwitchLog

log = structlog.get_logger()

# Failed probes kept per endpoint to explain a switch.
_EVIDENCE = 5
# Outcomes that say "could not reach it", as opposed to "it answered badly".
_UNREACHABLE = frozenset({Outcome.CONNECT_ERROR, Outcome.TIMEOUT})
# Conditions that end with a `recovered` event when the group is healthy again.
_TROUBLE = frozenset(
    {Action.ALL_DOWN, Action.ISOLATED, Action.FLAPPING, "failover_failed", "preflight_failed"}
)


class StartupError(Exception):
    """The daemon must not start (exit 2): e.g. a configured group Convai does not know."""


@dataclass
class _Evidence:
    first_failure_at: float | None = None
    recent: deque[ProbeResult] = field(default_factory=lambda: deque(maxlen=_EVIDENCE))


def find_endpoint(group: GroupConfig, base_url: str | None) -> str | None:
    if base_url is None:
        return None
    wanted = normalize_url(base_url)
    return next((e.name for e in group.endpoints if normalize_url(e.base_url) == wanted), None)


class Engine:
    def __init__(
        self,
        config: Config,
        monitor: Monitor,
        convai: ConvaiClient,
        switches: SwitchLog,
        *,
        dry_run: bool = False,
        register: bool = False,
    ) -> None:
        self.config = config
        self.monitor = monitor
        self.convai = convai
        self.switches = switches
        self.register = register
        self.call = monitor.recorder.call
        self.switcher = Switcher(convai, switches, self.call, self._preflight, dry_run=dry_run)
        self._locks: dict[str, asyncio.Lock] = {}
        self._evidence: dict[tuple[str, str], _Evidence] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciled = False
        self._isolated = False
        self.synced = False  # Convai's list has been read at least once
        # Where each group points, as of the last evaluation or sync (for notices).
        self.active: dict[str, str | None] = {}
        self._auth_flagged: set[tuple[str, str]] = set()
        self._down_noticed: set[tuple[str, str]] = set()
        self.convai_reachable = True

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile interrupted switches, then learn where every group points."""
        self.monitor.listeners.append(self.on_result)
        try:
            listing = await self.convai.list_models()
        except ConvaiUnreachable as exc:
            # Keep probing; decisions wait until Convai has been read (see evaluate).
            self.convai_reachable = False
            log.error("convai_unreachable_at_start", error=str(exc))
            return
        except ConvaiError as exc:
            if exc.http_status in (401, 403):
                raise StartupError(f"Convai rejected convai.api_key: {exc}") from None
            log.error("convai_list_failed_at_start", error=str(exc))
            return
        missing = [g for g in self.config.groups if listing.get(g.model_group_name) is None]
        if missing and not self.register:
            names = ", ".join(g.model_group_name for g in missing)
            raise StartupError(
                f"Convai has no model group {names}: register it (convai-monitor models "
                "register, or run with --register)"
            )
        for group in missing:
            await self._register(group)
        if missing:
            listing = await self.convai.list_models()
        await self._reconcile(listing)
        await self._apply_listing(listing)

    async def _register(self, group: GroupConfig) -> None:
        primary = group.primary
        model = group.model_name
        if model is None:
            raise StartupError(f"cannot register {group.model_group_name}: set its model_name")
        reply = await self.convai.register(
            group.model_group_name, model, primary.key, base_url=primary.base_url
        )
        await self.call(
            self.switches.record,
            group.model_group_name,
            "registered",
            f"registered with Convai on {primary.name}",
            time.time(),
            details={"transaction_id": reply.transaction_id},
        )
        log.info("group_registered", group=group.model_group_name, endpoint=primary.name)

    async def _reconcile(self, listing: ModelList) -> None:
        """Close switches a crash left open, from what Convai says now. Never re-sends."""
        for intent in await self.call(self.switches.open_intents):
            model = listing.get(intent.group)
            registered = model.base_url if model else None
            now = time.time()
            if registered and normalize_url(registered) == normalize_url(intent.to_base_url):
                await self.call(
                    self.switches.confirm_switch,
                    intent.id,
                    transaction_id=None,
                    at=now,
                    message=(
                        f"{intent.kind} {intent.from_endpoint} -> {intent.to_endpoint} "
                        "confirmed at start-up: the update had landed before the restart"
                    ),
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=True
                )
            else:
                await self.call(
                    self.switches.abandon_switch,
                    intent.id,
                    note=(
                        f"{intent.kind} -> {intent.to_endpoint} interrupted by a restart and "
                        f"not applied (Convai shows {registered})"
                    ),
                    at=now,
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=False
                )
        self._reconciled = True

    # --- sync with Convai (drift) ----------------------------------------------------

    async def sync(self) -> None:
        try:
            listing = await self.convai.list_models()
        except ConvaiError as exc:
            self.convai_reachable = not isinstance(exc, ConvaiUnreachable)
            log.warning("convai_sync_failed", error=str(exc))
            return
        self.convai_reachable = True
        if not self._reconciled:
            await self._reconcile(listing)
        await self._apply_listing(listing)

    async def _apply_listing(self, listing: ModelList) -> None:
        self.synced = True
        now = time.time()
        configured = {g.model_group_name: g for g in self.config.groups}
        known = await self.call(self.switches.groups)
        for model in listing.models:
            if model.model_group_name not in configured:
                await self.call(
                    self.switches.observe_registration,
                    model.model_group_name,
                    registered_base_url=model.base_url,
                    model_name=model.model_name,
                    monitored=False,
                    active_endpoint=None,
                    at=now,
                )
        for name, group in configured.items():
            registered = listing.get(name)
            if registered is None:
                await self._condition(
                    name, "not_registered", "Convai no longer lists this group", now
                )
                continue
            async with self._lock(name):
                await self._observe(
                    group, registered.base_url, registered.model_name, known.get(name), now
                )

    async def _observe(
        self,
        group: GroupConfig,
        registered: str,
        model_name: str,
        before: GroupRecord | None,
        now: float,
    ) -> None:
        name = group.model_group_name
        endpoint = find_endpoint(group, registered)
        if before is not None and before.registered_base_url is not None:
            moved = normalize_url(before.registered_base_url) != normalize_url(registered)
            if moved:
                # Nobody but us should move the group; whoever did, we adopt and say so.
                where = endpoint or "no configured endpoint"
                await self.call(
                    self.switches.record,
                    name,
                    "drift",
                    f"Convai's base_url changed to {registered} ({where}) without this daemon",
                    now,
                    details={
                        "from": before.active_endpoint,
                        "to": endpoint,
                        "base_url": registered,
                    },
                )
                log.warning("drift", group=name, to_endpoint=endpoint, base_url=registered)
        elif endpoint is None:
            await self._condition(
                name,
                "drift",
                f"Convai's base_url {registered} matches no configured endpoint; not acting",
                now,
            )
        await self.call(
            self.switches.observe_registration,
            name,
            registered_base_url=registered,
            model_name=model_name,
            monitored=True,
            active_endpoint=endpoint,
            at=now,
        )
        self.active[name] = endpoint
        if group.model_name and group.model_name != model_name:
            await self._condition(
                name,
                "model_mismatch",
                f"Convai serves model {model_name}, the config probes {group.model_name}",
                now,
            )

    # --- evaluation --------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Let evaluations (and a switch in flight) finish, within `grace` seconds."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _lock(self, group: str) -> asyncio.Lock:
        return self._locks.setdefault(group, asyncio.Lock())

    async def on_result(
        self, target: Target, result: ProbeResult, state: HealthState, transition: Transition | None
    ) -> None:
        key = (target.group, target.endpoint)
        evidence = self._evidence.setdefault(key, _Evidence())
        verdict = result.outcome.verdict
        if verdict is Verdict.FAIL:
            if evidence.first_failure_at is None:
                evidence.first_failure_at = result.at
            evidence.recent.append(result)
        elif verdict is Verdict.PASS:
            evidence.first_failure_at = None
            evidence.recent.clear()
        notice = self._notice(target, result, transition)
        if notice is not None:
            self._background(self._note(target.group, *notice), f"note:{target.group}")
        if transition is not None:
            self.spawn(target.group)

    def _notice(
        self, target: Target, result: ProbeResult, transition: Transition | None
    ) -> tuple[str, str, dict[str, Any]] | None:
        """What on-call should hear about one endpoint, beyond the group's switches."""
        key = (target.group, target.endpoint)
        details: dict[str, Any] = {"endpoint": target.endpoint, "outcome": result.outcome.value}
        if result.outcome is Outcome.AUTH_ERROR:
            if key in self._auth_flagged:
                return None
            self._auth_flagged.add(key)
            return (
                "auth_error",
                f"{target.endpoint} of {target.group} rejects its API key "
                f"(HTTP {result.http_status}): a revoked or wrong key, not an outage of the "
                "endpoint. Fix the key in the config and reload.",
                details,
            )
        if result.outcome.verdict is Verdict.PASS:
            self._auth_flagged.discard(key)
        if transition is None or not self._standby(target):
            # The active endpoint's story, and that of better endpoints the group will
            # return to, is told by the failover, failback and recovery events.
            return None
        if transition.after is Health.DOWN:
            self._down_noticed.add(key)
            if result.outcome is Outcome.MODEL_NOT_FOUND:
                text = (
                    f"fallback {target.endpoint} of {target.group} does not serve the group's "
                    f"model {target.model}: a failover to it would break every character"
                )
            else:
                others = [
                    t.endpoint
                    for k, t in self.monitor.targets.items()
                    if t.group == target.group
                    and t.endpoint not in (target.endpoint, self.active.get(target.group))
                    and self.monitor.states.get(k, HealthState()).health is Health.UP
                ]
                tail = (
                    "a failover would have nowhere to go"
                    if not others
                    else f"failover would still have {', '.join(others)}"
                )
                text = (
                    f"fallback {target.endpoint} of {target.group} is down "
                    f"({result.outcome.value}): {tail}"
                )
            return ("endpoint_down", text, details)
        if transition.after is Health.UP and key in self._down_noticed:
            self._down_noticed.discard(key)
            return (
                "endpoint_up",
                f"fallback {target.endpoint} of {target.group} is up again",
                details,
            )
        return None

    def _standby(self, target: Target) -> bool:
        """A fallback below the active endpoint: what a failover would go to."""
        active = self.active.get(target.group)
        rank = next(
            (
                t.priority
                for t in self.monitor.targets.values()
                if t.group == target.group and t.endpoint == active
            ),
            None,
        )
        return rank is not None and target.priority > rank

    async def _note(self, group: str, kind: str, message: str, details: dict[str, Any]) -> None:
        await self.call(self.switches.record, group, kind, message, time.time(), details=details)
        log.warning(kind, group=group, reason=message)

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, group: str) -> None:
        """Evaluate a group soon, without making the caller (a probe) wait."""
        if self._lock(group).locked():
            return  # the running evaluation will see the newest state, or the next tick
        task = asyncio.create_task(self.evaluate(group), name=f"evaluate:{group}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def tick(self) -> None:
        """Periodic evaluation: failback timers, pin expiry, retries of failed switches."""
        if not self._reconciled:
            await self.sync()
        for group in self.config.groups:
            self.spawn(group.model_group_name)

    async def evaluate(self, name: str) -> None:
        group = self.config.group(name)
        if group is None or not self._reconciled:
            return
        async with self._lock(name):
            try:
                await self._evaluate(group)
            except Exception as exc:  # one group's trouble must not stop the others
                log.exception("evaluation_failed", group=name, error=str(exc))

    async def _evaluate(self, group: GroupConfig) -> None:
        name = group.model_group_name
        now = time.time()
        record: GroupRecord | None = await self.call(self.switches.group, name)
        if record is None:
            return
        self.active[name] = record.active_endpoint
        self.monitor.metrics.set_active(
            name, [e.name for e in group.endpoints], record.active_endpoint
        )
        switch_times = await self.call(self.switches.switch_times, name, now - HOUR)
        view = self._view(group, record, switch_times, isolated=False)
        decision = decide(view, now)
        if decision.action is Action.ALL_DOWN and await self._suspect_isolation():
            view = self._view(group, record, switch_times, isolated=True)
            decision = decide(view, now)
        if decision.action is Action.FAILOVER and record.active_endpoint is not None:
            # Check before switching: probe the active endpoint once more. If it answers,
            # the decision turns into "stay" (see decide), which keeps a run of unlucky
            # blips from moving the group.
            active = self.monitor.targets.get((name, record.active_endpoint))
            if active is not None:
                await self._preflight(active)
                now = time.time()
                view = self._view(group, record, switch_times, isolated=False)
                decision = decide(view, now)
        state = group_state(view, decision, now)
        if state.value != record.state:
            await self.call(self.switches.set_state, name, state.value)
        if decision.action is Action.ALL_DOWN:
            self.monitor.urgent.add(name)
        else:
            self.monitor.urgent.discard(name)
        await self._act(group, record, view, decision, now)

    def _view(
        self,
        group: GroupConfig,
        record: GroupRecord,
        switch_times: tuple[float, ...],
        *,
        isolated: bool,
    ) -> GroupView:
        policy = group.policy
        endpoints = []
        for endpoint in group.endpoints:
            state = self.monitor.states.get((group.model_group_name, endpoint.name), HealthState())
            up_since = state.since if state.health is Health.UP else None
            answering = state.successes > 0
            endpoints.append(EndpointView(endpoint.name, state.health, up_since, answering))
        return GroupView(
            name=group.model_group_name,
            endpoints=tuple(endpoints),
            active=record.active_endpoint,
            rules=Rules(
                failback=policy.failback,
                failback_after=policy.failback_after,
                min_dwell=policy.min_dwell,
                max_switches_per_hour=policy.max_switches_per_hour,
            ),
            switch_times=switch_times,
            last_switch_at=record.last_switch_at,
            operator_at=record.operator_at,
            pinned_to=record.pinned_endpoint,
            pinned_until=record.pinned_until,
            isolated=isolated,
        )

    async def _suspect_isolation(self) -> bool:
        """Every endpoint of every group unreachable and Convai too: our own network."""
        for key in self.monitor.targets:
            evidence = self._evidence.get(key)
            if evidence is None or not evidence.recent:
                return self._leave_isolation()
            if evidence.recent[-1].outcome not in _UNREACHABLE:
                return self._leave_isolation()
        try:
            await self.convai.list_models()
        except ConvaiUnreachable:
            self._isolated = True
            return True
        except ConvaiError:
            pass
        return self._leave_isolation()

    def _leave_isolation(self) -> bool:
        if self._isolated:
            # What we judged while cut off says nothing about the endpoints: judge afresh,
            # so the first endpoint to answer does not win a switch it did not earn.
            self._isolated = False
            for key in list(self.monitor.states):
                self.monitor.states[key] = HealthState()
            log.warning("isolation_ended")
        return False

    async def _act(
        self,
        group: GroupConfig,
        record: GroupRecord,
        view: GroupView,
        decision: Decision,
        now: float,
    ) -> None:
        name = group.model_group_name
        dry_noted = (record.condition or "").startswith("dry_run")
        if decision.switches:
            if self.switcher.dry_run and dry_noted:
                return  # "would switch" is said once per episode, not every second
            await self._switch(group, record, decision)
            return
        if dry_noted:
            await self.call(self.switches.set_condition, name, None)
        if decision.action is Action.STAY:
            active = next((e for e in view.endpoints if e.name == view.active), None)
            if record.condition in _TROUBLE and active is not None and active.health is Health.UP:
                await self._condition(
                    name, "recovered", f"recovered: {decision.reason}", now, clear=True
                )
            return
        details = None
        if decision.action is Action.PRIMARY_RECOVERED and decision.candidates:
            details = {
                "command": f"convai-monitor failover -c CONFIG {name} --to {decision.candidates[0]}"
            }
        await self._condition(name, decision.action.value, decision.reason, now, details=details)

    async def _condition(
        self,
        group: str,
        kind: str,
        message: str,
        now: float,
        *,
        clear: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a lasting condition once, when it starts (not on every evaluation)."""
        record: GroupRecord | None = await self.call(self.switches.group, group)
        current = record.condition if record else None
        if not clear and current == kind:
            return
        await self.call(
            self.switches.record,
            group,
            kind,
            message,
            now,
            condition=None if clear else kind,
            set_condition=True,
            details=details,
        )
        level = log.info if clear else log.warning
        level(kind, group=group, reason=message)

    async def _preflight(self, target: Target) -> ProbeResult:
        result = await self.monitor.prober.probe(target)
        await self.monitor.observe(target, result)
        return result

    async def _switch(self, group: GroupConfig, record: GroupRecord, decision: Decision) -> None:
        name = group.model_group_name
        active = record.active_endpoint
        kind = decision.action.value
        candidates = tuple(
            self.monitor.targets[(name, n)]
            for n in decision.candidates
            if (name, n) in self.monitor.targets
        )
        evidence = self._evidence.get((name, active or ""), _Evidence())
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
            reason=_reason(decision, evidence),
            detected_at=evidence.first_failure_at if decision.action is Action.FAILOVER else None,
            details=details,
        )
        outcome = await self.switcher.switch(request, active_cfg.base_url if active_cfg else None)
        if outcome.status in ("confirmed", "failed", "dry_run"):
            self.monitor.metrics.switches.labels(name, kind, outcome.status).inc()
        await self._after_switch(name, outcome)

    async def _after_switch(self, name: str, outcome: SwitchOutcome) -> None:
        now = time.time()
        if outcome.status == "confirmed":
            self.monitor.urgent.discard(name)
        elif outcome.status == "preflight_failed":
            await self._condition(name, "preflight_failed", outcome.message, now)
        elif outcome.status == "failed":
            await self.call(self.switches.set_condition, name, "failover_failed")
            await self.call(self.switches.set_state, name, "degraded")
        elif outcome.status == "drift":
            # Convai moved under us: re-read it (outside this group's lock, which sync
            # takes), adopt, and decide again on the next tick.
            self._background(self.sync(), f"sync-after-drift:{name}")


def _reason(decision: Decision, evidence: _Evidence) -> str:
    if decision.action is not Action.FAILOVER or not evidence.recent:
        return decision.reason
    kinds = ", ".join(r.outcome.value for r in evidence.recent)
    return f"{decision.reason} (last failed probes: {kinds})"
