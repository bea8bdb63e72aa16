"""Background jobs that shut down cleanly: tracked while running, drained at stop.

APScheduler's shutdown cancels coroutine jobs mid-flight and logs each as a failure; a
delivery or a sync cut short that way is noise at best. Jobs wrapped here are waited for
(bounded) before the scheduler goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Jobs:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[object]] = set()
        self.stopping = False

    def wrap(self, fn: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            try:
                await fn()
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
            finally:
                if task is not None:
                    self._running.discard(task)

        run.__name__ = getattr(fn, "__qualname__", "job")
        return run

    async def drain(self, grace: float) -> None:
        self.stopping = True
        pending = set(self._running)
        if not pending:
            return
        _done, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)
