"""One small chat completion against an OpenAI-compatible base URL."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from monitor import __version__
from monitor.config import Target
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.probes.classify import (
    DETAIL_MAX,
    Classified,
    Reply,
    StreamReader,
    classify,
    sse_events,
)
from monitor.redact import redact

# Adapting a rejected probe: at most this many changed requests within one probe.
MAX_ADAPTATIONS = 3
# A reasoning model spends its budget thinking before it answers; this is the budget a
# probe grows to when an endpoint says the one it sent is too small.
REASONING_BUDGET = 1024
_TOO_SMALL = re.compile(
    r"too small|too low|at least|larger|greater than|minimum|reasoning|output limit|"
    r"could not finish|max_tokens or model output limit"
)


@dataclass(frozen=True, slots=True)
class ProbeShape:
    """How one endpoint wants its probe asked: learnt from its 400s, kept per endpoint."""

    budget_field: str = "max_tokens"  # or "max_completion_tokens" (OpenAI reasoning models)
    temperature: bool = True  # send temperature 0; some models accept only their default
    max_tokens: int | None = None  # None: the policy's max_tokens

    @property
    def adapted(self) -> bool:
        return self != ProbeShape()

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_field": self.budget_field,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeShape:
        field = data.get("budget_field")
        tokens = data.get("max_tokens")
        known = ("max_tokens", "max_completion_tokens")
        return cls(
            budget_field=field if field in known else "max_tokens",
            temperature=data.get("temperature") is not False,
            max_tokens=tokens if isinstance(tokens, int) and tokens > 0 else None,
        )


def adapt(
    shape: ProbeShape, rejected: tuple[str, ...], text: str, budget: int
) -> ProbeShape | None:
    """The next request shape to try after a 400 naming `rejected`, or None: nothing left.

    What the message names is tried first; then, because some servers name nothing
    useful, the untried changes in order: max_completion_tokens, no temperature, a
    reasoning-sized budget.
    """
    lowered = text.lower()
    tokens = {"max_tokens", "max_completion_tokens", "max_new_tokens"} & set(rejected)
    current = shape.max_tokens or budget
    bigger = replace(shape, max_tokens=REASONING_BUDGET) if current < REASONING_BUDGET else None
    swap = (
        replace(shape, budget_field="max_completion_tokens")
        if shape.budget_field == "max_tokens"
        else None
    )
    cool = replace(shape, temperature=False) if shape.temperature else None
    named: list[ProbeShape | None] = []
    if "max_tokens" in rejected and (
        "max_completion_tokens" in lowered or "not supported" in lowered or "unsupported" in lowered
    ):
        named.append(swap)
    if "temperature" in rejected:
        named.append(cool)
    if tokens and _TOO_SMALL.search(lowered):
        named.append(bigger)
    for choice in (*named, swap, cool, bigger):
        if choice is not None and choice != shape:
            return choice
    return None


@dataclass(frozen=True, slots=True)
class _Reply:
    reply: Reply
    elapsed_ms: float  # from sending the request to the deciding byte read
    streamed: Classified | None = None  # the verdict the stream reader reached


class _BodyTooLarge(Exception):
    pass


def request_body(target: Target, shape: ProbeShape) -> bytes:
    """The JSON body a probe of `target` sends in `shape` (encoded once, then cached)."""
    return _encoded(
        target.model,
        target.policy.prompt,
        shape.budget_field,
        shape.max_tokens or target.policy.max_tokens,
        target.policy.stream,
        shape.temperature,
    )


# Every probe of an endpoint sends the same body: it is encoded once, not on every probe
# (bounded, since a config reload or an adapted shape makes a new one).
@functools.lru_cache(maxsize=16_384)
def _encoded(
    model: str, prompt: str, budget_field: str, budget: int, stream: bool, temperature: bool
) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        budget_field: budget,
        "stream": stream,
    }
    if temperature:
        payload["temperature"] = 0
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=16_384)
def _url(base_url: str) -> URL:
    return URL(f"{base_url}/chat/completions")


@functools.lru_cache(maxsize=16_384)
def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def _usage(data: dict[str, Any] | None) -> tuple[int | None, int | None]:
    usage = data.get("usage") if data else None
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def user_agent(instance: str | None) -> str:
    base = f"convai-monitor/{__version__}"
    return f"{base} (instance {instance})" if instance else base


class _Sent:
    """When a probe's exchange began on the network (perf_counter), set by aiohttp's trace
    hooks: the start of a new connection (so connecting counts, as it does for a caller),
    else the write of the request body on a pooled one.

    The clock starts there rather than before `post`: aiohttp builds the request first
    and, on Python before 3.12, writes the body from a task of its own, which runs only
    after every other probe started in the same scheduler wake-up has built its request
    too. Timed from before `post`, a slot of probes read as up to a millisecond slower than
    their endpoints answered (benchmarks/probe_load.py, error against the hold)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


