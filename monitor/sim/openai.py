"""A simulated OpenAI-compatible chat-completions endpoint whose behaviour changes at run time.

The test suite, the `demo` command and the probe benchmark all need endpoints that die,
hang, lie and recover on cue. `EndpointSim` is one such endpoint on a loopback port:

    with EndpointSim(model="m", api_key="sk-test") as sim:
        probe(sim.base_url)                  # 200, a well-formed chat completion
        sim.set(Behaviour.REFUSE)            # connection refused, same port kept
        sim.set(Behaviour.OK, delay=2.0)     # listening again, answering slowly
        sim.script([Behaviour.HTTP_503, Behaviour.HTTP_503])  # fails twice, then OK

How a chat request is answered, in order:

1. Only `POST` to a path ending in `/chat/completions` is a chat request, whatever comes
   before it, so one sim can stand for many endpoints (`/e17/v1/chat/completions`). Any
   other path or method gets OpenAI's 404 "Invalid URL" JSON.
2. The behaviour is the one set for the caller's instance by `set_for()` (read from the
   probe's User-Agent, `convai-monitor/VERSION (instance NAME)`: one monitor's network
   path is broken, the others' are not), else the next step queued by `script()`, else
   the one set last. A per-instance `REFUSE` hangs up without answering (the connection
   is accepted before the User-Agent can be read).
3. `REFUSE` and `HANG` act on the connection before anything is read into a reply: a dead
   or wedged server checks no keys.
4. `delay` seconds pass.
5. A wrong bearer key (when `api_key` is set) gets the 401, a body that is not a JSON object
   gets 400, a wrong `model` gets the 404 `model_not_found`; otherwise the behaviour answers.

`stream: true` is honoured by `OK` (a short server-sent-events answer ending in
`[DONE]`), paced by `first_chunk_delay` and `chunk_delay` when set; every other behaviour
answers as it would without it. `held` / `held_peak` count `HANG` requests whose client
is still waiting (one that closes its connection is let go).

Run standalone (the benchmark does, to keep the simulated endpoints off its own process):

    python -m monitor.sim.openai --port 0 --delay 0.05 --model m

prints the origin (`http://127.0.0.1:PORT`) as its first stdout line, then serves until
SIGTERM, SIGINT, or EOF on stdin when stdin is a pipe. Lines on that pipe change the
behaviour at run time (a benchmark starts an outage in the sim's own process this way):
`set BEHAVIOUR`, `flaky RATE [BEHAVIOUR]`, `for INSTANCE BEHAVIOUR` (`for INSTANCE -`
clears it); each is answered with `ok` or `error: ...` on
stdout.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import json
import os
import random
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType
from typing import Any, TypedDict
from urllib.parse import urlsplit

from monitor.sim.server import JsonHandler, LoopbackServer, Running

__all__ = ["Behaviour", "EndpointSim", "RecordedRequest", "main"]


class Behaviour(StrEnum):
    """What the simulated endpoint does with the next chat request."""

    OK = "ok"  # 200 well-formed chat completion with usage
    REFUSE = "refuse"  # nothing listening: connection refused (same port when restored)
    HANG = "hang"  # reads the request, never answers until set() or stop()
    HTTP_500 = "http_500"  # 500 with an OpenAI-style error body
    HTTP_503 = "http_503"  # 503 "overloaded"
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    UNAUTHORIZED = "unauthorized"  # 401 invalid_api_key, echoing the key masked (or whole)
    FORBIDDEN = "forbidden"  # 403 permission error
    BAD_KEY_400 = "bad_key_400"  # 400 saying the key is invalid, as some gateways do
    PROBE_REJECTED = "probe_rejected"  # 400 about the request's own max_tokens
    MODEL_NOT_FOUND = "model_not_found"  # 404 model_not_found
    GARBAGE = "garbage"  # 200 whose body is not JSON
    HTML = "html"  # 200 text/html: a captive portal or proxy error page
    NO_CHOICES = "no_choices"  # 200 chat completion with "choices": []
    HUGE = "huge"  # 200 with a ~20 MB JSON body and Content-Length
    ENDLESS = "endless"  # 200 chunked event stream that never ends
    REDIRECT = "redirect"  # 302 to another URL
    INVALID_MODEL_400 = "invalid_model_400"  # LiteLLM proxy: 400 "Invalid model name passed"
    REASONING = "reasoning"  # a reasoning model: rejects max_tokens and temperature 0 (400)
    CANNED = "canned"  # the reply given to canned(): any status, body and content type


class RecordedRequest(TypedDict):
    """The last chat request the sim saw, for tests to check what a probe sent."""

    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any  # the parsed body, or None when it was not JSON


# convai-monitor's probes say who sent them: "convai-monitor/1.2.0 (instance east)".
_AGENT = re.compile(r"\(instance ([^)\s]+)\)")

# The ~20 MB that HUGE sends: big enough that a client without a body cap notices the
# memory and time, small enough to build in a fraction of a second.
HUGE_BODY_BYTES = 20 * 1024 * 1024

# ENDLESS writes this much per HTTP chunk; large enough that a reader gets hundreds of KB
# quickly, small enough that a stop() is noticed between chunks.
_ENDLESS_CHUNK_BYTES = 16 * 1024


@dataclass(frozen=True)
class _Plan:
    """One request's snapshot of the sim's settings, taken under the lock."""

    behaviour: Behaviour
    delay: float
    changed: threading.Event  # set when set()/stop() releases hanging handlers
    stopped: threading.Event  # set when the sim stops


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the client closed its end (readable, with nothing left to read)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class EndpointSim(Running):
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 (see the module doc).

    `set()`, `script()` and the attributes may be changed from any thread while handler
    threads serve. `model`, `api_key`, `echo_key`, `retry_after` and `redirect_to` are
    plain attributes: each is read once per request, and rebinding an attribute is atomic.
    """

    def __init__(
        self,
        *,
        model: str = "sim-model",
        api_key: str | None = None,
        delay: float = 0.0,
        behaviour: Behaviour = Behaviour.OK,
        port: int = 0,
    ) -> None:
        self.model = model
        self.api_key = api_key
        # When True the 401 quotes the whole key the client sent: the worst upstream there
        # is, so that the daemon's redaction can be tested against it.
        self.echo_key = False
        self.retry_after = 1  # seconds, sent with RATE_LIMITED
        # Where REDIRECT points; None means `<origin>/login`, like a captive portal.
        self.redirect_to: str | None = None
        # Random independent failures (see flaky()); 0 means none.
        self._flake_rate = 0.0
        self._flake_as = Behaviour.HTTP_500
        self._random = random.Random()
        # A streamed OK answer's pace: headers at once, the first chunk (the first token)
        # after `first_chunk_delay` s, each later chunk `chunk_delay` s after the one
        # before. Both 0: the whole stream in one write, as before.
        self.first_chunk_delay = 0.0
        self.chunk_delay = 0.0
        # What CANNED answers: (status, body, content type), e.g. a real server's error.
        self._canned: tuple[int, bytes, str] = (200, b"{}", "application/json")

        self._lock = threading.Lock()
        self._behaviour = behaviour
        self._delay = delay
        self._script: collections.deque[Behaviour] = collections.deque()
        # Behaviour by the calling monitor's instance name (see set_for()).
        self._by_instance: dict[str, Behaviour] = {}
        self._requests = 0
        # HANG requests whose client is still waiting, now and at most at once.
        self._held = 0
        self.held_peak = 0
        self._last_request: RecordedRequest | None = None
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._ids = itertools.count(1)

        # Serialises start/stop/refuse/restore so that concurrent set() calls leave the
        # listening state matching the behaviour set last.
        self._listen_lock = threading.Lock()
        self._running = False
        self._server = LoopbackServer(_Handler, self, port=port)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind a port and serve; a sim created with `REFUSE` binds, then refuses."""
        with self._listen_lock:
            if self._running:
                return
            with self._lock:
                self._stopped = threading.Event()
            self._server.start()
            self._running = True
            self._sync_listening()

    def stop(self) -> None:
        """Stop serving and release every hanging or delayed handler. Idempotent."""
        with self._listen_lock:
            if not self._running:
                return
            self._running = False
            with self._lock:
                stopped = self._stopped
                released, self._changed = self._changed, threading.Event()
            stopped.set()
            released.set()
            self._server.stop()

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        # Port 0 would be a URL nobody can reach: say so rather than hand it out.
        if self._server.port == 0:
            raise RuntimeError("EndpointSim has no port until start()")
        return self._server.port

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`: prefix any path ending in /chat/completions to it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL: `http://127.0.0.1:PORT/v1`."""
        return f"{self.origin}/v1"

    # -- run-time control ----------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    @property
    def delay(self) -> float:
        with self._lock:
            return self._delay

    def set(self, behaviour: Behaviour, *, delay: float | None = None) -> None:
        """Switch behaviour (and optionally delay) for the requests that follow.

        Handlers hanging under `HANG` are released and drop their connection. `REFUSE`
        stops listening and cuts open connections; leaving it listens on the same port.
        """
        with self._lock:
            self._behaviour = behaviour
            if delay is not None:
                self._delay = delay
            released, self._changed = self._changed, threading.Event()
        released.set()
        with self._listen_lock:
            if self._running:
                self._sync_listening()

    def set_for(self, instance: str, behaviour: Behaviour | None) -> None:
        """Answer requests from one monitor instance (named in its User-Agent) with this
        behaviour, whatever the others get; None: like everybody else again. Hanging
        requests of that instance are released."""
        with self._lock:
            if behaviour is None:
                self._by_instance.pop(instance, None)
            else:
                self._by_instance[instance] = behaviour
            released, self._changed = self._changed, threading.Event()
        released.set()

    def script(self, steps: Sequence[Behaviour]) -> None:
        """Answer the next `len(steps)` chat requests with these behaviours, in order.

        Replaces any steps still queued; once they are used up the behaviour from `set()`
        applies again. A scripted `REFUSE` cannot refuse a connection already accepted, so
        it drops the connection without answering, which a client sees much the same way.
        """
        with self._lock:
            self._script = collections.deque(steps)

    # -- inspection ----------------------------------------------------------------------

    @property
    def held(self) -> int:
        """HANG requests whose client is still connected and waiting (see held_peak)."""
        with self._lock:
            return self._held

    def _hold(self, delta: int) -> None:
        with self._lock:
            self._held += delta
            self.held_peak = max(self.held_peak, self._held)

    @property
    def requests(self) -> int:
        """Chat requests seen so far (refused connections never arrive, so never count)."""
        with self._lock:
            return self._requests

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._last_request

    # -- used by the handler -------------------------------------------------------------

    def _sync_listening(self) -> None:
        # Caller holds _listen_lock and the sim is running.
        refusing = self.behaviour is Behaviour.REFUSE
        if refusing and self._server.listening:
            self._server.refuse()  # also cuts open keep-alive connections
        elif not refusing and not self._server.listening:
            self._server.restore()

    def canned(self, status: int, body: bytes, content_type: str) -> None:
        """Answer every chat request with exactly this reply (a real server's error)."""
        with self._lock:
            self._canned = (status, body, content_type)
        self.set(Behaviour.CANNED)

    def flaky(
        self, rate: float, *, behaviour: Behaviour = Behaviour.HTTP_500, seed: int | None = None
    ) -> None:
        """Answer a random `rate` share of OK requests with `behaviour` instead (blips)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self._flake_rate, self._flake_as = rate, behaviour
            if seed is not None:
                self._random.seed(seed)

    def _plan(self, record: RecordedRequest) -> _Plan:
        with self._lock:
            self._requests += 1
            self._last_request = record
            own = self._by_instance.get(_instance(record["headers"].get("user-agent")) or "")
            if own is not None:
                behaviour = own
            elif self._script:
                behaviour = self._script.popleft()
            else:
                behaviour = self._behaviour
            if behaviour is Behaviour.OK and self._random.random() < self._flake_rate:
                behaviour = self._flake_as
            return _Plan(behaviour, self._delay, self._changed, self._stopped)

    def _next_id(self) -> str:
        return f"chatcmpl-sim{next(self._ids):08d}"


class _Handler(JsonHandler):
    """Serves one connection for an `EndpointSim` (reached as `self.server.context`)."""

    @property
    def sim(self) -> EndpointSim:
        sim = getattr(self.server, "context", None)
        if not isinstance(sim, EndpointSim):
            raise TypeError("_Handler needs an EndpointSim as its server context")
        return sim

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            # The client hung up mid-answer, or stop()/REFUSE cut the connection: both are
            # scenarios the sim exists to produce, not errors worth a traceback.
            self.close_connection = True

    def do_POST(self) -> None:
        body = self.read_body()
        path = urlsplit(self.path).path
        if not path.endswith("/chat/completions"):
            self._invalid_url("POST", path)
            return
        self._chat(path, body)

    def do_GET(self) -> None:
        self.read_body()
        self._invalid_url("GET", urlsplit(self.path).path)

    def do_PUT(self) -> None:
        self.read_body()
        self._invalid_url("PUT", urlsplit(self.path).path)

    def do_DELETE(self) -> None:
        self.read_body()
        self._invalid_url("DELETE", urlsplit(self.path).path)

    def do_PATCH(self) -> None:
        self.read_body()
        self._invalid_url("PATCH", urlsplit(self.path).path)

    def _invalid_url(self, method: str, path: str) -> None:
        self._error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None)

    # -- chat requests -------------------------------------------------------------------

    def _chat(self, path: str, raw: bytes) -> None:
        sim = self.sim
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        plan = sim._plan({"path": path, "headers": headers, "json": payload})

        if plan.behaviour is Behaviour.REFUSE or sim.behaviour is Behaviour.REFUSE:
            # Scripted REFUSE, or a request that slipped in on a connection as the
            # listener closed: the nearest thing to a refusal is hanging up unanswered.
            self.close_connection = True
            return
        if plan.behaviour is Behaviour.HANG:
            # Held until released, or until the client gives up and closes: a client that
            # abandons its requests must not look like one that keeps them all open.
            sim._hold(1)
            try:
                while not plan.changed.wait(0.02) and not _peer_closed(self.connection):
                    pass
            finally:
                sim._hold(-1)
            self.close_connection = True
            return
        if plan.delay > 0 and plan.stopped.wait(plan.delay):
            self.close_connection = True  # stopped while delaying: nobody to answer
            return

        key = _bearer(headers.get("authorization"))
        if sim.api_key is not None and key != sim.api_key:
            self._unauthorized(key)
            return
        if not isinstance(payload, dict):
            self._error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
                None,
            )
            return
        requested = payload.get("model")
        if not isinstance(requested, str):
            self._error(400, "you must provide a model parameter", "invalid_request_error", None)
            return
        if requested != sim.model:
            self._model_not_found(requested)
            return
        self._answer(plan, key, requested, payload)

    def _answer(self, plan: _Plan, key: str | None, model: str, payload: dict[str, Any]) -> None:
        match plan.behaviour:
            case Behaviour.OK if payload.get("stream") is True:
                self._stream(model, payload)
            case Behaviour.OK:
                self.send_json(200, self._completion(model, payload, "OK"))
            case Behaviour.NO_CHOICES:
                completion = self._completion(model, payload, "")
                completion["choices"] = []
                self.send_json(200, completion)
            case Behaviour.HTTP_500:
                self._error(
                    500,
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                )
            case Behaviour.HTTP_503:
                self._error(503, "The server is overloaded or not ready yet.", "server_error", None)
            case Behaviour.RATE_LIMITED:
                self._error(
                    429,
                    f"Rate limit reached for {model} on requests per min (RPM): Limit 3, "
                    f"Used 3, Requested 1. Please try again in {self.sim.retry_after}s.",
                    "requests",
                    "rate_limit_exceeded",
                    headers={"Retry-After": str(self.sim.retry_after)},
                )
            case Behaviour.UNAUTHORIZED:
                self._unauthorized(key)
            case Behaviour.FORBIDDEN:
                self._error(
                    403,
                    "You are not allowed to sample from this model.",
                    "permission_error",
                    "forbidden",
                )
            case Behaviour.BAD_KEY_400:
                self._error(
                    400,
                    "API key not valid. Please pass a valid API key.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            case Behaviour.PROBE_REJECTED:
                self._error(
                    400,
                    "max_tokens is too small for this model: reasoning models need room to "
                    "think before they answer. Please retry with a larger max_tokens.",
                    "invalid_request_error",
                    "invalid_value",
                    param="max_tokens",
                )
            case Behaviour.MODEL_NOT_FOUND:
                self._model_not_found(model)
            case Behaviour.INVALID_MODEL_400:
                self._error(
                    400,
                    f"Invalid model name passed in model={model}. Call `/v1/models` to view "
                    "available models for your key.",
                    "invalid_request_error",
                    "400",
                    param="model",
                )
            case Behaviour.REASONING:
                self._reasoning(model, payload)
            case Behaviour.CANNED:
                with self.sim._lock:
                    status, body, content_type = self.sim._canned
                self.send_bytes(status, body, content_type)
            case Behaviour.GARBAGE:
                # Claims JSON, sends none: a broken upstream rarely labels its garbage.
                self.send_bytes(200, b"\x00\xffgarbage{{not json", "application/json")
            case Behaviour.HTML:
                self.send_bytes(200, _PORTAL_PAGE, "text/html; charset=utf-8")
            case Behaviour.HUGE:
                self.send_bytes(200, _huge_body(), "application/json")
            case Behaviour.ENDLESS:
                self._endless(plan.stopped, model)
            case Behaviour.REDIRECT:
                location = self.sim.redirect_to or f"{self.sim.origin}/login"
                self.send_bytes(
                    302,
                    b"<html><body>302 Found</body></html>",
                    "text/html",
                    headers={"Location": location},
                )
            case Behaviour.REFUSE | Behaviour.HANG:  # pragma: no cover - handled in _chat
                self.close_connection = True

    def _reasoning(self, model: str, payload: dict[str, Any]) -> None:
        # OpenAI's o-series answers, word for word, when sent what older models accept.
        if "max_tokens" in payload:
            self._error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                param="max_tokens",
            )
        elif payload.get("temperature", 1) != 1:
            self._error(
                400,
                f"Unsupported value: 'temperature' does not support {payload['temperature']} "
                "with this model. Only the default (1) value is supported.",
                "invalid_request_error",
                "unsupported_value",
                param="temperature",
            )
        elif payload.get("stream") is True:
            self._stream(model, payload)
        else:
            self.send_json(200, self._completion(model, payload, "OK"))

    def _completion(self, model: str, payload: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = _estimate_prompt_tokens(payload.get("messages"))
        # "OK" is one token in every common tokenizer; an empty reply is none.
        completion_tokens = 1 if content else 0
        return {
            "id": self.sim._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stream(self, model: str, payload: dict[str, Any]) -> None:
        """A short server-sent-events answer, as an OpenAI streaming completion."""
        completion = self._completion(model, payload, "OK")
        events = []
        for delta, finish in (({"role": "assistant", "content": "OK"}, None), ({}, "stop")):
            chunk = {
                "id": completion["id"],
                "object": "chat.completion.chunk",
                "created": completion["created"],
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            events.append(f"data: {json.dumps(chunk)}\n\n")
        events.append("data: [DONE]\n\n")
        first, later = self.sim.first_chunk_delay, self.sim.chunk_delay
        if not first and not later:
            self.send_bytes(200, "".join(events).encode(), "text/event-stream")
            return
        # Paced: what a busy model does (the character waits for the first token).
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        stopped = self.sim._stopped
        for index, event in enumerate(events):
            if stopped.wait(first if index == 0 else later):
                self.close_connection = True
                return
            data = event.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _endless(self, stopped: threading.Event, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = (
            "data: "
            + json.dumps(
                {
                    "id": self.sim._next_id(),
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": "OK "}, "finish_reason": None}],
                }
            )
            + "\n\n"
        ).encode()
        data = event * max(1, _ENDLESS_CHUNK_BYTES // len(event))
        chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        # Ends when a write fails (the client left, or stop() cut the socket) or on stop().
        while not stopped.is_set():
            self.wfile.write(chunk)
        self.close_connection = True

    # -- error bodies --------------------------------------------------------------------

    def _unauthorized(self, key: str | None) -> None:
        if not key:
            self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
            return
        shown = key if self.sim.echo_key else _mask(key)
        self._error(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )

    def _model_not_found(self, model: str) -> None:
        self._error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )

    def _error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": kind, "param": param, "code": code}
        self.send_json(status, {"error": error}, headers)


def _instance(agent: str | None) -> str | None:
    """The monitor instance named in a probe's User-Agent, if any."""
    match = _AGENT.search(agent or "")
    return match.group(1) if match else None


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def _mask(key: str) -> str:
    # OpenAI shows the first 3 and last 4 characters. A key too short to keep 4 characters
    # hidden is masked whole, so the mask never gives most of a key away.
    if len(key) < 12:
        return "*" * len(key)
    return f"{key[:3]}...{key[-4:]}"


