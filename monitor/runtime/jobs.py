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

    async def run(self, work: Awaitable[object]) -> None:
        """Await `work`, tracked; a cancellation by drain() is not an error."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await work
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        finally:
            if task is not None:
                self._running.discard(task)

    def wrap(self, fn: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            await self.run(fn())

        job.__name__ = getattr(fn, "__qualname__", "job")
        return job

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
