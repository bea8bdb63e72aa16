"""The model that is probed is the one Convai sends: its listed model_name for the group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.app import open_store
from monitor.config import load_config
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.store.switching import SwitchLog
from tests.conftest import MODEL
from tests.harness import World, make_world, running, settled, wait_for

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.policy = {"failback_after": 0.6, "min_dwell": 0.3}
    return w


def _wrong_model_config(world: World) -> Path:
    path = world.config_path()
    path.write_text(path.read_text().replace(f"model_name: {MODEL}", "model_name: gpt-stale"))
    return path


async def test_a_model_mismatch_probes_with_convais_model_and_pages(world: World) -> None:
    config = load_config(_wrong_model_config(world))
    assert config.groups[0].model_name == "gpt-stale"
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        await wait_for(
            lambda: all(s.health.value == "up" for s in daemon.monitor.states.values()),  # type: ignore[union-attr]
            what="every endpoint up on Convai's model",
        )
        for sim in world.sims.values():
            sent = sim.last_request
            assert sent is not None
            assert sent["json"]["model"] == MODEL
    assert world.updates() == 0
    store = open_store(config, migrate=False)
    try:
        events = SwitchLog(store).history(None, 0)
    finally:
        store.close()
    mismatch = [e for e in events if e.kind == "model_mismatch"]
    assert len(mismatch) == 1
    assert MODEL in mismatch[0].message
    assert "gpt-stale" in mismatch[0].message


async def test_without_convai_the_last_stored_model_is_probed(
    world: World, convai: ConvaiSim
) -> None:
    path = _wrong_model_config(world)
    config = load_config(path)
    async with running(config):
        await settled(world)  # stores Convai's model for the group
    # Convai is gone at the next start: the daemon starts anyway and probes the model
    # Convai had, not the config's stale one.
    convai.stop()
    before = {n: s.requests for n, s in world.sims.items()}
    async with running(load_config(path)):
        await wait_for(
            lambda: all(s.requests > before[n] + 1 for n, s in world.sims.items()),
            what="probes without Convai",
        )
        for sim in world.sims.values():
            sent = sim.last_request
            assert sent is not None
            assert sent["json"]["model"] == MODEL


async def test_a_fallback_without_the_model_is_down_and_never_a_target(world: World) -> None:
    world.sims["b"].model = "another-model"
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        await wait_for(
            lambda: daemon.monitor.states[("my-turbo", "b")].health.value == "down",  # type: ignore[union-attr]
            what="b judged down",
        )
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["c"].base_url,
            what="failover past b",
        )
    assert world.updates() == 1
