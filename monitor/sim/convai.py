"""A local Convai Custom LLM API: the four `/llm-models/*` calls, over real HTTP on loopback.

It follows `convai-api.md` (S1, Convai's official page) and the simulator rules of its §8.
Tests, the `demo` command and operator drills use it in place of `https://api.convai.com`.

Behaviour, in the order a request is checked (§8.1):

1. Routing: a path other than the four below is 404 `Not found`; another method on one of
   them is 405 `Method not allowed` with `Allow: POST`. Routing comes before authentication,
   as in most web frameworks, so these answers reveal nothing about keys.
2. Authentication: a missing or unknown `CONVAI-API-KEY` header is 401
   `Unauthorized: missing or invalid CONVAI-API-KEY`.
3. Validation, 400:
   - a body that is not a JSON object is `Malformed JSON body` (an empty body counts as `{}`);
   - a required field that is absent, null or an empty string is `Missing required field`;
   - a field of the wrong JSON type, or an empty optional string, is
     `Invalid value for field '<name>'` (S1 does not say; naming the field helps drills);
   - an update with none of `display_name`, `base_url`, `api_key`, `is_uncensored` is
     `No valid fields to update`. A null optional field counts as absent.
   `model_name` is not an update field (S1): the simulator **ignores** it, so
   `{"model_group_name": "g", "model_name": "m"}` is 400 `No valid fields to update` and the
   stored `model_name` never changes. Ignoring (not rejecting) is the lenient reading of §9 Q4.
   Unknown fields are ignored. `list` takes no body and ignores any it is sent.
4. Existence, 404 `Model not found`: models are scoped per API key, so a model registered
   under another key is "not found" exactly like one that never existed (§8.4).
5. Uniqueness, 409: `model_group_name` is unique per API key (`Model group name already
   exists`), and so is `display_name` (`Display name already exists`), on register (where an
   omitted display name defaults to the group name) and on update. Setting a model's
   display name to its own current value is not a conflict.
6. Injected faults (`fail_next`, `hang_next`) stand in for a storage fault, the last step of
   §8.1: they are consumed only by requests that would otherwise succeed, and such a request
   changes nothing.

Other choices where S1 is silent: `updated_fields` lists every updatable field the request
carried, in request order, whether or not its value changed (§9 Q3); a deregistered group name
can be registered again; `list` is newest first (as in S1's example) and carries `count` but no
`message` (also as in the example); `base_url` is not checked as a URL (§9 Q11); the
`Content-Type` header is not checked.

Every response, errors included, carries a fresh UUID4 `transactionID`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import FrameType
from typing import Any, Literal

from monitor.sim.server import JsonHandler, LoopbackServer, Running

Op = Literal["register", "update", "deregister", "list"]

OPS: tuple[Op, ...] = ("register", "update", "deregister", "list")
DEFAULT_API_KEY = "sim-convai-key"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CATEGORY = "Private"

MSG_UNAUTHORIZED = "Unauthorized: missing or invalid CONVAI-API-KEY"
MSG_MISSING_FIELD = "Missing required field"
MSG_MALFORMED_JSON = "Malformed JSON body"
MSG_NO_FIELDS = "No valid fields to update"
MSG_NOT_FOUND = "Model not found"
MSG_GROUP_EXISTS = "Model group name already exists"
MSG_DISPLAY_EXISTS = "Display name already exists"
MSG_DATABASE = "Database error"
MSG_RATE_LIMIT = "Rate limit exceeded"
MSG_NO_ROUTE = "Not found"
MSG_BAD_METHOD = "Method not allowed"

_PATHS: dict[str, Op] = {f"/llm-models/{op}": op for op in OPS}
# S1's update fields; `model_name` is deliberately absent (see the module docstring).
_UPDATABLE: dict[str, type] = {
    "display_name": str,
    "base_url": str,
    "api_key": str,
    "is_uncensored": bool,
}
# How long a hung request is held when nobody calls stop(): far beyond any sane client
# timeout, yet finite so a forgotten hang cannot pin a thread forever.
HANG_SECONDS = 60.0


@dataclass(frozen=True)
class SimCall:
    """One request the simulator answered (or, for a hang, held without answering).

    `op` is the operation name for the four known paths, else the request path.
    `status` is the HTTP status sent, or None for a hung request that never got an answer.
    `body` is the JSON object as received (secrets included: this is for tests), or `{}`
    when the body was not a JSON object. `at` is `time.monotonic()` when the request arrived.
    """

    op: str
    status: int | None
    body: dict[str, Any]
    transaction_id: str | None
    at: float
    message: str | None = None


@dataclass
class _Model:
    model_group_name: str
    model_name: str
    display_name: str
    base_url: str
    api_key: str
    is_uncensored: bool
    category: str
    created_at: str
    seq: int

    def public(self) -> dict[str, Any]:
        """The model as `list` shows it: everything but the api_key (§5, §8.7)."""
        return {
            "model_group_name": self.model_group_name,
            "model_name": self.model_name,
            "display_name": self.display_name,
            "base_url": self.base_url,
            "is_uncensored": self.is_uncensored,
            "category": self.category,
            "created_at": self.created_at,
        }

    def full(self) -> dict[str, Any]:
        return {**self.public(), "api_key": self.api_key}


@dataclass
class _Injection:
    status: int  # 0 marks a hang
    remaining: int
    message: str | None = None
    raw: str | None = None


@dataclass
class _Outcome:
    status: int
    payload: dict[str, Any] | None = None
    raw: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class _Rejection(Exception):
    """Raised inside request handling to answer with an error envelope."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def now_created_at() -> str:
    """Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form of S1's `created_at`."""
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


