"""The status page and its API, answered from the read model (monitor.state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from monitor.config import Config
from monitor.durations import parse_duration
from monitor.page import render
from monitor.server import BadRequest, Check, StatusServer, Views, is_loopback
from monitor.state import State
from monitor.store import Store

log = structlog.get_logger()


def status_server(
    config: Config,
    current: Callable[[], Config],
    health: Callable[[], Check],
    ready: Callable[[], Check],
    metrics: Callable[[], bytes],
) -> StatusServer:
    """The daemon's HTTP server: health, metrics, and the page and API for `current()`.

    The page reads through a store of its own (its own connections), so a page load never
    queues behind the recorder's writes.
    """
    assert config.server.listen is not None

    def auth() -> tuple[str, str] | None:
        given = current().server.auth
        return None if given is None else (given.username, given.secret)

    server = StatusServer(
        config.server.listen,
        health,
        ready,
        metrics,
        views=views(current, Store(config.storage.url)),
        auth=auth,
    )
    if config.server.auth is None and not is_loopback(server.host):
        log.warning(
            "status_page_open",
            listen=config.server.listen,
            hint="anyone who reaches this address sees the page; set server.auth",
        )
    return server


def views(config: Callable[[], Config], store: Store) -> Views:
    """`GET /`, `/api/status`, `/api/history` for whatever config is current (a reload
    shows at the next request)."""

    def history(since: str, group: str | None) -> dict[str, Any]:
        try:
            seconds = parse_duration(since)
        except ValueError as exc:
            raise BadRequest(f"since: {exc}") from None
        if group is not None and config().group(group) is None:
            raise BadRequest(f"no group named {group!r} in the config")
        return {"events": State(config(), store).history(group, seconds, time.time())}

    def page() -> str:
        now = time.time()
        return render(State(config(), store).page(now), now)

    return Views(
        page=page,
        status=lambda: State(config(), store).status(time.time()),
        history=history,
        close=store.close,
    )
