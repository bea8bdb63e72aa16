"""A loopback HTTP server in a background thread, for the simulators.

The simulators run on threads of their own (not on the daemon's event loop) so a
simulated endpoint that hangs, or a daemon whose loop is busy, cannot stall the other.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A burst of hundreds of probes must not overflow the accept queue.
    request_queue_size = 1024

    def server_activate(self) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.closing = False
        super().server_activate()

    def track(self, conn: socket.socket) -> None:
        with self.connections_lock:
            self.connections.add(conn)
            closing = self.closing
        if closing:  # accepted just before a stop: it must not escape the cut
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def untrack(self, conn: socket.socket) -> None:
        with self.connections_lock:
            self.connections.discard(conn)

    def cut(self) -> None:
        """End every open connection: the stdlib keeps serving keep-alive connections
        after shutdown(), so a pooled client would never see the server go away."""
        with self.connections_lock:
            self.closing = True
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # closed by its handler already
                conn.shutdown(socket.SHUT_RDWR)


class JsonHandler(BaseHTTPRequestHandler):
    """Base handler: JSON helpers and no access log on stderr."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle on, every keep-alive
        # answer would stall ~40 ms waiting for an ACK and swamp latency measurements.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.untrack(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Running:
    """`with sim:` starts a simulator and stops it, whatever happens inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class LoopbackServer:
    """Serves `handler` on 127.0.0.1; can stop listening and listen again on the same port.

    `refuse()` closes the listening socket so new connections are refused, which is what
    a dead endpoint looks like to a client; `restore()` listens again on the same port.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        context: object,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._handler = handler
        self._context = context
        self._host = host
        self._port = port  # 0: any free port, kept across refuse()/restore()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._port

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = _Server((self._host, self._port), self._handler)
            # A handler reaches its simulator as `self.server.context`.
            server.context = self._context  # type: ignore[attr-defined]
            self._port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sim-{self._port}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.cut()
        if thread is not None:
            thread.join(timeout=5)

    def refuse(self) -> None:
        self.stop()

    def restore(self) -> None:
        self.start()
