"""Evaluation: on a health transition or a tick, build a group's view, let the pure
`decide` say what to do, check before switching, and hand the decision to the Actor.

Evaluations of one group are serialised; groups never wait on each other, and probing
never waits on any of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import structlog

from monitor.config import GroupConfig, Target
from monitor.domain.failover import (
    Action,
    EndpointView,
    GroupState,
    GroupView,
    Rules,
    decide,
    group_state,
)
from monitor.domain.health import (
    UNPROBED,
    Cause,
    Health,
    HealthState,
    Transition,
    clean,
    fast_enough,
    recovering,
)
from monitor.domain.outcome import ProbeResult, Verdict
from monitor.domain.quorum import endpoint_view
from monitor.runtime.act import Actor
from monitor.runtime.context import Context
from monitor.runtime.evidence import Evidence, Isolation
from monitor.runtime.monitor import thresholds
from monitor.runtime.notices import Notice, Notices
from monitor.runtime.switcher import Switcher
from monitor.runtime.sync import Sync, same_url
from monitor.runtime.vantages import Vantages
from monitor.store import EndpointKey
from monitor.store.switching import GroupRecord, key_digest

log = structlog.get_logger()

# While Convai cannot be reached (or has never been read), it is tried again this often.
CONVAI_RETRY = 5.0


@dataclass(frozen=True, slots=True)
class Steady:
    """The facts a steady group's last "stay" was decided from (see Evaluator._steady)."""

    group: GroupConfig  # by identity, or by value after a reload
    record: GroupRecord
    keys: tuple[EndpointKey, ...]
    healths: tuple[Health, ...]  # of `keys`, in order


