"""Delivery: apprise's Python API, off the event loop, with retries and a record of every
attempt. Probing and switching never wait on any of this."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apprise
import structlog

from monitor.alerts.targets import target_id, target_names
from monitor.config import AlertsConfig
from monitor.domain.alerts import Severity, backoff
from monitor.redact import redact
from monitor.store.outbox import DELIVERED, Deliveries, Delivery, Outbox, Route

log = structlog.get_logger()

Call = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    error: str | None
    elapsed_ms: float


def _explain(result: Any) -> tuple[bool, str | None]:
    """apprise's answer as (delivered, error). `None` (nothing sent) is not success."""
    if result is None:
        return False, "nothing was sent (apprise matched no service)"
    status = getattr(result, "status", None)
    if status is None:  # apprise 1.x: True / False
        return (True, None) if result is True else (False, "apprise reported a failure")
    if bool(result):
        return True, None
    detail = ""
    for item in getattr(result, "results", ()):
        lines = [str(entry) for entry in item.logs()]
        if lines:
            detail = lines[-1].split(" - ", 2)[-1]
    name = getattr(status, "name", str(status)).lower()
    return False, redact(f"apprise: {name}" + (f": {detail}" if detail else ""))[:300]


class Notifier:
    """One apprise object per target, built once; sends are blocking (use a thread)."""

    def __init__(self, config: AlertsConfig) -> None:
        self.targets: dict[str, tuple[int, str]] = {}
        self.names = target_names([(t.url.get_secret_value(), t.name) for t in config.targets])
        self._apprise: dict[str, apprise.Apprise] = {}
        for index, target in enumerate(config.targets):
            url = target.url.get_secret_value()
            key = target_id(url)
            self.targets[key] = (index, url)
            client = apprise.Apprise()
            client.add(url)
            self._apprise[key] = client

    def routes(self, config: AlertsConfig) -> list[Route]:
        return [
            Route(target_id(t.url.get_secret_value()), Severity.parse(t.min_severity))
            for t in config.targets
        ]

    def name(self, key: str) -> str:
        return self.names.get(key, f"target {key} (no longer configured)")

    def send(self, key: str, title: str, body: str, notify_type: str) -> SendResult:
        started = time.perf_counter()
        client = self._apprise.get(key)
        if client is None:
            return SendResult(False, "target is no longer configured", 0.0)
        error: str | None
        try:
            result = client.notify(body=body, title=title, notify_type=notify_type)
        except Exception as exc:  # a plugin bug must not kill the delivery job
            ok, error = False, redact(f"apprise raised {type(exc).__name__}: {exc}")[:300]
        else:
            ok, error = _explain(result)
        return SendResult(ok, error, (time.perf_counter() - started) * 1000.0)


class Deliverer:
    """The delivery job: sends what is due, records each attempt, retries with backoff."""

    def __init__(
        self,
        config: AlertsConfig,
        notifier: Notifier,
        deliveries: Deliveries,
        outbox: Outbox,
        call: Call,
        *,
        retry_base: float = 2.0,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self.on_attempt = on_attempt  # metrics: "delivered" | "retry" | "failed"
        # Groups whose characters are served (the engine's view): no reminders for them.
        self.serving: Callable[[], Collection[str]] = frozenset
        self.config = config
        self.notifier = notifier
        self.deliveries = deliveries
        self.outbox = outbox
        self.call = call
        self.retry_base = retry_base
        # apprise blocks on HTTP; its own threads keep that off the loop and off the
        # store's writer thread.
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="alerts")
        self.sent = 0
        self.failed = 0

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def remind(self) -> None:
        written = await self.call(
            self.deliveries.remind,
            self.outbox,
            time.time(),
            self.config.reminder_interval,
            frozenset(self.serving()),
        )
        if written:
            log.info("alert_reminders_queued", alerts=written)

    async def run_once(self) -> int:
        due = await self.call(self.deliveries.due, time.time())
        if not due:
            return 0
        loop = asyncio.get_running_loop()
        by_target: dict[str, list[Delivery]] = {}
        for delivery in due:
            by_target.setdefault(delivery.target_id, []).append(delivery)

        async def drain(queue: list[Delivery]) -> None:
            # One target's alerts go out in the order they were written ("still
            # unresolved" never after "resolved"), each recorded as soon as it is sent;
            # targets are served side by side, so a slow one holds back no other.
            for delivery in queue:
                result = await loop.run_in_executor(
                    self._threads,
                    self.notifier.send,
                    delivery.target_id,
                    delivery.title,
                    delivery.body,
                    delivery.notify_type,
                )
                await self._record(delivery, result)
                if not result.ok:
                    return  # keep the order: the rest waits for this one's retry

        await asyncio.gather(*(drain(queue) for queue in by_target.values()))
        return len(due)

    async def _record(self, delivery: Delivery, result: SendResult) -> None:
        now = time.time()
        retry_at: float | None = None
        if not result.ok:
            delay = backoff(delivery.attempts + 1, base=self.retry_base)
            delay *= random.uniform(0.8, 1.2)  # jitter: targets recovering together
            if now + delay <= delivery.created_at + self.config.retry_for:
                retry_at = now + delay
        status = await self.call(
            self.deliveries.attempted,
            delivery.id,
            ok=result.ok,
            error=result.error,
            elapsed_ms=result.elapsed_ms,
            at=now,
            retry_at=retry_at,
        )
        outcome = "delivered" if status == DELIVERED else "failed" if retry_at is None else "retry"
        if self.on_attempt is not None:
            self.on_attempt(outcome)
        bound = log.bind(
            group=delivery.group,
            alert=delivery.kind,
            target=self.notifier.name(delivery.target_id),
        )
        if outcome == "delivered":
            self.sent += 1
            bound.info("alert_delivered", attempts=delivery.attempts + 1)
        elif outcome == "failed":
            self.failed += 1
            bound.error("alert_delivery_failed", attempts=delivery.attempts + 1, error=result.error)
        else:
            assert retry_at is not None
            bound.warning(
                "alert_delivery_retry",
                attempts=delivery.attempts + 1,
                error=result.error,
                retry_in_s=round(retry_at - now, 1),
            )
