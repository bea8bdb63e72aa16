"""The real daemon judging outages as characters would see them: a 400 that is really an
outage, a brownout, a reasoning model, an Azure-style stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from monitor.app import open_store
from monitor.config import Config
from monitor.domain.health import Cause
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.state import State
from monitor.store.switching import EventRecord, SwitchLog
from tests.conftest import MODEL
from tests.harness import GROUP, World, make_world, running, settled, wait_for

Factory = Callable[..., EndpointSim]

AZURE_STREAM = (
    b'data: {"id":"","object":"","created":0,"model":"","prompt_filter_results":[{"prompt_index":'
    b'0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}],"choices":[]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4",'
    b'"choices":[{"index":0,"finish_reason":null,"delta":{"role":"assistant"},'
    b'"content_filter_results":{}}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4",'
    b'"choices":[{"index":0,"finish_reason":null,"delta":{"content":"OK"}}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    w = make_world(tmp_path, convai, endpoints, names=("a", "b"))
    w.policy = {"failback_after": "3s", "min_dwell": "0.3s"}
    return w


def _first_failover(config: Config) -> EventRecord:
    store = open_store(config, migrate=False)
    try:
        return next(e for e in SwitchLog(store).history(None, 0) if e.kind == "failover")
    finally:
        store.close()


def _on(world: World, name: str) -> bool:
    return bool(world.registered()["base_url"] == world.sims[name].base_url)


async def test_a_400_invalid_model_name_is_an_outage_and_switches(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        # LiteLLM's proxy stops serving the model: every character's request fails.
        world.sims["a"].set(Behaviour.INVALID_MODEL_400)
        await wait_for(lambda: _on(world, "b"), what="failover off the 400")
    assert world.updates() == 1
    failover = _first_failover(config)
    assert "model_not_found" in failover.message


async def _character(world: World, heard: list[tuple[float, bool]], stop: asyncio.Event) -> None:
    """A character calling the group as Convai does: wherever Convai points now, with the
    key Convai holds. Records (when, failed) for every request."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            record = world.registered()
            try:
                response = await client.post(
                    f"{record['base_url'].rstrip('/')}/chat/completions",
                    headers={"Authorization": f"Bearer {record['api_key']}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                )
                failed = response.status_code != 200
            except httpx.HTTPError:
                failed = True
            heard.append((time.monotonic(), failed))
            await asyncio.sleep(0.05)


async def test_a_brownout_switches_once_and_does_not_flap(world: World) -> None:
    config = world.config()
    heard: list[tuple[float, bool]] = []
    stop = asyncio.Event()
    async with running(config):
        await settled(world)
        character = asyncio.create_task(_character(world, heard, stop))
        world.sims["a"].flaky(0.5, behaviour=Behaviour.HTTP_503, seed=7)
        began = time.monotonic()
        await wait_for(lambda: _on(world, "b"), limit=15, what="failover off the brownout")
        switched = time.monotonic()
        # The brownout goes on for longer than failback_after several times over: the
        # primary answers half its probes (rise 2 is reached again and again) but its
        # record is not clean, so the group never goes back into it.
        probed = world.sims["a"].requests
        await asyncio.sleep(8.0)
        stop.set()
        await character
        assert world.sims["a"].requests > probed + 20, "the primary is still probed"
        assert world.updates() == 1
        assert _on(world, "b")
        # What the character saw: about half its requests failed until the switch, none
        # after it (a failback into the brownout would show here as failures again).
        before = [failed for at, failed in heard if began <= at < switched]
        after = [failed for at, failed in heard if at > switched + 0.2]
        assert len(before) >= 5
        assert sum(before) / len(before) > 0.2, before
        assert len(after) > 50
        assert not any(after)
        # Over: once its window is clean and it has been up failback_after, it returns.
        world.sims["a"].flaky(0.0)
        await wait_for(lambda: _on(world, "a"), limit=20, what="failback after the brownout")
    assert world.updates() == 2


async def test_a_reasoning_model_is_probed_as_it_wants_and_shown_in_status(
    world: World,
) -> None:
    world.sims["a"].set(Behaviour.REASONING)
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        await wait_for(
            lambda: daemon.monitor.states[("my-turbo", "a")].health.value == "up",  # type: ignore[union-attr]
            what="reasoning endpoint up",
        )
        await asyncio.sleep(0.5)  # the shape is written by the probe loop
    assert world.updates() == 0
    sent = world.sims["a"].last_request
    assert sent is not None
    assert "max_completion_tokens" in sent["json"]
    assert "temperature" not in sent["json"]
    store = open_store(config, migrate=False)
    try:
        status = json.loads(json.dumps(State(config, store).status(0.0)))
    finally:
        store.close()
    endpoints = {e["name"]: e for e in status["groups"][0]["endpoints"]}
    assert endpoints["a"]["probe"] == {
        "budget_field": "max_completion_tokens",
        "temperature": False,
        "max_tokens": None,
    }
    assert endpoints["b"]["probe"] is None


async def test_a_healthy_azure_stream_is_healthy(world: World) -> None:
    for sim in world.sims.values():
        sim.canned(200, AZURE_STREAM, "text/event-stream")
    config = world.config(stream=True)
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        await wait_for(
            lambda: all(s.health.value == "up" for s in daemon.monitor.states.values()),  # type: ignore[union-attr]
            what="every streaming endpoint up",
        )
    assert world.updates() == 0


async def test_a_slow_primary_switches_for_latency_to_a_fast_fallback_only(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory
) -> None:
    """failover_on: [errors, latency]. The primary gets slow (every answer 0.25 s, none
    failing); the first fallback is as slow; the group goes to the second one, whose own
    p95 is under the threshold, once. The 3 s window holds 6 probes at the normal 0.5 s
    cadence, under min_probes 10: the verdict needs the fast re-probes a slow window
    starts."""
    w = make_world(tmp_path, convai, endpoints, names=("a", "b", "c"))
    w.policy = {
        "failback_after": "3s",
        "min_dwell": "0.3s",
        "latency_threshold": 0.1,
        "failover_on": ["errors", "latency"],
        "failure_rate": {"window": "3s", "min_probes": 10, "threshold": "30%"},
    }
    w.sims["b"].set(Behaviour.OK, delay=0.25)  # a slow fallback is not a target
    config = w.config()
    async with running(config) as daemon:
        monitor = daemon.monitor
        assert monitor is not None
        await settled(w)
        await wait_for(
            lambda: monitor.states[(GROUP, "b")].health.value == "down",
            what="the slow fallback judged down for latency",
        )
        assert monitor.states[(GROUP, "b")].cause is Cause.SLOW
        w.sims["a"].set(Behaviour.OK, delay=0.25)  # slow, not failing
        began = time.monotonic()
        await wait_for(lambda: _on(w, "c"), limit=10, what="failover for latency")
        assert time.monotonic() - began < 5.0
        assert w.sims["a"].requests > 0
        # Back to fast: a clean window and failback_after later, the group returns.
        w.sims["a"].set(Behaviour.OK, delay=0.0)
        await wait_for(lambda: _on(w, "a"), limit=20, what="failback once fast again")
    called = [c.body.get("base_url") for c in convai.calls_of("update") if c.status == 200]
    assert called == [w.sims["c"].base_url, w.sims["a"].base_url]
    failover = _first_failover(config)
    assert "latency" in failover.message
