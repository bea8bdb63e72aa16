"""One small chat completion against an OpenAI-compatible base URL."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from monitor.config import Target
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.redact import redact

_DETAIL_MAX = 300
# Markers of a 400/404 that blames the key or the model rather than the request.
_KEY_WORDS = ("api key", "api_key", "apikey", "invalid_api_key", "authentication", "unauthorized")
_MODEL_WORDS = ("model",)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str
    location: str | None
    truncated: bool
    elapsed_ms: float  # from sending the request to the last byte read


class _BodyTooLarge(Exception):
    pass


def _payload(target: Target) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": target.policy.prompt}],
        "max_tokens": target.policy.max_tokens,
        "temperature": 0,
        "stream": target.policy.stream,
    }


def _error_text(body: bytes) -> str:
    """The error message an OpenAI-style body carries, else the start of the body."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:_DETAIL_MAX]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            parts = [str(error.get(k)) for k in ("message", "code", "param") if error.get(k)]
            if parts:
                return " | ".join(parts)[:_DETAIL_MAX]
        elif isinstance(error, str):
            return error[:_DETAIL_MAX]
    return " ".join(text.split())[:_DETAIL_MAX]


def classify(reply: _Reply) -> tuple[Outcome, str | None, dict[str, Any] | None]:
    """Map an HTTP reply to an outcome kind, a short detail, and the parsed completion."""
    status = reply.status
    if 300 <= status < 400:
        # Convai would not follow a redirect to a place nobody registered either.
        return Outcome.REDIRECT, f"HTTP {status} to {reply.location or '?'} (not followed)", None
    if status == 429:
        return Outcome.RATE_LIMITED, _error_text(reply.body), None
    if status >= 500:
        return Outcome.HTTP_5XX, f"HTTP {status}: {_error_text(reply.body)}", None
    if status in (401, 403):
        return Outcome.AUTH_ERROR, f"HTTP {status}: {_error_text(reply.body)}", None
    if status == 400:
        text = _error_text(reply.body)
        lowered = text.lower()
        if any(word in lowered for word in _KEY_WORDS):
            return Outcome.AUTH_ERROR, f"HTTP 400: {text}", None
        return Outcome.PROBE_REJECTED, f"HTTP 400: {text}", None
    if status == 404:
        text = _error_text(reply.body)
        if any(word in text.lower() for word in _MODEL_WORDS):
            return Outcome.MODEL_NOT_FOUND, text, None
        return Outcome.HTTP_4XX, f"HTTP 404 (check base_url): {text}", None
    if status != 200:
        return Outcome.HTTP_4XX, f"HTTP {status}: {_error_text(reply.body)}", None
    if reply.truncated:
        return Outcome.BAD_RESPONSE, "response body over the size cap", None
    if "html" in reply.content_type.lower():
        return Outcome.BAD_RESPONSE, "HTML instead of JSON (a proxy or login page?)", None
    if "event-stream" in reply.content_type.lower():
        return _classify_stream(reply.body)
    try:
        data = json.loads(reply.body)
    except ValueError:
        return Outcome.BAD_RESPONSE, "not JSON", None
    if not isinstance(data, dict):
        return Outcome.BAD_RESPONSE, "JSON is not an object", None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return Outcome.BAD_RESPONSE, "no choices in the completion", None
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return Outcome.BAD_RESPONSE, "choice without a message", None
    return Outcome.OK, None, data


def _classify_stream(body: bytes) -> tuple[Outcome, str | None, dict[str, Any] | None]:
    """A streamed completion passes on its first `data:` chunk that carries a choice."""
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            return Outcome.BAD_RESPONSE, "a stream chunk that is not JSON", None
        if isinstance(chunk, dict) and isinstance(chunk.get("choices"), list) and chunk["choices"]:
            return Outcome.OK, None, chunk
    return Outcome.BAD_RESPONSE, "the stream carried no choice", None


def _usage(data: dict[str, Any] | None) -> tuple[int | None, int | None]:
    usage = data.get("usage") if data else None
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


