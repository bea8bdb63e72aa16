"""The status page and its API, answered from the read model (monitor.state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from monitor.config import Config
from monitor.durations import parse_duration
from monitor.page import render
from monitor.server import BadRequest, Views
from monitor.state import State
from monitor.store import Store


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
    )
