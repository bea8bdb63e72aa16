"""Batches probe results and health into the store from one worker thread.

Probing never waits on disk: results are buffered and written every `flush_interval` in
one transaction, on a single thread so SQLite sees one writer. Other store work that must
be ordered with those writes (switch records, pruning) goes through `call` on that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from monitor.domain.health import HealthState
from monitor.domain.outcome import ProbeResult
from monitor.store import Store

T = TypeVar("T")
# Results kept in memory while the store cannot be written (about 200 bytes each).
MAX_PENDING = 100_000
# A failing database is logged at its first failed write, then this often.
FAILURE_LOG_EVERY = 60.0
log = structlog.get_logger()


class Recorder:
    def __init__(self, store: Store, flush_interval: float = 0.2) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._results: list[tuple[int, ProbeResult]] = []
        self._states: dict[int, HealthState] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        # Whether this instance's health is the shared one (it leads; see Store.save).
        self.leading: Callable[[], bool] = lambda: True
        self.written = 0
        self.failed_flushes = 0
        self.dropped = 0  # results given up while the store could not be written
        self._failing = False
        self._failure_logged_at = 0.0
        self._started: float | None = None  # when the running store call began

    def add(self, endpoint_id: int, result: ProbeResult, state: HealthState) -> None:
        self._results.append((endpoint_id, result))
        self._states[endpoint_id] = state

    async def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a store function on the writer thread, after what is already queued."""
        job = functools.partial(self._timed, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def _timed(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        # On the writer thread: how long the store call under way has been running says
        # whether the database is what everything waits on (see busy_for).
        self._started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self._started = None

    def busy_for(self) -> float:
        """Seconds the store call under way has been running (0 when none is)."""
        started = self._started
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    async def flush(self) -> None:
        results, states = self._results, self._states
        if not results and not states:
            return
        self._results, self._states = [], {}
        try:
            await self.call(self.store.save, results, states, shared=self.leading())
        except Exception as exc:  # the loop must survive a full disk or a locked file
            self.failed_flushes += 1
            # Put the batch back so an outage of the disk or the database loses nothing;
            # bounded, keeping the newest: a long outage must not exhaust the memory.
            pending = results + self._results
            self.dropped += max(0, len(pending) - MAX_PENDING)
            self._results = pending[-MAX_PENDING:]
            self._states = {**states, **self._states}
            now = time.monotonic()
            if not self._failing or now - self._failure_logged_at >= FAILURE_LOG_EVERY:
                # Once, then once a minute: a database away for an hour is not 18,000 lines.
                self._failing, self._failure_logged_at = True, now
                log.error(
                    "store_write_failed",
                    error=str(exc),
                    pending=len(self._results),
                    dropped=self.dropped,
                    failed_flushes=self.failed_flushes,
                )
        else:
            self.written += len(results)
            if self._failing:
                self._failing = False
                log.warning("store_write_recovered", written=len(results))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_interval)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            # Asked to stop, not cancelled: a flush cancelled while its batch (already
            # taken from the buffer) waited behind other work on the writer thread lost
            # that batch, so /metrics counted probes and tokens the store never had.
            self._closing.set()
            await self._task
            self._task = None
        await self.flush()
        self._executor.shutdown(wait=True)