class ChatProber:
    """Sends probes through one shared, bounded httpx client."""

    def __init__(self, max_in_flight: int = 100, max_body_bytes: int = 1 << 20) -> None:
        self._max_body = max_body_bytes
        # The pool is sized to the semaphore, so a probe never waits inside httpx's pool
        # (a pool wait would be counted as endpoint latency and end in PoolTimeout).
        self._slots = asyncio.Semaphore(max_in_flight)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=max_in_flight,
                max_keepalive_connections=max_in_flight,
                keepalive_expiry=30.0,
            ),
            headers={"User-Agent": "convai-monitor"},
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def probe(self, target: Target) -> ProbeResult:
        async with self._slots:
            return await self._probe(target)

    async def _probe(self, target: Target) -> ProbeResult:
        policy = target.policy
        at = time.time()
        reply: _Reply | None = None
        outcome: Outcome
        detail: str | None
        data: dict[str, Any] | None = None
        try:
            # One deadline for connect + send + the whole body: httpx's own timeouts are
            # per phase, and an endpoint that trickles bytes would never hit them.
            async with asyncio.timeout(policy.timeout):
                reply = await self._send(target)
            latency_ms: float | None = reply.elapsed_ms
            outcome, detail, data = classify(reply)
        except TimeoutError:
            latency_ms = None
            outcome, detail = Outcome.TIMEOUT, f"no complete answer within {policy.timeout:g}s"
        except httpx.ConnectError as exc:
            latency_ms = None
            outcome, detail = Outcome.CONNECT_ERROR, _exc_text(exc)
        except (httpx.TimeoutException, httpx.PoolTimeout) as exc:
            latency_ms = None
            outcome, detail = Outcome.TIMEOUT, _exc_text(exc)
        except httpx.HTTPError as exc:
            # The connection dropped mid-answer, a protocol error, ...: the endpoint did
            # not serve a completion, which is what a character would see too.
            latency_ms = None
            outcome, detail = Outcome.CONNECT_ERROR, _exc_text(exc)
        if (
            outcome is Outcome.OK
            and policy.latency_threshold is not None
            and latency_ms is not None
            and latency_ms > policy.latency_threshold * 1000.0
        ):
            outcome = Outcome.TOO_SLOW
            detail = (
                f"{latency_ms:.0f}ms over the {policy.latency_threshold * 1000:.0f}ms threshold"
            )
        prompt_tokens, completion_tokens = _usage(data)
        return ProbeResult(
            at=at,
            group=target.group,
            endpoint=target.endpoint,
            outcome=outcome,
            latency_ms=latency_ms,
            http_status=reply.status if reply else None,
            detail=redact(detail) if detail else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    async def _send(self, target: Target) -> _Reply:
        request = self._client.build_request(
            "POST",
            f"{target.base_url}/chat/completions",
            json=_payload(target),
            headers={"Authorization": f"Bearer {target.api_key}"},
            timeout=httpx.Timeout(target.policy.timeout),
        )
        # The clock runs around the exchange only: not the semaphore wait, not building
        # the request, not parsing the answer.
        started = time.perf_counter()
        response = await self._client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            streamed = target.policy.stream and "event-stream" in response.headers.get(
                "content-type", ""
            )
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_body:
                    # Stop reading: a 20 MB body, an endless stream or a decompression
                    # bomb must not grow memory (the count is of decoded bytes).
                    truncated = True
                    break
                chunks.append(chunk)
                if streamed and b'"choices"' in chunk and b"\n\n" in b"".join(chunks):
                    break  # the first complete event with a choice is all a probe needs
            elapsed_ms = (time.perf_counter() - started) * 1000.0
        finally:
            await response.aclose()
        return _Reply(
            status=response.status_code,
            body=b"".join(chunks),
            content_type=response.headers.get("content-type", ""),
            location=response.headers.get("location"),
            truncated=truncated,
            elapsed_ms=elapsed_ms,
        )


def _exc_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:_DETAIL_MAX]
