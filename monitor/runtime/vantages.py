"""The other vantages' views, as the leader last read them from the shared database.

Every instance stores its own judgement of every endpoint (store.vantage_health) and
whether it is cut off (its heartbeat row). The leader reads them all once per decision
tick, not once per group, and counts them with its own in-memory view (domain.quorum).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from monitor.domain.health import Health, HealthState
from monitor.domain.quorum import Tally, Vote, tally
from monitor.metrics import Metrics
from monitor.store import EndpointKey, Store
from monitor.store.lease import Leases

log = structlog.get_logger()


class Vantages:
    def __init__(
        self,
        store: Store,
        call: Callable[..., Awaitable[Any]],
        own: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.call = call
        self.own = own
        self.metrics = metrics
        # endpoint -> vantage -> that vantage's stored view (our own is left out: the
        # in-memory one is newer).
        self.views: dict[EndpointKey, dict[str, HealthState]] = {}
        self.isolated: frozenset[str] = frozenset()
        self._failing = False
        self._shown: dict[tuple[str, str, str], Health] = {}  # what /metrics says now

    @property
    def shared(self) -> bool:
        # SQLite is one instance on one host: there is nobody else to count.
        return not self.store.is_sqlite

    async def refresh(self) -> None:
        if not self.shared:
            return
        try:
            views = await self.call(self.store.vantage_health)
            _lease, instances = await self.call(Leases(self.store).read)
        except Exception as exc:  # keep the last views; the lease check stops us acting
            if not self._failing:
                log.error("vantages_unreadable", error=str(exc))
            self._failing = True
            return
        self._failing = False
        self.views = {
            key: {name: state for name, state in seen.items() if name != self.own}
            for key, seen in views.items()
        }
        self.isolated = frozenset(i.name for i in instances if i.isolated and i.name != self.own)
        if self.metrics is not None:
            for (group, endpoint), seen in views.items():
                for name, state in seen.items():
                    # Only changes: setting 3,000 labelled gauges a second costs the loop.
                    if self._shown.get((group, endpoint, name)) is not state.health:
                        self._shown[(group, endpoint, name)] = state.health
                        self.metrics.vantage_health(group, endpoint, name, state.health)

    def others(self, key: EndpointKey) -> bool:
        """Whether another vantage has a view of this endpoint (several instances)."""
        return bool(self.views.get(key))

    def tally(
        self,
        key: EndpointKey,
        own: HealthState,
        now: float,
        fresh_for: float,
        quorum: int | None,
        *,
        own_isolated: bool = False,
    ) -> Tally | None:
        """The quorum's verdict on one endpoint, or None when nobody else has a view (one
        instance: its own view is the verdict, exactly as before there were vantages)."""
        others = self.views.get(key, {})
        if not others:
            return None
        votes = [Vote.of(self.own, own), *(Vote.of(name, s) for name, s in others.items())]
        isolated = self.isolated | ({self.own} if own_isolated else frozenset())
        result = tally(votes, now, fresh_for, quorum=quorum, own=self.own, isolated=isolated)
        if own_isolated and result.counted == 0:
            # Nobody else counts either: fall back to our own view, which the isolation
            # guard in decide() already handles (switch nothing).
            return None
        return result
