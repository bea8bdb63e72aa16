"""What the failover engine's parts share: the config and Convai client (both replaced by a
reload), the store's view of each group, and the background tasks drained at shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from monitor.config import Config
from monitor.convai import ConvaiClient
from monitor.domain.failover import HOUR
from monitor.runtime.monitor import Monitor
from monitor.store.switching import GroupRecord, SwitchLog

log = structlog.get_logger()

# Group records are read for all groups at once and reused this long (or until this
# daemon writes): evaluating 100 groups every second must not mean 200 queries a second.
# Changes made by the CLI (pins, manual switches) are seen within this time; the
# compare-and-set before every switch reads the database itself.
RECORDS_TTL = 1.0
# Conditions logged as errors: characters are (or may soon be) failing and nothing
# automatic will fix it. Everything else an operator should see is a warning.
ERROR_KINDS = frozenset(
    {"all_down", "isolated", "flapping", "failover_failed", "preflight_failed", "pinned_down"}
)


class Beliefs:
    """The daemon's belief about each group: its record (cached), its lock, where it points,
    and the lasting condition it carries."""

    def __init__(self, switches: SwitchLog, call: Any) -> None:
        self.switches = switches
        self.call = call
        self._locks: dict[str, asyncio.Lock] = {}
        # Where each group points, as of the last evaluation or sync (for notices).
        self.active: dict[str, str | None] = {}
        self._records: dict[str, GroupRecord] = {}
        self.switch_times: dict[str, tuple[float, ...]] = {}
        self.incidents: set[str] = set()  # groups with an open incident
        # Groups whose characters are served: on an endpoint that is up, no trouble
        # condition. Their open incident (a failover waiting for its failback) is not
        # reminded: nobody needs waking for an outage characters no longer feel.
        self.serving: set[str] = set()
        self._records_at = -RECORDS_TTL
        self._refreshing = asyncio.Lock()
        self._generation = 0  # counts stale(): a read that overlapped a write is not fresh

    def lock(self, group: str) -> asyncio.Lock:
        """Evaluations of one group (and a sync's look at it) are serialised."""
        return self._locks.setdefault(group, asyncio.Lock())

    async def snapshot(self) -> dict[str, GroupRecord]:
        if time.monotonic() - self._records_at < RECORDS_TTL:
            return self._records
        # One read for everyone: the tick starts every group's evaluation at once, and
        # each used to find the cache stale and read all groups itself (N reads of N rows
        # a second, the largest cost of the daemon after the probes).
        async with self._refreshing:
            if time.monotonic() - self._records_at >= RECORDS_TTL:
                generation = self._generation
                records, switch_times, incidents = await self.call(self._read, self._records)
                self._records, self.switch_times, self.incidents = (
                    records,
                    switch_times,
                    incidents,
                )
                if generation == self._generation:  # no write landed during the read
                    self._records_at = time.monotonic()
        return self._records

    def _read(
        self, known: dict[str, GroupRecord]
    ) -> tuple[dict[str, GroupRecord], dict[str, tuple[float, ...]], set[str]]:
        """The records, switch times and open incidents, in one trip to the store's thread
        (an unchanged record stays the object `known` holds)."""
        records, switch_times = self.switches.snapshot(time.time() - HOUR, known)
        return records, switch_times, self.switches.open_incidents()

    def stale(self) -> None:
        """Something wrote group rows behind the cache's back."""
        self._generation += 1
        self._records_at = -RECORDS_TTL

    async def write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store write by the engine: the cached records are stale after it."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self.stale()

    async def condition(
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
        record = (await self.snapshot()).get(group)
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
        level = log.info if clear else log.error if kind in ERROR_KINDS else log.warning
        level(kind, group=group, reason=message)

    async def note(
        self,
        group: str,
        kind: str,
        message: str,
        details: dict[str, Any],
        level: str = "warning",
    ) -> None:
        await self.write(self.switches.record, group, kind, message, time.time(), details=details)
        getattr(log, level)(kind, group=group, reason=message)


@dataclass
class Context:
    config: Config
    convai: ConvaiClient
    monitor: Monitor
    beliefs: Beliefs
    config_path: str | None = None
    stopping: bool = False
    # Whether this instance holds the leader lease: only the leader syncs, evaluates,
    # switches and records notices (every instance probes).
    leading: Callable[[], bool] = lambda: True
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run `coro` without waiting for it; drained at shutdown, refused once stopping."""
        if self.stopping:
            coro.close()
            return
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, grace: float) -> None:
        """Let evaluations (and a switch in flight) finish, within `grace` seconds; start
        nothing new from here on."""
        self.stopping = True
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
