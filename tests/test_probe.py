"""The chat probe against a real local OpenAI-compatible server: every outcome kind."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable

import pytest

from monitor.config import Policy, Target
from monitor.domain.outcome import Outcome
from monitor.probes import ChatProber
from monitor.redact import redactor
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.conftest import canary_key

KEY = canary_key(1)  # a UUID: no generic pattern masks it, only the registry
Factory = Callable[..., EndpointSim]


def target(sim: EndpointSim | str, **policy: object) -> Target:
    settings = {"interval": 5.0, "fast_interval": 0.5, "timeout": 1.0, **policy}
    return Target(
        group="g",
        endpoint="e",
        base_url=sim if isinstance(sim, str) else sim.base_url,
        api_key=KEY,
        model="sim-model",
        policy=Policy.model_validate(settings),
        priority=0,
    )


@pytest.fixture
async def prober() -> AsyncIterator[ChatProber]:
    p = ChatProber(max_in_flight=8, max_body_bytes=1 << 20)
    yield p
    await p.aclose()


async def test_ok_probe_sends_a_small_completion(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(api_key=KEY)
    result = await prober.probe(target(sim, max_tokens=24))
    assert result.outcome is Outcome.OK
    assert result.ok
    assert result.http_status == 200
    assert result.latency_ms is not None
    assert 0 < result.latency_ms < 1000
    assert result.prompt_tokens is not None
    assert result.completion_tokens is not None
    request = sim.last_request
    assert request is not None
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["json"]
    assert body["model"] == "sim-model"
    assert body["max_tokens"] == 24
    assert body["stream"] is False
    assert body["messages"][0]["role"] == "user"


async def test_latency_starts_when_the_request_is_written(
    endpoints: Factory, prober: ChatProber
) -> None:
    """Loop work between a probe's start and its request reaching the socket (the other
    probes of a scheduler wake-up building theirs) is not the endpoint's latency. On
    Python 3.11 aiohttp writes the body from a task of its own, so the stall queued here
    runs before the write; timed from before `post`, this probe read 250 ms."""
    sim = endpoints(api_key=KEY, delay=0.1)
    steady = target(sim)
    await prober.probe(steady)  # a pooled connection, as every probe after the first has
    probing = asyncio.create_task(prober.probe(steady))
    asyncio.get_running_loop().call_soon(time.sleep, 0.15)  # after the probe's first step
    result = await probing
    assert result.outcome is Outcome.OK, result.detail
    assert result.latency_ms is not None
    assert 100 <= result.latency_ms < 200


async def test_latency_ends_when_the_answer_arrives(endpoints: Factory, prober: ChatProber) -> None:
    """Loop work between an answer's arrival and the probe's task running again (the
    handling of the answers that came in just before it) is not the endpoint's latency
    either: the clock stops when the loop read the answer. Timed from the task, this
    probe read 300 ms."""
    sim = endpoints(api_key=KEY, delay=0.1)
    steady = target(sim)
    await prober.probe(steady)
    loop = asyncio.get_running_loop()
    probing = asyncio.create_task(prober.probe(steady))
    await asyncio.sleep(0.05)
    loop.call_soon(time.sleep, 0.1)  # the answer arrives (at 100 ms) while the loop is held
    # Due while the loop is held: asyncio runs it after reading the answer that arrived
    # meanwhile and before the probe's task goes on.
    loop.call_later(0.01, time.sleep, 0.15)
    result = await probing
    assert result.outcome is Outcome.OK, result.detail
    assert result.latency_ms is not None
    assert 140 <= result.latency_ms < 250


@pytest.mark.parametrize(
    ("behaviour", "outcome", "status"),
    [
        (Behaviour.HTTP_500, Outcome.HTTP_5XX, 500),
        (Behaviour.HTTP_503, Outcome.OVERLOADED, 503),
        (Behaviour.RATE_LIMITED, Outcome.RATE_LIMITED, 429),
        (Behaviour.UNAUTHORIZED, Outcome.AUTH_ERROR, 401),
        (Behaviour.FORBIDDEN, Outcome.AUTH_ERROR, 403),
        (Behaviour.BAD_KEY_400, Outcome.AUTH_ERROR, 400),
        (Behaviour.PROBE_REJECTED, Outcome.PROBE_REJECTED, 400),
        (Behaviour.MODEL_NOT_FOUND, Outcome.MODEL_NOT_FOUND, 404),
        (Behaviour.GARBAGE, Outcome.BAD_RESPONSE, 200),
        (Behaviour.HTML, Outcome.BAD_RESPONSE, 200),
        (Behaviour.NO_CHOICES, Outcome.BAD_RESPONSE, 200),
        (Behaviour.HUGE, Outcome.BAD_RESPONSE, 200),
        (Behaviour.REDIRECT, Outcome.REDIRECT, 302),
    ],
)
async def test_outcome_kinds(
    endpoints: Factory,
    prober: ChatProber,
    behaviour: Behaviour,
    outcome: Outcome,
    status: int,
) -> None:
    sim = endpoints(api_key=KEY, behaviour=behaviour)
    result = await prober.probe(target(sim))
    assert result.outcome is outcome, result.detail
    assert result.http_status == status
    assert not result.ok
    assert result.detail


async def test_wrong_model_is_model_not_found(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(model="another-model")
    result = await prober.probe(target(sim))
    assert result.outcome is Outcome.MODEL_NOT_FOUND


async def test_refused_connection(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(behaviour=Behaviour.REFUSE)
    result = await prober.probe(target(sim))
    assert result.outcome is Outcome.CONNECT_ERROR
    assert result.latency_ms is None
    assert result.http_status is None


async def test_hang_times_out_on_the_deadline(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(behaviour=Behaviour.HANG)
    started = time.perf_counter()
    result = await prober.probe(target(sim, timeout=0.3))
    elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.TIMEOUT
    assert 0.25 < elapsed < 1.0


async def test_endless_stream_is_capped_not_buffered(
    endpoints: Factory, prober: ChatProber
) -> None:
    sim = endpoints(behaviour=Behaviour.ENDLESS)
    result = await prober.probe(target(sim, timeout=2.0))
    # It either hits the byte cap (bad response) quickly, or the deadline; never hangs.
    assert result.outcome in (Outcome.BAD_RESPONSE, Outcome.TIMEOUT)
    assert result.outcome is Outcome.BAD_RESPONSE, "1 MiB should arrive well within 2s"


async def test_one_slow_answer_is_not_a_failure(endpoints: Factory, prober: ChatProber) -> None:
    # latency_threshold is judged on the window's p95 by the health machine, never on a
    # single probe: one slow answer among fast ones is what a character barely notices.
    sim = endpoints(delay=0.15)
    slow = await prober.probe(target(sim, latency_threshold=0.05))
    assert slow.outcome is Outcome.OK
    assert slow.latency_ms is not None
    assert slow.latency_ms >= 150


async def test_reasoning_model_probe_adapts_at_once_and_remembers(
    endpoints: Factory, prober: ChatProber
) -> None:
    sim = endpoints(api_key=KEY, behaviour=Behaviour.REASONING)
    result = await prober.probe(target(sim))
    assert result.outcome is Outcome.OK, result.detail
    body = sim.last_request["json"] if sim.last_request else {}
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] >= 16
    assert "temperature" not in body
    shape = prober.shapes[("g", "e")]
    assert shape.budget_field == "max_completion_tokens"
    assert shape.temperature is False
    # Remembered: the next probe is one request, sent in the shape that worked.
    before = sim.requests
    again = await prober.probe(target(sim))
    assert again.outcome is Outcome.OK
    assert sim.requests == before + 1


async def test_a_probe_rejected_whatever_it_tries_stays_inconclusive(
    endpoints: Factory, prober: ChatProber
) -> None:
    sim = endpoints(api_key=KEY, behaviour=Behaviour.PROBE_REJECTED)
    result = await prober.probe(target(sim))
    assert result.outcome is Outcome.PROBE_REJECTED
    assert result.detail is not None
    assert "max_tokens" in result.detail
    # It tried the bigger budget the message asks for (and the other shapes) first.
    assert sim.requests == 4
    assert ("g", "e") not in prober.shapes


async def test_healthy_azure_stream_passes_and_times_the_first_token(
    endpoints: Factory, prober: ChatProber
) -> None:
    sim = endpoints(api_key=KEY)
    azure = (
        b'data: {"id":"","object":"","created":0,"model":"","prompt_filter_results":'
        b'[{"prompt_index":0,"content_filter_results":{}}],"choices":[]}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"role":"assistant"},"content_filter_results":{}}]}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"OK"}}]}\n\ndata: [DONE]\n\n'
    )
    sim.canned(200, azure, "text/event-stream")
    result = await prober.probe(target(sim, stream=True))
    assert result.outcome is Outcome.OK, result.detail
    assert result.latency_ms is not None


async def test_latency_measures_the_request(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(delay=0.1)
    latencies: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        result = await prober.probe(target(sim))
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        assert result.outcome is Outcome.OK
        assert result.latency_ms is not None
        # Every measurement includes the endpoint's 0.1 s, and none exceeds the time the
        # probe really took: exact bounds, whatever the load.
        assert 100 <= result.latency_ms <= elapsed_ms
        latencies.append(result.latency_ms)
    # Not wildly off: a loaded 2-core machine adds tens of milliseconds to a single probe
    # now and then (2 of 120 took 180-260 ms), rarely to the middle of five.
    assert statistics.median(latencies) < 250


async def test_probe_path_is_built_from_base_url(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints()
    result = await prober.probe(target(sim.origin + "/prefix/v1"))
    assert result.outcome is Outcome.OK
    assert sim.last_request is not None
    assert sim.last_request["path"] == "/prefix/v1/chat/completions"


async def test_404_that_is_not_about_the_model_is_a_4xx(
    convai: ConvaiSim, prober: ChatProber
) -> None:
    # A base_url pointing at something that is not an OpenAI endpoint (here Convai's own
    # API) answers 404 "Not found": a wrong URL, not a missing model.
    result = await prober.probe(target(convai.base_url + "/v1"))
    assert result.outcome is Outcome.HTTP_4XX
    assert result.http_status == 404
    assert result.detail is not None
    assert "check base_url" in result.detail


async def test_echoed_key_is_redacted(endpoints: Factory, prober: ChatProber) -> None:
    redactor.register(KEY)
    sim = endpoints(api_key="sk-the-right-one-000000")
    sim.echo_key = True
    result = await prober.probe(target(sim))
    assert result.outcome is Outcome.AUTH_ERROR
    assert result.detail is not None
    assert KEY not in result.detail
    assert KEY[-12:] not in result.detail


async def test_streamed_probe(endpoints: Factory, prober: ChatProber) -> None:
    sim = endpoints(api_key=KEY)
    result = await prober.probe(target(sim, stream=True))
    assert result.outcome is Outcome.OK, result.detail
    request = sim.last_request
    assert request is not None
    assert request["json"]["stream"] is True
    # A stream that never sends a choice is a bad response, not a pass.
    sim.set(Behaviour.NO_CHOICES)
    assert (await prober.probe(target(sim, stream=True))).outcome is Outcome.BAD_RESPONSE
