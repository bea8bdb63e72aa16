"""/healthz, /readyz, /metrics, the status page and its API, on threads of their own.

The daemon's event loop never serves a request: a slow or stuck scraper holds one of this
server's threads, never a probe. The page (`/`) and the API (`/api/*`) may be behind basic
auth; the health checks and metrics never are (orchestrators and Prometheus probe them).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

log = structlog.get_logger()
HTML = "text/html; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: dict[str, Any]


class BadRequest(Exception):
    """A request the API cannot answer as asked; the message is one line for the caller."""


@dataclass(frozen=True, slots=True)
class Views:
    """What the page and the API show, each computed when asked (on a server thread)."""

    page: Callable[[], str]
    status: Callable[[], dict[str, Any]]
    # (since, group) as given in the query string -> `history --json`; BadRequest if wrong.
    history: Callable[[str, str | None], dict[str, Any]]
    # Called when the server stops: release what the views hold (a database connection).
    close: Callable[[], None] = lambda: None


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9478`, `[::1]:9478`, `:9478` (loopback) -> (host, port).

    Without a host the server stays on loopback: the page shows the state of every group,
    so reaching it from elsewhere takes writing the address (`0.0.0.0:9478`) on purpose.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9478")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


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
        views: Views | None = None,
        auth: Callable[[], tuple[str, str] | None] = lambda: None,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.health = health
        self.ready = ready
        self.metrics = metrics
        self.views = views
        # (username, password) for the page and the API, None: open; asked on every
        # request, so a reloaded password applies at once.
        self.auth = auth
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
        if self.views is not None:
            self.views.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A scraper that sends nothing must not hold a thread for ever.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        owner: StatusServer = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        path = url.path
        if path == "/metrics":
            self._send(200, owner.metrics(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            check = owner.health() if path == "/healthz" else owner.ready()
            body = json.dumps({"ok": check.ok, **check.detail}).encode()
            self._send(200 if check.ok else 503, body, JSON)
        elif owner.views is not None and path in ("/", "/api/status", "/api/history"):
            if not self._authorized(owner.auth()):
                self._send(
                    401,
                    _error("authentication required"),
                    JSON,
                    {"WWW-Authenticate": 'Basic realm="convai-monitor", charset="UTF-8"'},
                )
                return
            self._view(owner.views, path, parse_qs(url.query))
        else:
            self._send(404, _error("not found"), JSON)

    def _view(self, views: Views, path: str, query: dict[str, list[str]]) -> None:
        try:
            if path == "/":
                self._send(200, views.page().encode(), HTML)
            elif path == "/api/status":
                self._send(200, _json(views.status()), JSON)
            else:
                since = query.get("since", ["24h"])[-1]
                group = query.get("group", [None])[-1]
                self._send(200, _json(views.history(since, group)), JSON)
        except BadRequest as exc:
            self._send(400, _error(str(exc)), JSON)
        except Exception as exc:  # a page that cannot be read must not kill the thread
            log.error("status_page_failed", path=path, error=str(exc))
            self._send(500, _error("the state could not be read; see the daemon's log"), JSON)

    def _authorized(self, auth: tuple[str, str] | None) -> bool:
        if auth is None:
            return True
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = given.partition(b":")
        # Both compared in constant time, and both always: no early answer to time.
        same_user = hmac.compare_digest(user, auth[0].encode())
        same_password = hmac.compare_digest(password, auth[1].encode())
        return bool(sep) and same_user and same_password

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # The page loads nothing from anywhere: say so, and keep it out of frames.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        )
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _json(data: Any) -> bytes:
    from monitor.report import dumps

    return dumps(data).encode()  # the same text `status --json` and `history --json` print


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