def _estimate_prompt_tokens(messages: object) -> int:
    # Roughly OpenAI's accounting: ~4 characters a token, 3 tokens of framing per message,
    # 3 to prime the reply. Only plausibility matters; the daemon sums what it is told.
    if not isinstance(messages, list):
        return 3
    chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    return chars // 4 + 3 * len(messages) + 3


@functools.cache
def _huge_body() -> bytes:
    # Built once per process: twenty megabytes of JSON is cheap to keep, slow to rebuild.
    filler = "x" * HUGE_BODY_BYTES
    completion = {
        "id": "chatcmpl-simhuge",
        "object": "chat.completion",
        "created": 0,
        "model": "huge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": filler},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return json.dumps(completion).encode()


_PORTAL_PAGE = b"""<!DOCTYPE html>
<html><head><title>Network login required</title></head>
<body><h1>Welcome to Guest Wi-Fi</h1>
<p>Please accept the terms of use to continue.</p>
<form method="post" action="/login"><button>Accept</button></form>
</body></html>
"""


# -- standalone ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve one sim until SIGTERM, SIGINT or stdin EOF; print its origin first."""
    parser = argparse.ArgumentParser(
        prog="python -m monitor.sim.openai",
        description="Serve a simulated OpenAI-compatible chat-completions endpoint.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--model", default="sim-model", help="the only model served")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument(
        "--behaviour",
        type=Behaviour,
        choices=list(Behaviour),
        default=Behaviour.OK,
        help="what every request gets (default: ok)",
    )
    parser.add_argument(
        "--flaky", type=float, default=0.0, metavar="RATE", help="fail this share of requests"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for --flaky")
    parser.add_argument(
        "--flaky-as",
        type=Behaviour,
        choices=list(Behaviour),
        default=Behaviour.HTTP_500,
        help="what a --flaky failure answers (default: http_500)",
    )
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    sim = EndpointSim(
        model=args.model,
        api_key=args.api_key,
        delay=args.delay,
        behaviour=args.behaviour,
        port=args.port,
    )
    sim.flaky(args.flaky, behaviour=args.flaky_as, seed=args.seed)
    try:
        sim.start()
        print(sim.origin, flush=True)
        if _stdin_is_pipe():
            threading.Thread(
                target=_wait_for_eof, args=(done, sim), name="stdin-eof", daemon=True
            ).start()
        # A timeout keeps the main thread waking, so signal handlers run promptly.
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def spawn(*argv: str) -> tuple[subprocess.Popen[str], str]:
    """This sim in its own process (its CPU is not the caller's), and the origin it serves
    on. It ends when the caller closes its stdin or exits; `command` drives it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.sim.openai", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def command(proc: subprocess.Popen[str], line: str) -> None:
    """Send one control line (see `_command`) to a spawned sim and wait until it applied it."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline().strip()
    if answer != "ok":
        raise RuntimeError(f"sim refused {line!r}: {answer}")


def _stdin_is_pipe() -> bool:
    # EOF on a pipe means the parent is gone, so the sim should go too. /dev/null or a
    # terminal would read as EOF at once or never, so only a pipe or socket is watched.
    if sys.stdin is None:
        return False
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _wait_for_eof(done: threading.Event, sim: EndpointSim | None = None) -> None:
    # os.read on the raw descriptor, not sys.stdin: a daemon thread blocked inside the
    # buffered reader holds its lock, and the interpreter aborts if it finds it held at exit.
    pending = b""
    try:
        while chunk := os.read(sys.stdin.fileno(), 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if sim is not None and line.strip():
                    print(_command(sim, line.decode("utf-8", "replace")), flush=True)
    except (OSError, ValueError):
        pass
    done.set()


def _command(sim: EndpointSim, line: str) -> str:
    """Apply one control line (`set BEHAVIOUR`, `flaky RATE [BEHAVIOUR]` or
    `for INSTANCE BEHAVIOUR|-`)."""
    words = line.split()
    try:
        if words[0] == "set" and len(words) == 2:
            sim.set(Behaviour(words[1]))
        elif words[0] == "for" and len(words) == 3:
            sim.set_for(words[1], None if words[2] == "-" else Behaviour(words[2]))
        elif words[0] == "flaky" and len(words) in (2, 3):
            failure = Behaviour(words[2]) if len(words) == 3 else Behaviour.HTTP_500
            sim.flaky(float(words[1]), behaviour=failure)
        else:
            return f"error: unknown command {line.strip()!r}"
    except ValueError as exc:
        return f"error: {exc}"
    return "ok"


if __name__ == "__main__":
    sys.exit(main())
