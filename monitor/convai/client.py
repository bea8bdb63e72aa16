"""A typed async client for Convai's four `/llm-models/*` calls (see convai-api.md).

Every call is one *logical* call made of one or more HTTP attempts. Timeouts, connection
errors, 429 and 5xx are retried with exponential backoff and full jitter until `retry_budget`
seconds have passed; any other answer is final. Success is HTTP 200 with `"status":
"success"`; everything else raises `ConvaiError` (or `ConvaiUnreachable` when no HTTP answer
came back), carrying Convai's status, `message` and `transactionID`.

Secrets: the Convai key and the endpoint `api_key` sent to register/update never appear in
this module's exceptions, reprs or log events. Request bodies are never echoed, and a secret
that Convai's own `message` happens to repeat is masked.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
import structlog

Op = Literal["register", "update", "deregister", "list"]
Outcome = Literal["success", "error", "unreachable"]
OnCall = Callable[[str, str], None]
T = TypeVar("T")

_REDACTED = "***"
# Convai messages are one short sentence; anything longer is a proxy page or worse, and would
# turn a one-line error into a wall of text.
_MESSAGE_LIMIT = 200


@dataclass(frozen=True)
class RegisteredModel:
    """One model as `list` reports it (Convai never returns its api_key)."""

    model_group_name: str
    model_name: str
    display_name: str
    base_url: str
    is_uncensored: bool
    category: str | None
    created_at: str | None


@dataclass(frozen=True)
class ConvaiReply:
    """A successful register/update/deregister."""

    transaction_id: str | None
    message: str
    updated_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelList:
    models: tuple[RegisteredModel, ...]
    transaction_id: str | None

    def get(self, model_group_name: str) -> RegisteredModel | None:
        return next((m for m in self.models if m.model_group_name == model_group_name), None)


class ConvaiError(Exception):
    """A Convai call that did not succeed.

    `http_status` is the final HTTP status (None when no answer came back), `message` is
    Convai's message (or a description of what went wrong), `transaction_id` is Convai's
    `transactionID` when it sent one, `retryable` says whether the failure kind is one that
    is retried (so it failed only because the retry budget ran out), `attempts` counts the
    HTTP attempts made.
    """

    def __init__(
        self,
        op: str,
        http_status: int | None,
        message: str,
        transaction_id: str | None = None,
        *,
        retryable: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(op, http_status, message, transaction_id)
        self.op = op
        self.http_status = http_status
        self.message = message
        self.transaction_id = transaction_id
        self.retryable = retryable
        self.attempts = attempts

    def __str__(self) -> str:
        what = f"HTTP {self.http_status} " if self.http_status is not None else ""
        text = f"convai {self.op} failed: {what}{self.message}"
        if self.transaction_id:
            text += f" (transactionID {self.transaction_id})"
        if self.attempts > 1:
            text += f" after {self.attempts} attempts"
        return text


class ConvaiUnreachable(ConvaiError):
    """No HTTP answer from Convai (timeouts, refused or dropped connections) within budget."""

    def __init__(self, op: str, message: str, *, attempts: int = 1) -> None:
        super().__init__(op, None, message, None, retryable=True, attempts=attempts)
        # Matches this signature, so the exception pickles (args are replayed into __init__).
        self.args = (op, message)


class _Malformed(Exception):
    """A success answer whose shape cannot be trusted."""


def _log() -> Any:
    # Looked up per event rather than once at import: a logger cached at import time would
    # bypass structlog.testing.capture_logs and any configuration applied after import.
    return structlog.get_logger()


class ConvaiClient:
    """Client for one Convai account (one `CONVAI-API-KEY`).

    `timeout` bounds each HTTP attempt (connect, write, read, pool each). A logical call ends
    within about `retry_budget + timeout` seconds: a retry is only started while the budget
    lasts, and a backoff sleep that would end past the budget ends the call instead.
    `on_call(op, outcome)` is invoked once per finished logical call, outcome being
    "success", "error" or "unreachable"; an exception from it is logged and ignored.
    The client owns `transport` (closing the client closes it).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry_budget: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        if not api_key:
            raise ValueError("api_key must not be empty")
        if timeout <= 0 or retry_budget < 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("need timeout > 0, retry_budget >= 0, 0 < backoff_base <= backoff_max")
        self._base_url = base
        self._convai_key = api_key
        self._timeout = timeout
        self._retry_budget = retry_budget
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._on_call = on_call
        self._http = httpx.AsyncClient(
            headers={"CONVAI-API-KEY": api_key, "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout),
            # A redirect from Convai's API is unexpected; following it would resend the key
            # to wherever it points.
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return (
            f"ConvaiClient(base_url={self._base_url!r}, timeout={self._timeout}, "
            f"retry_budget={self._retry_budget})"
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the four calls --------------------------------------------------------------------

    async def list_models(self) -> ModelList:
        return await self._call("list", None, (), _parse_models)

    async def register(
        self,
        model_group_name: str,
        model_name: str,
        api_key: str,
        *,
        is_uncensored: bool = False,
        display_name: str | None = None,
        base_url: str | None = None,
    ) -> ConvaiReply:
        body: dict[str, Any] = {
            "model_group_name": model_group_name,
            "model_name": model_name,
            "api_key": api_key,
            "is_uncensored": is_uncensored,
        }
        # Omitted rather than null, so Convai applies its documented defaults.
        if display_name is not None:
            body["display_name"] = display_name
        if base_url is not None:
            body["base_url"] = base_url
        return await self._call("register", body, (api_key,), _reply)

    async def update(
        self,
        model_group_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        display_name: str | None = None,
        is_uncensored: bool | None = None,
    ) -> ConvaiReply:
        """Change some of a model's fields; `model_name` cannot be changed (S1), so never sent.

        Fields are sent in the order base_url, api_key, display_name, is_uncensored, which is
        the order of `updated_fields` in the reply.
        """
        changes = {
            "base_url": base_url,
            "api_key": api_key,
            "display_name": display_name,
            "is_uncensored": is_uncensored,
        }
        body: dict[str, Any] = {"model_group_name": model_group_name}
        body.update({name: value for name, value in changes.items() if value is not None})
        if len(body) == 1:
            # Convai would answer 400 "No valid fields to update"; this is a caller's bug.
            raise ValueError("update needs at least one field to change")
        secrets = (api_key,) if api_key is not None else ()
        return await self._call("update", body, secrets, _reply)

    async def deregister(self, model_group_name: str) -> ConvaiReply:
        body = {"model_group_name": model_group_name}
        return await self._call("deregister", body, (), _reply)

    # -- machinery -------------------------------------------------------------------------

    async def _call(
        self,
        op: Op,
        body: dict[str, Any] | None,
        secrets: Iterable[str],
        parse: Callable[[dict[str, Any]], T],
    ) -> T:
        """Run one logical call: parse the success object, or raise ConvaiError."""
        masked = (self._convai_key, *secrets)
        deadline = time.monotonic() + self._retry_budget
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt(op, body, masked, attempt)
            if isinstance(result, dict):
                try:
                    value = parse(result)
                except _Malformed as exc:
                    # Convai said "success" but not in a shape we can trust: not retried,
                    # since asking again would most likely get the same answer.
                    result = ConvaiError(
                        op, 200, f"malformed response: {exc}", _transaction_id(result)
                    )
                else:
                    _log().debug(
                        "convai_call_succeeded",
                        op=op,
                        attempts=attempt,
                        transaction_id=_transaction_id(result),
                    )
                    self._finished(op, "success")
                    return value
            # Full jitter: concurrent callers spread out instead of retrying in lockstep.
            # The exponent is capped so a long run of instant failures cannot overflow a float.
            ceiling = self._backoff_base * 2 ** min(attempt - 1, 32)
            delay = random.uniform(0, min(self._backoff_max, ceiling))
            if not result.retryable or time.monotonic() + delay > deadline:
                _log().warning(
                    "convai_call_failed",
                    op=op,
                    attempts=attempt,
                    http_status=result.http_status,
                    transaction_id=result.transaction_id,
                    error=result.message,
                )
                self._finished(op, "unreachable" if result.http_status is None else "error")
                raise result
            _log().info(
                "convai_call_retry",
                op=op,
                attempt=attempt,
                http_status=result.http_status,
                error=result.message,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, op: Op, body: dict[str, Any] | None, masked: tuple[str, ...], attempt: int
    ) -> dict[str, Any] | ConvaiError:
        """One HTTP attempt: the success object, or the error it would raise."""
        url = f"{self._base_url}/llm-models/{op}"
        try:
            response = await self._http.post(url, json=body)
        except httpx.TransportError as exc:
            detail = _mask(str(exc), masked) or "no detail"
            return ConvaiUnreachable(op, f"{type(exc).__name__}: {detail}", attempts=attempt)
        status = response.status_code
        # Convai answers rate limits with 429 and its own faults with 5xx; both may pass.
        retryable = status == 429 or status >= 500
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            reason = _reason(status)
            return ConvaiError(
                op,
                status,
                f"{reason}{': ' if reason else ''}non-JSON response",
                retryable=retryable,
                attempts=attempt,
            )
        if status == 200 and data.get("status") == "success":
            return data
        message = data.get("message")
        text = _mask(message, masked) if isinstance(message, str) else ""
        if not text:
            text = _reason(status) or "error without a message"
        return ConvaiError(
            op, status, text, _transaction_id(data), retryable=retryable, attempts=attempt
        )

    def _finished(self, op: str, outcome: Outcome) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(op, outcome)
        except Exception as exc:
            # Metrics must never turn a successful failover into a failed one.
            _log().warning("convai_on_call_hook_failed", op=op, error=type(exc).__name__)


def _reply(data: dict[str, Any]) -> ConvaiReply:
    message = data.get("message")
    fields = data.get("updated_fields")
    return ConvaiReply(
        transaction_id=_transaction_id(data),
        message=message if isinstance(message, str) else "",
        updated_fields=tuple(f for f in fields if isinstance(f, str))
        if isinstance(fields, list)
        else (),
    )


def _parse_models(data: dict[str, Any]) -> ModelList:
    raw_models = data.get("models")
    if not isinstance(raw_models, list):
        raise _Malformed("'models' is not a list")
    return ModelList(tuple(_parse_model(item) for item in raw_models), _transaction_id(data))


def _parse_model(item: object) -> RegisteredModel:
    if not isinstance(item, dict):
        raise _Malformed("a model is not an object")
    group = item.get("model_group_name")
    model_name = item.get("model_name")
    base_url = item.get("base_url")
    # base_url is how the monitor learns which endpoint is active: never guess it. The
    # other fields only label a model, so a missing one gets a neutral default.
    if not (isinstance(group, str) and isinstance(model_name, str) and isinstance(base_url, str)):
        raise _Malformed("a model lacks model_group_name, model_name or base_url")
    display_name = item.get("display_name")
    is_uncensored = item.get("is_uncensored")
    category = item.get("category")
    created_at = item.get("created_at")
    return RegisteredModel(
        model_group_name=group,
        model_name=model_name,
        display_name=display_name if isinstance(display_name, str) else group,
        base_url=base_url,
        is_uncensored=is_uncensored if isinstance(is_uncensored, bool) else False,
        category=category if isinstance(category, str) else None,
        created_at=created_at if isinstance(created_at, str) else None,
    )


def _transaction_id(data: dict[str, Any]) -> str | None:
    value = data.get("transactionID")
    return value if isinstance(value, str) and value else None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _mask(text: str, secrets: Iterable[str]) -> str:
    """One line, bounded, with every known secret replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    text = " ".join(text.split())
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 3] + "..."
    return text