def _default_message(op: Op, status: int) -> str:
    match status:
        case 200:
            return "Request failed"
        case 400:
            return MSG_MISSING_FIELD
        case 401:
            return MSG_UNAUTHORIZED
        case 404:
            return MSG_NOT_FOUND
        case 409:
            return MSG_GROUP_EXISTS if op == "register" else MSG_DISPLAY_EXISTS
        case 429:
            return MSG_RATE_LIMIT
        case 500:
            return MSG_DATABASE
        case _:
            return HTTPStatus(status).phrase


class _FixedPortServer(LoopbackServer):
    """LoopbackServer bound to a chosen port (0 picks a free one)."""

    def __init__(self, handler: type[JsonHandler], context: object, port: int) -> None:
        super().__init__(handler, context)
        self._port = port


class _Handler(JsonHandler):
    """Hands every request to the ConvaiSim that owns the server."""

    # The sim run this connection was accepted by; see ConvaiSim._serve.
    generation = 0

    @property
    def sim(self) -> ConvaiSim:
        sim: ConvaiSim = self.server.context  # type: ignore[attr-defined]
        return sim

    def setup(self) -> None:
        super().setup()
        self.generation = self.sim._generation_now()

    def handle(self) -> None:
        # A client that gives up (timeout) or a refuse() that cuts the socket is normal
        # here; it must not print a traceback from the server thread.
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:
        self.sim._serve(self, "POST")

    def do_GET(self) -> None:
        self.sim._serve(self, "GET")

    def do_PUT(self) -> None:
        self.sim._serve(self, "PUT")

    def do_PATCH(self) -> None:
        self.sim._serve(self, "PATCH")

    def do_DELETE(self) -> None:
        self.sim._serve(self, "DELETE")