async def _on_network(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    sent = context.trace_request_ctx
    if isinstance(sent, _Sent) and sent.at is None:
        sent.at = time.perf_counter()


class _Received(ResponseHandler):
    """aiohttp's connection protocol, noting when bytes last arrived (perf_counter).

    The probe's clock stops there, when the event loop read the answer, not when the
    probe's task next ran: the probes of one slot are answered a fifth of a millisecond
    apart (the time each took to send), and handling an answer takes longer than that, so
    each answer waited behind the handling of those before it and the last of five read
    0.8 ms slow at p50 (benchmarks/probe_load.py, error against the hold, by place in the
    slot). A connection carries one exchange at a time, so its last bytes are the answer's.
    """

    received_at: float | None = None

    def data_received(self, data: bytes) -> None:
        if data:  # an empty call resumes decompression: nothing arrived
            self.received_at = time.perf_counter()
        super().data_received(data)


def _connector(max_in_flight: int) -> aiohttp.TCPConnector:
    connector = aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=0, keepalive_timeout=30.0)
    # aiohttp has no public way to choose the protocol; if a release drops this
    # attribute, probes fall back to the task's clock (and test_probe.py says so).
    received = functools.partial(_Received, loop=connector._loop)
    connector._factory = cast("functools.partial[ResponseHandler]", received)
    return connector


def _answered(response: aiohttp.ClientResponse, started: float) -> float:
    """When the answer's last bytes reached the process (see _Received), or now."""
    now = time.perf_counter()
    protocol = getattr(response, "_protocol", None)
    received = protocol.received_at if isinstance(protocol, _Received) else None
    return received if received is not None and started <= received <= now else now


def _tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_start.append(_on_network)
    tracing.on_request_chunk_sent.append(_on_network)
    return tracing