class Evaluator:
    def __init__(self, ctx: Context, sync: Sync, switcher: Switcher) -> None:
        self.ctx = ctx
        self.beliefs = ctx.beliefs
        self.sync = sync
        self.evidence: dict[EndpointKey, Evidence] = {}
        self.isolation = Isolation(ctx, self.evidence)
        recorder = ctx.monitor.recorder
        self.vantages = Vantages(
            recorder.store, recorder.call, ctx.config.instance.name, ctx.monitor.metrics
        )
        # Groups paged all-down before Convai was first read (no group record to hold the
        # condition yet).
        self.unsynced_down: set[str] = set()
        # Standby-down notices seen on our own path, waiting for the quorum to agree.
        self.held: dict[EndpointKey, Notice] = {}
        self.actor = Actor(ctx, switcher, self.evidence, sync)
        # Groups whose last evaluation found nothing that time alone can change, by the
        # facts it was made from (see `_steady`): the tick skips them until one changes.
        # Evaluating each group every second was a tenth of the daemon's CPU at 2,000
        # endpoints, almost all of it re-deciding "stay" for groups where nothing moved.
        self.steady: dict[str, Steady] = {}
        monitor = ctx.monitor
        self.notices = Notices(monitor.targets, monitor.states, self.beliefs.active.get)

    async def on_result(
        self, target: Target, result: ProbeResult, state: HealthState, transition: Transition | None
    ) -> None:
        key = (target.group, target.endpoint)
        self.evidence.setdefault(key, Evidence()).add(result)
        if result.outcome.verdict is Verdict.PASS:
            # Something answers: we are not cut off (whichever group sees it first).
            self.isolation.leave()
        if not self.ctx.leading():
            return  # the leader records notices and evaluates; three copies page once
        notice = self.notices.notice(target, result, transition)
        if notice is not None and notice[0] == "endpoint_down" and self.vantages.others(key):
            # A standby down on our own path only: held until the quorum agrees (see
            # `_release`), so one vantage's bad path pages nobody.
            self.held[key] = notice
            notice = None
        elif notice is not None and notice[0] == "endpoint_up" and key in self.held:
            del self.held[key]
            notice = None  # back before its down was ever sent: nothing to tell
        if notice is not None:
            self.ctx.background(self.beliefs.note(target.group, *notice), f"note:{target.group}")
        if transition is not None:
            self.spawn(target.group)

    def _release(self, now: float) -> None:
        """Held standby-down notices: sent once the quorum sees the endpoint down too,
        forgotten once our own view of it is no longer down."""
        for key, notice in list(self.held.items()):
            state = self.ctx.monitor.states.get(key, UNPROBED)
            target = self.ctx.monitor.targets.get(key)
            if state.health is not Health.DOWN or target is None:
                del self.held[key]
                self.notices.forget_down(key)  # never paged: no "up again" either
                continue
            verdict = self.vantages.tally(
                key,
                state,
                now,
                2 * target.policy.interval,
                self.ctx.config.ha.quorum,
                own_isolated=self.isolation.isolated,
            )
            if verdict is None or verdict.health is Health.DOWN:
                del self.held[key]
                self.ctx.background(self.beliefs.note(key[0], *notice), f"note:{key[0]}")

    def spawn(self, group: str) -> None:
        """Evaluate a group soon, without making the caller (a probe) wait."""
        if self.ctx.stopping or self.beliefs.lock(group).locked():
            return  # the running evaluation will see the newest state, or the next tick
        self.ctx.background(self.evaluate(group), f"evaluate:{group}")

    async def tick(self) -> None:
        """Periodic evaluation: failback timers, pin expiry, retries of failed switches."""
        sync, now = self.sync, time.time()
        # The other vantages' views, read once for every group this tick decides.
        await self.vantages.refresh()
        self._release(now)
        retry = not sync.reconciled or not sync.convai_reachable
        if retry and now - sync.last_attempt >= CONVAI_RETRY and not sync.busy:
            # In the background: a Convai that does not answer costs a sync its whole
            # retry budget, and evaluation, health and alerts must not wait for that.
            self.ctx.background(sync.sync(), "sync-retry")
        await sync.check_reachable(now)
        records = await self.beliefs.snapshot() if self.steady else {}
        states, steady = self.ctx.monitor.states, self.steady
        for group in self.ctx.config.groups:
            name = group.model_group_name
            known = steady.get(name)
            if known is not None and self._unchanged(known, group, records.get(name), states):
                continue
            self.spawn(name)

    def _unchanged(
        self,
        known: Steady,
        group: GroupConfig,
        record: GroupRecord | None,
        states: dict[EndpointKey, HealthState],
    ) -> bool:
        """Whether none of the facts a steady group's "stay" was decided from changed: a
        reload's new group config, a write to its record, a sync, an endpoint's health,
        an incident opened for it, another vantage's view appearing. Checked for every
        steady group every second, so cheap: identity first, then values."""
        if known.group is not group and known.group != group:
            return False
        if known.record is not record and known.record != record:
            return False
        for key, health in zip(known.keys, known.healths, strict=True):
            if states.get(key, UNPROBED).health is not health:
                return False
        if group.model_group_name in self.beliefs.incidents:
            return False
        views = self.vantages.views
        return not views or not any(views.get(key) for key in known.keys)

    def _steady(
        self, group: GroupConfig, record: GroupRecord, view: GroupView, state: GroupState
    ) -> bool:
        """On its primary, which is up, with nothing pending: no timer (failback, pin,
        freeze, retry) can change the decision; only new facts can."""
        name = group.model_group_name
        primary = group.endpoints[0].name
        return (
            state is GroupState.HEALTHY
            and view.active == primary
            and any(e.name == primary and e.health is Health.UP for e in view.endpoints)
            and record.condition is None
            and record.pinned_until is None
            and name not in self.beliefs.incidents
            and name not in self.actor.retry
            and name not in self.unsynced_down
            and not any(self.vantages.others((name, e.name)) for e in group.endpoints)
        )

    async def evaluate(self, name: str) -> None:
        group = self.ctx.config.group(name)
        if group is None or not self.ctx.leading():
            return
        async with self.beliefs.lock(name):
            self.steady.pop(name, None)
            try:
                if self.sync.reconciled:
                    await self._evaluate(group)
                else:
                    await self._unsynced(group)
            except Exception as exc:  # one group's trouble must not stop the others
                log.exception("evaluation_failed", group=name, error=str(exc))

    async def _unsynced(self, group: GroupConfig) -> None:
        """Convai has not been read yet, so where the group points is unknown and nothing
        can be switched; but every endpoint being down is known, and is paged now."""
        name = group.model_group_name
        states = self.ctx.monitor.states
        healths = [states.get((name, e.name), UNPROBED).health for e in group.endpoints]
        if all(h is Health.DOWN for h in healths) and name not in self.unsynced_down:
            self.unsynced_down.add(name)
            self.ctx.monitor.urgent.add(name)
            await self.beliefs.note(
                name,
                "all_down",
                f"every endpoint of {name} is down ("
                + ", ".join(e.name for e in group.endpoints)
                + "); Convai has not been reached yet, so nothing can be switched",
                {},
                level="error",
            )
        elif name in self.unsynced_down and any(h is Health.UP for h in healths):
            self.unsynced_down.discard(name)
            self.ctx.monitor.urgent.discard(name)
            up = [e.name for e, h in zip(group.endpoints, healths, strict=True) if h is Health.UP]
            await self.beliefs.note(
                name, "recovered", f"recovered: {', '.join(up)} up again", {}, level="info"
            )

    async def _evaluate(self, group: GroupConfig) -> None:
        name = group.model_group_name
        monitor, beliefs, actor = self.ctx.monitor, self.beliefs, self.actor
        now = time.time()
        record = (await beliefs.snapshot()).get(name)
        if record is None:
            return
        if name in self.unsynced_down:
            # Paged before Convai was read: the group record takes the condition over, so
            # the incident goes on (and ends) without a second all-down page.
            self.unsynced_down.discard(name)
            if record.condition is None:
                await beliefs.write(beliefs.switches.set_condition, name, "all_down")
                record = replace(record, condition="all_down")
        active_target = monitor.targets.get((name, record.active_endpoint or ""))
        if record.key_digest is None and active_target is not None:
            # First sight: nothing says which key Convai holds; take the configured one.
            digest = key_digest(active_target.api_key)
            await beliefs.write(beliefs.switches.set_key_digest, name, digest)
            record = replace(record, key_digest=digest)
        beliefs.active[name] = record.active_endpoint
        monitor.metrics.set_active(name, [e.name for e in group.endpoints], record.active_endpoint)
        switch_times = beliefs.switch_times.get(name, ())
        view = self._view(group, record, switch_times, isolated=False)
        decision = decide(view, now)
        if decision.action is Action.ALL_DOWN and await self.isolation.suspect():
            view = self._view(group, record, switch_times, isolated=True)
            decision = decide(view, now)
        waiting = actor.waiting(name, now)
        noted = actor.switcher.dry_run and name in actor.dry_noted
        if decision.switches and (waiting or noted):
            # A switch is due but was just tried (backing off), or "would switch" was
            # already recorded in a dry run: no probe, no Convai call this tick, and the
            # group's state still says what is wrong.
            state = group_state(view, decision, now)
            if waiting and record.condition == "failover_failed":
                state = GroupState.DEGRADED
            if state.value != record.state:
                await beliefs.write(beliefs.switches.set_state, name, state.value)
            return
        if decision.action is Action.FAILOVER and record.active_endpoint is not None:
            # Check before switching: probe the active endpoint once more. If it answers,
            # the decision turns into "stay" (see decide), which keeps a run of unlucky
            # blips from moving the group.
            active = monitor.targets.get((name, record.active_endpoint))
            if active is not None:
                await actor.switcher.probe(active)
                now = time.time()
                view = self._view(group, record, switch_times, isolated=False)
                decision = decide(view, now)
        state = group_state(view, decision, now)
        if state.value != record.state:
            await beliefs.write(beliefs.switches.set_state, name, state.value)
        active_down = any(e.name == view.active and e.health is Health.DOWN for e in view.endpoints)
        if decision.action is Action.ALL_DOWN or active_down:
            # Nothing healthy, or characters failing on a down active endpoint that we
            # stay on for now: every endpoint is probed fast, so the next verdict is soon.
            monitor.urgent.add(name)
        else:
            monitor.urgent.discard(name)
        await actor.act(group, record, view, decision, now)
        if decision.action is Action.STAY and self._steady(group, record, view, state):
            # The healths the decision saw, not the newest: a transition that landed while
            # this ran (its own evaluation skipped, the lock being held) must not be missed.
            healths = tuple(e.health for e in view.endpoints)
            keys = tuple((name, e.name) for e in group.endpoints)
            self.steady[name] = Steady(group, record, keys, healths)

    def _view(
        self,
        group: GroupConfig,
        record: GroupRecord,
        switch_times: tuple[float, ...],
        *,
        isolated: bool,
    ) -> GroupView:
        policy = group.policy
        active = self.ctx.monitor.targets.get(
            (group.model_group_name, record.active_endpoint or "")
        )
        limits = thresholds(policy)
        now = time.time()
        endpoints = []
        for endpoint in group.endpoints:
            key = (group.model_group_name, endpoint.name)
            state = self.ctx.monitor.states.get(key, UNPROBED)
            up_since = state.since if state.health is Health.UP else None
            own = EndpointView(
                endpoint.name,
                state.health,
                up_since,
                answering=recovering(state, now, limits),
                clean=clean(state, now, limits),
                slow=state.health is Health.DOWN and state.cause is Cause.SLOW,
                fast_enough=fast_enough(state, now, limits),
            )
            # Fresh: a result newer than two intervals (one missed probe is not silence).
            verdict = self.vantages.tally(
                key,
                state,
                now,
                2 * policy.interval,
                self.ctx.config.ha.quorum,
                own_isolated=self.isolation.isolated,
            )
            endpoints.append(own if verdict is None else endpoint_view(own, verdict))
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
            stale_url=(
                active is not None
                and record.registered_base_url is not None
                and not same_url(active.base_url, record.registered_base_url)
            ),
            stale_key=(
                active is not None
                and record.key_digest is not None
                and key_digest(active.api_key) != record.key_digest
            ),
        )