class ConvaiSim(Running):
    """A local Convai Custom LLM API on `127.0.0.1`.

    Each key in `api_keys` is a separate Convai account with its own models. The first key
    is the default for the inspection helpers. Test controls and inspection helpers are
    thread-safe; they may be called while requests are in flight.
    """

    def __init__(self, api_keys: Iterable[str] = (DEFAULT_API_KEY,), *, port: int = 0) -> None:
        keys = tuple(api_keys)
        if not keys or any(not key for key in keys):
            raise ValueError("ConvaiSim needs at least one non-empty API key")
        self._keys = keys
        self._http = _FixedPortServer(_Handler, self, port)
        self._lock = threading.Lock()
        self._store: dict[str, dict[str, _Model]] = {key: {} for key in keys}
        self._injections: dict[Op, deque[_Injection]] = {op: deque() for op in OPS}
        self._calls: list[SimCall] = []
        self._seq = 0
        self._delay = 0.0
        self._drop_fields: deque[str] = deque()  # see drop_next_field
        self._after_update: list[tuple[str, str]] = []  # see move_after_next_update
        # Replaced on every start: set when the server stops, it wakes delayed and hung
        # requests of that run so they end instead of outliving it.
        self._release = threading.Event()
        self._generation = 0
        self._up = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._http.listening:
                return
            self._release = threading.Event()
            self._generation += 1
            self._up = True
        self._http.start()

    def stop(self) -> None:
        """Stop listening, end every open connection and release delayed or hung requests."""
        with self._lock:
            self._release.set()
            self._generation += 1
            self._up = False
        self._http.stop()  # also cuts open keep-alive connections

    def refuse(self) -> None:
        """Go down on the same port: new connections are refused, open ones are cut."""
        self.stop()

    def restore(self) -> None:
        """Listen again on the port used before `refuse()`; the models are kept."""
        self.start()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, no trailing slash; valid once started."""
        if self._http.port == 0:
            raise RuntimeError("ConvaiSim has not been started")
        return self._http.origin

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def api_keys(self) -> tuple[str, ...]:
        return self._keys

    # -- test controls ---------------------------------------------------------------------

    @property
    def delay(self) -> float:
        """Seconds every request waits before it is handled (0 = none)."""
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._delay = seconds

    def fail_next(
        self,
        op: str,
        status: int,
        times: int = 1,
        message: str | None = None,
        *,
        raw: str | None = None,
    ) -> None:
        """Answer the next `times` otherwise-successful calls of `op` with an error.

        The answer is the error envelope with `message` (default: the spec's message for
        `status`, e.g. 500 `Database error`, 429 `Rate limit exceeded`). `status` 200 sends
        an error envelope with HTTP 200, the case §9 Q2 leaves open. `raw` sends that text as
        `text/html` instead of JSON, like a proxy in front of Convai. Calls queue: two
        `fail_next` calls for one op are used one after the other.
        """
        checked = self._check_op(op)
        if status != 200 and not 400 <= status <= 599:
            raise ValueError("status must be 200 (error envelope) or 4xx/5xx")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._injections[checked].append(_Injection(status, times, message, raw))

    def hang_next(self, op: str, times: int = 1) -> None:
        """Hold the next `times` otherwise-successful calls of `op` without answering.

        A held request changes nothing. It is released by `stop()`/`refuse()` (or after
        `HANG_SECONDS`) and its connection is then closed with no response, so a client sees
        a read timeout. Hangs queue with `fail_next` injections in call order.
        """
        checked = self._check_op(op)
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._injections[checked].append(_Injection(0, times))

    def drop_next_field(self, name: str) -> None:
        """The next update that sends `name` accepts the call but silently leaves that field
        unchanged and out of `updated_fields`: a change that did not take."""
        with self._lock:
            self._drop_fields.append(name)

    def move(self, model_group_name: str, base_url: str, convai_key: str | None = None) -> None:
        """Change a model's base_url without HTTP (no call recorded), as someone using
        Convai's dashboard would."""
        owner = self._owner(convai_key)
        with self._lock:
            self._store[owner][model_group_name].base_url = base_url

    def move_after_next_update(self, model_group_name: str, base_url: str) -> None:
        """Right after the next successful update of the group, someone else moves it to
        `base_url`: the updater's read-back shows a URL it did not send."""
        with self._lock:
            self._after_update.append((model_group_name, base_url))

    def clear_injections(self) -> None:
        with self._lock:
            for queue in self._injections.values():
                queue.clear()

    def reset(self) -> None:
        """Forget every model, call, injection and delay; release delayed or hung requests.

        The server keeps listening, so one running simulator can serve many tests.
        """
        with self._lock:
            for models in self._store.values():
                models.clear()
            for queue in self._injections.values():
                queue.clear()
            self._drop_fields.clear()
            self._after_update.clear()
            self._calls.clear()
            self._delay = 0.0
            # Waiters hold the old event: setting it ends them, the new one serves on.
            self._release.set()
            self._release = threading.Event()

    # -- inspection ------------------------------------------------------------------------

    @property
    def calls(self) -> list[SimCall]:
        """Every request so far, in the order they were answered (a copy)."""
        with self._lock:
            return list(self._calls)

    def calls_of(self, op: str) -> list[SimCall]:
        with self._lock:
            return [call for call in self._calls if call.op == op]

    def record(self, model_group_name: str, api_key: str | None = None) -> dict[str, Any] | None:
        """The stored model, api_key included, or None.

        `api_key` is the *Convai* key that owns the model (default: the first key).
        """
        owner = self._owner(api_key)
        with self._lock:
            model = self._store[owner].get(model_group_name)
            return model.full() if model is not None else None

    def records(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every model of one Convai key (default: the first), api_keys included."""
        owner = self._owner(api_key)
        with self._lock:
            return [model.full() for model in self._listed(owner)]

    def seed(
        self,
        model_group_name: str,
        model_name: str,
        api_key: str,
        *,
        is_uncensored: bool = False,
        display_name: str | None = None,
        base_url: str | None = None,
        created_at: str | None = None,
        convai_key: str | None = None,
    ) -> dict[str, Any]:
        """Register a model without HTTP (no call is recorded) and return its record.

        `api_key` is the model's endpoint key, as in a register body; `convai_key` is the
        owning Convai key (default: the first). Raises ValueError on a duplicate group or
        display name, as register would answer 409.
        """
        owner = self._owner(convai_key)
        with self._lock:
            models = self._store[owner]
            label = display_name if display_name is not None else model_group_name
            if model_group_name in models:
                raise ValueError(MSG_GROUP_EXISTS)
            if any(model.display_name == label for model in models.values()):
                raise ValueError(MSG_DISPLAY_EXISTS)
            model = self._new_model(
                model_group_name,
                model_name,
                api_key,
                is_uncensored,
                label,
                base_url if base_url is not None else DEFAULT_BASE_URL,
                created_at,
            )
            models[model_group_name] = model
            return model.full()

    # -- request handling ------------------------------------------------------------------

    def _check_op(self, op: str) -> Op:
        for known in OPS:
            if op == known:
                return known
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")

    def _owner(self, key: str | None) -> str:
        owner = self._keys[0] if key is None else key
        if owner not in self._store:
            raise KeyError("not one of this simulator's API keys")
        return owner

    def _listed(self, owner: str) -> list[_Model]:
        # Newest first, like S1's example; seq breaks ties within one millisecond.
        return sorted(
            self._store[owner].values(),
            key=lambda model: (model.created_at, model.seq),
            reverse=True,
        )

    def _new_model(
        self,
        model_group_name: str,
        model_name: str,
        api_key: str,
        is_uncensored: bool,
        display_name: str,
        base_url: str,
        created_at: str | None,
    ) -> _Model:
        self._seq += 1
        return _Model(
            model_group_name=model_group_name,
            model_name=model_name,
            display_name=display_name,
            base_url=base_url,
            api_key=api_key,
            is_uncensored=is_uncensored,
            category=CATEGORY,
            created_at=created_at if created_at is not None else now_created_at(),
            seq=self._seq,
        )

    def _generation_now(self) -> int:
        with self._lock:
            return self._generation

    def _serve(self, handler: _Handler, method: str) -> None:
        arrived = time.monotonic()
        raw_body = handler.read_body()
        with self._lock:
            release = self._release
            delay = self._delay
            # A connection accepted by a run that has since stopped belongs to a dead server.
            stale = not self._up or handler.generation != self._generation
        if stale or (delay > 0 and release.wait(delay)):
            handler.close_connection = True
            return

        path = handler.path.split("?", 1)[0]
        op = _PATHS.get(path)
        body = _parse_object(raw_body)
        if op is None:
            outcome = _error(404, MSG_NO_ROUTE)
        elif method != "POST":
            outcome = _error(405, MSG_BAD_METHOD)
            outcome.headers["Allow"] = "POST"
        else:
            outcome = self._dispatch(op, handler.headers.get("CONVAI-API-KEY"), raw_body, body)

        transaction_id = str(uuid.uuid4()) if not outcome.hang else None
        message = None
        if outcome.payload is not None:
            outcome.payload["transactionID"] = transaction_id
            message = outcome.payload.get("message")
        call = SimCall(
            op=op if op is not None else path,
            status=None if outcome.hang else outcome.status,
            body=body if body is not None else {},
            transaction_id=transaction_id,
            at=arrived,
            message=message if isinstance(message, str) else None,
        )
        # Recorded before answering, so a test that just got its response sees the call.
        with self._lock:
            self._calls.append(call)

        if outcome.hang:
            release.wait(HANG_SECONDS)
            handler.close_connection = True
            return
        if outcome.raw is not None:
            handler.send_bytes(
                outcome.status, outcome.raw.encode(), "text/html; charset=utf-8", outcome.headers
            )
        else:
            handler.send_json(outcome.status, outcome.payload, outcome.headers)

    def _dispatch(
        self,
        op: Op,
        key: str | None,
        raw_body: bytes,
        body: dict[str, Any] | None,
    ) -> _Outcome:
        if key is None or key not in self._store:
            return _error(401, MSG_UNAUTHORIZED)
        try:
            if op == "list":
                # "This endpoint requires no request body": whatever is sent is ignored.
                return self._list(key)
            if body is None:
                if raw_body.strip():
                    raise _Rejection(400, MSG_MALFORMED_JSON)
                body = {}
            if op == "register":
                return self._register(key, body)
            if op == "update":
                return self._update(key, body)
            return self._deregister(key, body)
        except _Rejection as rejection:
            return _error(rejection.status, rejection.message)

    def _injected(self, op: Op) -> _Outcome | None:
        """Consume the next injection for `op`, if any. Called with the lock held."""
        queue = self._injections[op]
        if not queue:
            return None
        injection = queue[0]
        injection.remaining -= 1
        if injection.remaining <= 0:
            queue.popleft()
        if injection.status == 0:
            return _Outcome(status=0, hang=True)
        if injection.raw is not None:
            return _Outcome(status=injection.status, raw=injection.raw)
        message = injection.message or _default_message(op, injection.status)
        return _error(injection.status, message)

    def _register(self, key: str, body: dict[str, Any]) -> _Outcome:
        _require(body, ("model_group_name", "model_name", "api_key", "is_uncensored"))
        group = _string(body, "model_group_name")
        model_name = _string(body, "model_name")
        api_key = _string(body, "api_key")
        is_uncensored = _boolean(body, "is_uncensored")
        display_name = _optional_string(body, "display_name")
        base_url = _optional_string(body, "base_url")
        label = display_name if display_name is not None else group
        with self._lock:
            models = self._store[key]
            if group in models:
                raise _Rejection(409, MSG_GROUP_EXISTS)
            if any(model.display_name == label for model in models.values()):
                raise _Rejection(409, MSG_DISPLAY_EXISTS)
            injected = self._injected("register")
            if injected is not None:
                return injected
            models[group] = self._new_model(
                group,
                model_name,
                api_key,
                is_uncensored,
                label,
                base_url if base_url is not None else DEFAULT_BASE_URL,
                None,
            )
        return _Outcome(
            200,
            {
                "status": "success",
                "model_group_name": group,
                "model_name": model_name,
                "display_name": label,
                "message": f"Model '{group}' registered successfully",
            },
        )

    def _update(self, key: str, body: dict[str, Any]) -> _Outcome:
        _require(body, ("model_group_name",))
        group = _string(body, "model_group_name")
        changes: dict[str, Any] = {}
        for name in body:  # request order, which is the order updated_fields reports
            if name not in _UPDATABLE or body[name] is None:
                continue
            if _UPDATABLE[name] is bool:
                changes[name] = _boolean(body, name)
            else:
                changes[name] = _string(body, name)
        if not changes:
            raise _Rejection(400, MSG_NO_FIELDS)
        with self._lock:
            models = self._store[key]
            model = models.get(group)
            if model is None:
                raise _Rejection(404, MSG_NOT_FOUND)
            label = changes.get("display_name")
            if label is not None and any(
                other.display_name == label for other in models.values() if other is not model
            ):
                raise _Rejection(409, MSG_DISPLAY_EXISTS)
            injected = self._injected("update")
            if injected is not None:
                return injected
            if self._drop_fields and self._drop_fields[0] in changes:
                del changes[self._drop_fields.popleft()]
            for name, value in changes.items():
                setattr(model, name, value)
            moves = [m for m in self._after_update if m[0] == group]
            if moves:
                self._after_update.remove(moves[0])
                model.base_url = moves[0][1]
        return _Outcome(
            200,
            {
                "status": "success",
                "message": f"Model '{group}' updated successfully",
                "updated_fields": list(changes),
            },
        )

    def _deregister(self, key: str, body: dict[str, Any]) -> _Outcome:
        _require(body, ("model_group_name",))
        group = _string(body, "model_group_name")
        with self._lock:
            models = self._store[key]
            if group not in models:
                raise _Rejection(404, MSG_NOT_FOUND)
            injected = self._injected("deregister")
            if injected is not None:
                return injected
            del models[group]
        return _Outcome(
            200,
            {"status": "success", "message": f"Model '{group}' deregistered successfully"},
        )

    def _list(self, key: str) -> _Outcome:
        with self._lock:
            injected = self._injected("list")
            if injected is not None:
                return injected
            models = [model.public() for model in self._listed(key)]
        return _Outcome(200, {"status": "success", "models": models, "count": len(models)})


def _error(status: int, message: str) -> _Outcome:
    return _Outcome(status, {"status": "error", "message": message})


def _parse_object(raw: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _require(body: dict[str, Any], names: Iterable[str]) -> None:
    # Missing before mistyped: "Missing required field" is the one message S1 gives for 400.
    for name in names:
        if body.get(name) is None or body.get(name) == "":
            raise _Rejection(400, MSG_MISSING_FIELD)


def _invalid(name: str) -> _Rejection:
    return _Rejection(400, f"Invalid value for field '{name}'")


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(name)
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _string(body, name)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    # JSON true/false only: "false" or 0 would be a silent surprise in a moderation flag.
    if not isinstance(value, bool):
        raise _invalid(name)
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; the first stdout line is its base URL."""
    parser = argparse.ArgumentParser(
        prog="python -m monitor.sim.convai",
        description="Serve a local Convai Custom LLM API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"accepted CONVAI-API-KEY, repeatable (default: {DEFAULT_API_KEY})",
    )
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sim = ConvaiSim(args.api_keys or (DEFAULT_API_KEY,), port=args.port)
        try:
            sim.start()
        except OSError as exc:
            print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
            return 1
        try:
            print(sim.base_url, flush=True)
            # Wake now and then: a signal handler only runs between bytecodes of the main
            # thread, and a bounded wait guarantees it gets the chance.
            while not stopping.wait(0.5):
                pass
        finally:
            sim.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