class ChatProber:
    """Sends probes through one shared, bounded aiohttp session.

    aiohttp, not httpx, on the probe path: the probe is most of the daemon's CPU, and
    httpx's pool walks every connection on each request (a third of the probe loop's CPU
    with 500 endpoints, measured with py-spy; benchmarks/probe_load.py). The Convai client
    stays on httpx.
    """

    def __init__(
        self, max_in_flight: int = 100, max_body_bytes: int = 1 << 20, instance: str | None = None
    ) -> None:
        self._max_body = max_body_bytes
        self._max_in_flight = max_in_flight
        self._user_agent = user_agent(instance)
        # The connection limit equals the semaphore, so a probe never waits inside the
        # connector (a wait there would be counted as endpoint latency).
        self._slots = asyncio.Semaphore(max_in_flight)
        # The request shape that worked, per endpoint, once one had to be adapted.
        self.shapes: dict[tuple[str, str], ProbeShape] = {}
        self._rejected: dict[tuple[str, str], tuple[str, ...]] = {}
        # Made on first use: an aiohttp session belongs to the event loop it was made on.
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=_connector(self._max_in_flight),
                # An endpoint's own access log shows who probed it, and from which instance.
                headers={"User-Agent": self._user_agent},
                # One deadline for the whole exchange is set around it (see _probe);
                # aiohttp's own per-phase timeouts are off.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
                # A probe is one anonymous request: a cookie set by one answer must not
                # steer the next probe (to a sticky backend, say).
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                raise_for_status=False,
                trace_configs=[_tracing()],
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @property
    def saturated(self) -> bool:
        """Every probe slot is taken: the next probe waits for one."""
        return self._slots.locked()

    def shape(self, target: Target) -> ProbeShape:
        return self.shapes.get((target.group, target.endpoint), ProbeShape())

    async def probe(self, target: Target) -> ProbeResult:
        async with self._slots:
            return await self._adapting(target)

    async def probe_within(
        self, target: Target, deadline: float
    ) -> tuple[ProbeResult, asyncio.Task[ProbeResult] | None]:
        """Probe, but answer after `deadline` seconds at the latest.

        Returns the probe's result, or, when it is still unanswered at the deadline, a
        `timeout` result made then together with the request still in flight (it keeps
        waiting until the policy's `timeout`, holding its slot, and may yet answer).
        """
        if deadline >= target.policy.timeout:
            return await self.probe(target), None
        await self._slots.acquire()
        sent = time.time()
        task = asyncio.create_task(self._adapting(target), name=f"probe:{target.endpoint}")
        task.add_done_callback(lambda _task: self._slots.release())
        try:
            done, _pending = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return task.result(), None
        late = ProbeResult(
            at=sent,
            group=target.group,
            endpoint=target.endpoint,
            outcome=Outcome.TIMEOUT,
            latency_ms=None,
            detail=(
                f"no answer within the learned deadline {deadline:.1f}s"
                f" (still waiting up to {target.policy.timeout:g}s)"
            ),
        )
        return late, task

    async def _adapting(self, target: Target) -> ProbeResult:
        result = await self._probe(target, self.shape(target))
        # A 400 about the probe's own parameters: change the request and ask again at
        # once (a reasoning model wants max_completion_tokens, its default temperature
        # and room to think), and remember what worked for this endpoint.
        shape = self.shape(target)
        for _ in range(MAX_ADAPTATIONS):
            if result.outcome is not Outcome.PROBE_REJECTED:
                break
            rejected = self._rejected.pop((target.group, target.endpoint), ())
            shape_next = adapt(shape, rejected, result.detail or "", target.policy.max_tokens)
            if shape_next is None:
                break
            shape = shape_next
            result = await self._probe(target, shape)
            if result.outcome is not Outcome.PROBE_REJECTED:
                self.shapes[(target.group, target.endpoint)] = shape
        self._rejected.pop((target.group, target.endpoint), None)
        return result

    async def _probe(self, target: Target, shape: ProbeShape) -> ProbeResult:
        policy = target.policy
        at = time.time()
        reply: _Reply | None = None
        judged: Classified
        try:
            # One deadline for connect + send + the whole body: per-phase timeouts would
            # never fire for an endpoint that trickles bytes.
            async with asyncio.timeout(policy.timeout):
                reply = await self._send(target, shape)
            latency_ms: float | None = reply.elapsed_ms
            judged = reply.streamed or classify(reply.reply)
        except TimeoutError:
            latency_ms = None
            judged = Classified(Outcome.TIMEOUT, f"no complete answer within {policy.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            latency_ms = None
            judged = Classified(Outcome.CONNECT_ERROR, _exc_text(exc))
        except (aiohttp.ClientError, OSError) as exc:
            # The connection dropped mid-answer, a protocol error, ...: the endpoint did
            # not serve a completion, which is what a character would see too.
            latency_ms = None
            judged = Classified(Outcome.CONNECT_ERROR, _exc_text(exc))
        if judged.rejected:
            self._rejected[(target.group, target.endpoint)] = judged.rejected
        prompt_tokens, completion_tokens = _usage(judged.data)
        detail = judged.detail
        return ProbeResult(
            at=at,
            group=target.group,
            endpoint=target.endpoint,
            outcome=judged.outcome,
            latency_ms=latency_ms,
            http_status=reply.reply.status if reply else None,
            detail=redact(detail) if detail else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    async def _send(self, target: Target, shape: ProbeShape) -> _Reply:
        client = self._client()
        url, body, headers = (
            _url(target.base_url),
            request_body(target, shape),
            _headers(target.api_key),
        )
        # The clock runs around the exchange only: not the semaphore wait, not building
        # the request (it starts when the exchange reaches the network, see _Sent), not
        # the wait to handle the answer nor parsing it (it stops when the event loop read
        # the answer's last bytes, see _Received).
        sent = _Sent()
        posted = time.perf_counter()
        response = await client.post(
            url, data=body, headers=headers, allow_redirects=False, trace_request_ctx=sent
        )
        # An endpoint may answer before the body is written (a 401 that closes at once).
        started = posted if sent.at is None else sent.at
        streamed: Classified | None = None
        read_all = False
        try:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            content_type = response.headers.get("Content-Type", "")
            reading_stream = (
                target.policy.stream and response.status == 200 and "event-stream" in content_type
            )
            pending = b""
            reader = StreamReader()
            first_token_ms: float | None = None
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > self._max_body:
                    # Stop reading: a 20 MB body, an endless stream or a decompression
                    # bomb must not grow memory (the count is of decoded bytes).
                    truncated = True
                    break
                chunks.append(chunk)
                if reading_stream:
                    # Judge each complete event as it arrives: the first one with content
                    # or a role is the time to first token; empty-choices chunks (Azure's
                    # prompt_filter_results) are read past.
                    pending += chunk
                    cut = pending.replace(b"\r\n", b"\n").rfind(b"\n\n")
                    if cut >= 0:
                        complete = pending.replace(b"\r\n", b"\n")
                        events, pending = complete[: cut + 2], complete[cut + 2 :]
                        for event in sse_events(events):
                            streamed = reader.feed(event)
                            if first_token_ms is None and reader.started:
                                first_token_ms = (time.perf_counter() - started) * 1000.0
                            if streamed is not None:
                                break
                    if streamed is not None:
                        break
            else:
                read_all = True
            elapsed_ms = (_answered(response, started) - started) * 1000.0
        finally:
            if read_all:
                response.release()  # the connection goes back to the pool
            else:
                response.close()  # a body left unread: the connection cannot be reused
        if reading_stream and not truncated:
            # The body ended: a last event without its blank line still counts.
            for event in sse_events(pending) if streamed is None else ():
                if reader.feed(event) is not None:
                    break
            streamed = reader.verdict()
            if streamed.outcome is Outcome.OK and first_token_ms is not None:
                elapsed_ms = first_token_ms  # a streamed probe's latency is time to first token
        reply = Reply(
            status=response.status,
            body=b"".join(chunks),
            content_type=content_type,
            location=response.headers.get("Location"),
            truncated=truncated,
        )
        return _Reply(reply, elapsed_ms, streamed)


def _exc_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:DETAIL_MAX]
