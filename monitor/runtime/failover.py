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

from monitor.config import Config, GroupConfig, Target, display_url, normalize_url
from monitor.convai import ConvaiClient, ConvaiError, ConvaiUnreachable, ModelList
from monitor.domain.failover import (
    HOUR,
    Action,
    Decision,
    EndpointView,
    GroupState,
    GroupView,
    Rules,
    decide,
    group_state,
)
from monitor.domain.health import Health, HealthState, Transition, clean, recovering
from monitor.domain.outcome import Outcome, ProbeResult, Verdict
from monitor.runtime.monitor import Monitor, thresholds
from monitor.runtime.notices import Notices
from monitor.runtime.switcher import Switcher, SwitchOutcome, SwitchRequest
from monitor.store.switching import GroupRecord, SwitchLog

log = structlog.get_logger()

# Failed probes kept per endpoint to explain a switch.
_EVIDENCE = 5
# Outcomes that say "could not reach it", as opposed to "it answered badly".
_UNREACHABLE = frozenset({Outcome.CONNECT_ERROR, Outcome.TIMEOUT})
# Conditions that end with a `recovered` event when the group is healthy again.
_TROUBLE = frozenset(
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
# An intent older than this with no evaluation running is a leftover, reconciled at sync.
STALE_INTENT_AFTER = 120.0
# Group records are read for all groups at once and reused this long (or until this
# daemon writes): evaluating 100 groups every second must not mean 200 queries a second.
# Changes made by the CLI (pins, manual switches) are seen within this time; the
# compare-and-set before every switch reads the database itself.
RECORDS_TTL = 1.0


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
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
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
        self.notices = Notices(monitor.targets, monitor.states, self.active.get)
        self.convai_reachable = True
        self.stopping = False
        self._sync_lock = asyncio.Lock()
        self._retry: dict[str, tuple[float, float]] = {}  # group -> (not before, last delay)
        self._dry_noted: set[str] = set()
        self._mismatch_noted: set[str] = set()
        self._records: dict[str, GroupRecord] = {}
        self._switch_times: dict[str, tuple[float, ...]] = {}
        self._records_at = -RECORDS_TTL

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile interrupted switches, then learn where every group points."""
        self.monitor.listeners.append(self.on_result)
        fetched_at = time.time()
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
        await self._apply_listing(listing, fetched_at)

    async def _register(self, group: GroupConfig) -> None:
        primary = group.primary
        model = group.model_name
        if model is None:
            raise StartupError(f"cannot register {group.model_group_name}: set its model_name")
        reply = await self.convai.register(
            group.model_group_name, model, primary.key, base_url=primary.base_url
        )
        await self.write(
            self.switches.record,
            group.model_group_name,
            "registered",
            f"registered with Convai on {primary.name}",
            time.time(),
            details={"transaction_id": reply.transaction_id},
        )
        log.info("group_registered", group=group.model_group_name, endpoint=primary.name)

    async def _reconcile(self, listing: ModelList, stale_only: bool = False) -> None:
        """Close switches left open (by a crash, or a failure nobody caught) from what
        Convai says now: confirmed if the update landed, abandoned if not. Never re-sent."""
        now = time.time()
        for intent in await self.call(self.switches.open_intents):
            if stale_only and (
                now - intent.intent_at < STALE_INTENT_AFTER or self._lock(intent.group).locked()
            ):
                continue
            model = listing.get(intent.group)
            registered = model.base_url if model else None
            if registered and normalize_url(registered) == normalize_url(intent.to_base_url):
                await self.write(
                    self.switches.confirm_switch,
                    intent.id,
                    transaction_id=None,
                    at=now,
                    message=(
                        f"{intent.kind} {intent.from_endpoint} -> {intent.to_endpoint} "
                        "confirmed later from Convai's list: the update had landed"
                    ),
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=True
                )
            else:
                await self.write(
                    self.switches.abandon_switch,
                    intent.id,
                    note=(
                        f"{intent.kind} -> {intent.to_endpoint} was interrupted and not applied "
                        f"(Convai shows {display_url(registered)})"
                    ),
                    at=now,
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=False
                )
        self._reconciled = True

    # --- sync with Convai (drift) ----------------------------------------------------

    async def sync(self) -> None:
        """Read Convai's list and bring every group's belief in line with it."""
        if self.stopping:
            return
        async with self._sync_lock:  # one sync at a time: each compares against the last
            fetched_at = time.time()
            try:
                listing = await self.convai.list_models()
            except ConvaiError as exc:
                self.convai_reachable = not isinstance(exc, ConvaiUnreachable)
                log.warning("convai_sync_failed", error=str(exc))
                return
            self.convai_reachable = True
            await self._reconcile(listing, stale_only=self._reconciled)
            await self._apply_listing(listing, fetched_at)

    async def _apply_listing(self, listing: ModelList, fetched_at: float) -> None:
        self.synced = True
        now = time.time()
        configured = {g.model_group_name: g for g in self.config.groups}
        for model in listing.models:
            if model.model_group_name not in configured:
                await self.write(
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
            async with self._lock(name):
                # Read the belief under the lock: a switch may have landed since the list
                # was fetched, and a listing older than that must not undo it.
                before: GroupRecord | None = await self.call(self.switches.group, name)
                if before is not None and (before.last_switch_at or 0.0) >= fetched_at:
                    continue
                if await self.call(self.switches.open_intents, name):
                    continue
                if registered is None:
                    await self._condition(
                        name, "not_registered", "Convai no longer lists this group", now
                    )
                    continue
                await self._observe(group, registered.base_url, registered.model_name, before, now)

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
        shown = display_url(registered)
        if before is not None and before.condition == "not_registered":
            await self._condition(
                name, "recovered", "Convai lists the group again", now, clear=True
            )
        if before is not None and before.registered_base_url is not None:
            moved = normalize_url(before.registered_base_url) != normalize_url(registered)
            if moved:
                # Nobody but us should move the group; whoever did, we adopt and say so.
                where = endpoint or "no configured endpoint"
                await self.write(
                    self.switches.record,
                    name,
                    "drift",
                    f"Convai's base_url changed to {shown} ({where}) without this daemon",
                    now,
                    details={"from": before.active_endpoint, "to": endpoint, "base_url": shown},
                )
                log.warning("drift", group=name, to_endpoint=endpoint, base_url=shown)
        elif endpoint is None:
            await self._condition(
                name,
                "drift",
                f"Convai's base_url {shown} matches no configured endpoint; not acting",
                now,
            )
        await self.write(
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
            if name not in self._mismatch_noted:
                self._mismatch_noted.add(name)
                await self.write(
                    self.switches.record,
                    name,
                    "model_mismatch",
                    f"Convai serves model {model_name}, the config probes {group.model_name}",
                    now,
                )
        else:
            self._mismatch_noted.discard(name)

    # --- evaluation --------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Let evaluations (and a switch in flight) finish, within `grace` seconds; start
        nothing new from here on."""
        self.stopping = True
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _snapshot(self) -> dict[str, GroupRecord]:
        if time.monotonic() - self._records_at >= RECORDS_TTL:
            self._records, self._switch_times = await self.call(
                self.switches.snapshot, time.time() - HOUR
            )
            self._records_at = time.monotonic()
        return self._records

    async def write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store write by the engine: the cached records are stale after it."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self._records_at = -RECORDS_TTL

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
        notice = self.notices.notice(target, result, transition)
        if notice is not None:
            self._background(self._note(target.group, *notice), f"note:{target.group}")
        if transition is not None:
            self.spawn(target.group)

    async def _note(self, group: str, kind: str, message: str, details: dict[str, Any]) -> None:
        await self.write(self.switches.record, group, kind, message, time.time(), details=details)
        log.warning(kind, group=group, reason=message)

    def _background(self, coro: Any, name: str) -> None:
        if self.stopping:
            coro.close()
            return
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, group: str) -> None:
        """Evaluate a group soon, without making the caller (a probe) wait."""
        if self.stopping or self._lock(group).locked():
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
        record = (await self._snapshot()).get(name)
        if record is None:
            return
        self.active[name] = record.active_endpoint
        self.monitor.metrics.set_active(
            name, [e.name for e in group.endpoints], record.active_endpoint
        )
        switch_times = self._switch_times.get(name, ())
        view = self._view(group, record, switch_times, isolated=False)
        decision = decide(view, now)
        if decision.action is Action.ALL_DOWN and await self._suspect_isolation():
            view = self._view(group, record, switch_times, isolated=True)
            decision = decide(view, now)
        waiting = self._retry.get(name, (0.0, 0.0))[0] > now
        noted = self.switcher.dry_run and name in self._dry_noted
        if decision.switches and (waiting or noted):
            # A switch is due but was just tried (backing off), or "would switch" was
            # already recorded in a dry run: no probe, no Convai call this tick, and the
            # group's state still says what is wrong.
            state = group_state(view, decision, now)
            if waiting and record.condition == "failover_failed":
                state = GroupState.DEGRADED
            if state.value != record.state:
                await self.write(self.switches.set_state, name, state.value)
            return
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
            await self.write(self.switches.set_state, name, state.value)
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
        limits = thresholds(policy)
        now = time.time()
        endpoints = []
        for endpoint in group.endpoints:
            state = self.monitor.states.get((group.model_group_name, endpoint.name), HealthState())
            up_since = state.since if state.health is Health.UP else None
            endpoints.append(
                EndpointView(
                    endpoint.name,
                    state.health,
                    up_since,
                    answering=recovering(state, now, limits),
                    clean=clean(state, now, limits),
                )
            )
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
        if decision.switches:
            await self._switch(group, record, decision)
            return
        if decision.action is Action.STAY:
            self._dry_noted.discard(name)
            active = next((e for e in view.endpoints if e.name == view.active), None)
            if record.condition in _TROUBLE and active is not None and active.health is Health.UP:
                await self._condition(
                    name, "recovered", f"recovered: {decision.reason}", now, clear=True
                )
            return
        details = None
        if decision.action is Action.PRIMARY_RECOVERED and decision.candidates:
            config = self.config_path or "CONFIG"
            to = decision.candidates[0]
            details = {"command": f"convai-monitor failover -c {config} {name} --to {to}"}
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
        record = (await self._snapshot()).get(group)
        current = record.condition if record else None
        if not clear and current == kind:
            return
        await self.write(
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
            self._records_at = -RECORDS_TTL  # the switcher wrote switch and group rows
        if outcome.status in ("confirmed", "failed", "dry_run"):
            self.monitor.metrics.switches.labels(name, kind, outcome.status).inc()
        await self._after_switch(name, kind, outcome)

    async def _after_switch(self, name: str, kind: str, outcome: SwitchOutcome) -> None:
        now = time.time()
        status = outcome.status
        if status == "confirmed":
            self._retry.pop(name, None)
            self.monitor.urgent.discard(name)
        elif status == "dry_run":
            self._dry_noted.add(name)
        elif status == "drift":
            # Convai moved under us: re-read it (outside this group's lock, which sync
            # takes), adopt, and decide again on the next tick.
            self._background(self.sync(), f"sync-after-drift:{name}")
        elif status == "skipped":
            # The belief changed, or a switch is still open: a sync sorts out which.
            self._background(self.sync(), f"sync-after-skip:{name}")
        else:
            self._back_off(name, now)
            if status == "preflight_failed" and kind == "failover":
                await self._condition(name, "preflight_failed", outcome.message, now)
            elif status == "preflight_failed":
                # The group is fine where it is; the better endpoint just is not ready.
                log.warning("failback_postponed", group=name, reason=outcome.message)
            elif status == "failed":
                await self.write(self.switches.set_state, name, "degraded")

    def _back_off(self, name: str, now: float) -> None:
        _until, last = self._retry.get(name, (0.0, 0.0))
        delay = min(RETRY_MAX, last * 2) if last else RETRY_BASE
        self._retry[name] = (now + delay, delay)


def _reason(decision: Decision, evidence: _Evidence) -> str:
    if decision.action is not Action.FAILOVER or not evidence.recent:
        return decision.reason
    kinds = ", ".join(r.outcome.value for r in evidence.recent)
    return f"{decision.reason} (last failed probes: {kinds})"
