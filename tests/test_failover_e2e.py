"""The real daemon against real local endpoints and a local Convai API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.harness import World, make_world, running, wait_for

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.policy = {"failback_after": 0.6, "min_dwell": 0.3}
    return w


async def test_primary_dies_group_moves_to_first_healthy_fallback(world: World) -> None:
    config = world.config()
    async with running(config) as daemon:
        assert daemon.monitor is not None
        await wait_for(lambda: all(s.requests >= 2 for s in world.sims.values()), what="first probes")
        world.sims["a"].set(Behaviour.REFUSE)
        died = time.monotonic()
        await wait_for(lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover")
        took = time.monotonic() - died
        record = world.registered()
        assert record["api_key"] == world.keys["b"]
        assert world.updates() == 1
        assert took < 3.0
    kinds = world.events(config)
    assert "failover" in kinds


async def test_broken_first_fallback_is_skipped(world: World) -> None:
    world.sims["b"].set(Behaviour.MODEL_NOT_FOUND)
    config = world.config()
    async with running(config):
        await wait_for(lambda: world.sims["b"].requests >= 3, what="b judged")
        world.sims["a"].set(Behaviour.HTTP_500)
        await wait_for(lambda: world.registered()["base_url"] == world.sims["c"].base_url, what="failover to c")
        assert world.registered()["api_key"] == world.keys["c"]
        assert world.updates() == 1


async def test_blips_never_switch(world: World) -> None:
    config = world.config()
    async with running(config):
        await wait_for(lambda: world.sims["a"].requests >= 2, what="first probes")
        for _ in range(4):
            # two failures in a row, fall is 3: never judged down
            world.sims["a"].script([Behaviour.HTTP_500, Behaviour.HTTP_500])
            seen = world.sims["a"].requests
            await wait_for(lambda s=seen: world.sims["a"].requests >= s + 3, what="blip probed")  # type: ignore[misc]
    assert world.updates() == 0
    assert world.registered()["base_url"] == world.sims["a"].base_url
