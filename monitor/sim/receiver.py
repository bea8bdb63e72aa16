"""A local alert receiver: what apprise's json:// (and form://) targets post to.

Used by the tests, the demo and drills to see exactly what on-call would get. It can be
told to fail the next N posts, to show that delivery retries without duplicates.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from monitor.sim.server import JsonHandler, LoopbackServer, Running


@dataclass(frozen=True, slots=True)
class Received:
    at: float
    path: str
    title: str
    message: str
    type: str
    raw: dict[str, Any]


class AlertReceiver(Running):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._fail_next = 0
        self.failed_posts = 0
        self._server = LoopbackServer(_Handler, self)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def port(self) -> int:
        return self._server.port

    def url(self, path: str = "alerts") -> str:
        """An apprise URL that posts JSON here."""
        return f"json://127.0.0.1:{self._server.port}/{path}"

    def fail_next(self, times: int) -> None:
        with self._lock:
            self._fail_next = times

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def _accept(self, path: str, body: bytes) -> int:
        with self._lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                self.failed_posts += 1
                return 503
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                data = {"message": body.decode("utf-8", "replace")}
            self._received.append(
                Received(
                    at=time.time(),
                    path=path,
                    title=str(data.get("title", "")),
                    message=str(data.get("message", "")),
                    type=str(data.get("type", "")),
                    raw=data,
                )
            )
            return 200


class _Handler(JsonHandler):
    def do_POST(self) -> None:
        receiver = self.server.context  # type: ignore[attr-defined]
        status = receiver._accept(self.path, self.read_body())
        self.send_json(status, {"ok": status == 200})
