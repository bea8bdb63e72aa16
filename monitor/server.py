"""/healthz, /readyz and /metrics on a thread of their own.

The daemon's event loop never serves a request: a slow or stuck scraper holds one of this
server's threads, never a probe.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: dict[str, Any]


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9478`, `[::1]:9478`, `:9478` (all interfaces) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9478")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class ListenError(Exception):
    """server.listen cannot be bound (port in use, address not on this host): exit 2."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StatusServer:
    def __init__(
        self,
        listen: str,
        health: Callable[[], Check],
        ready: Callable[[], Check],
        metrics: Callable[[], bytes],
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.health = health
        self.ready = ready
        self.metrics = metrics
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            hint = (
                ": another process listens there; stop it or choose another port"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise ListenError(
                f"server.listen {self.host}:{self.port}: {reason.lower()}{hint}"
            ) from None
        server.owner = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="status-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A scraper that sends nothing must not hold a thread for ever.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        owner: StatusServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, owner.metrics(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            check = owner.health() if path == "/healthz" else owner.ready()
            body = json.dumps({"ok": check.ok, **check.detail}).encode()
            self._send(200 if check.ok else 503, body, "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
