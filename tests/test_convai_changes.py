"""Convai changed by someone else, end to end: drift is recorded and adopted, the check right
before an update skips a switch a human made moot, and `run --register` registers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.conftest import CONVAI_KEY, MODEL
from tests.harness import (
    GROUP,
    World,
    cli_json,
    daemon_process,
    make_world,
    poll,
    running,
    settled,
    wait_for,
)

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    w = make_world(tmp_path, convai, endpoints)
    # Manual failback: whatever endpoint the group ends up on, only a failure moves it.
    w.policy = {"failback": "manual", "failback_after": 0.3, "min_dwell": 0.1}
    return w


def sync_every(world: World, seconds: float) -> None:
    world.extra["convai"] = {
        "api_key": CONVAI_KEY,
        "base_url": world.convai.base_url,
        "retry_budget": 1.0,
        "timeout": 1.0,
        "sync_interval": seconds,
    }


async def human_moves_group(world: World, base_url: str, api_key: str) -> None:
    """What a person does in Convai's dashboard or with curl: an update of their own."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            f"{world.convai.base_url}/llm-models/update",
            headers={"CONVAI-API-KEY": CONVAI_KEY},
            json={"model_group_name": GROUP, "base_url": base_url, "api_key": api_key},
            timeout=5,
        )
    assert response.status_code == 200


def status_json(path: Path) -> dict[str, Any]:
    # Exit 1 once the daemon has stopped: the report is the same.
    data: dict[str, Any] = cli_json("status", "-c", str(path), codes=(0, 1))
    return data


def history(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = cli_json("history", "-c", str(path))["events"]
    return events


async def test_drift_to_a_fallback_is_recorded_and_adopted(world: World) -> None:
    sync_every(world, 0.3)
    path = world.config_path()
    config = world.config()
    c = world.sims["c"]
    async with running(config):
        await settled(world)
        await human_moves_group(world, c.base_url, world.keys["c"])
        await wait_for(lambda: "drift" in world.events(config), what="drift recorded")
        # Adopted, not overwritten: several syncs and ticks later the group is still
        # where the human put it, and the daemon made no update of its own.
        lists = len(world.convai.calls_of("list"))
        await wait_for(lambda: len(world.convai.calls_of("list")) >= lists + 3, what="syncs")
        assert world.registered()["base_url"] == c.base_url
        assert len(world.convai.calls_of("update")) == 1  # the human's
        status = (await asyncio.to_thread(status_json, path))["groups"][0]
        assert status["active_endpoint"] == "c"
        # The daemon now guards c: when c dies it fails over from c, to the first healthy
        # endpoint in priority order.
        c.set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["a"].base_url, what="failover"
        )
    switch = (await asyncio.to_thread(status_json, path))["groups"][0]["last_switch"]
    assert (switch["kind"], switch["from"], switch["to"]) == ("failover", "c", "a")
    assert world.registered()["api_key"] == world.keys["a"]
    drift = next(e for e in (await asyncio.to_thread(history, path)) if e["kind"] == "drift")
    assert "without this daemon" in drift["message"]


async def test_drift_to_an_unknown_url_is_never_overwritten(world: World) -> None:
    sync_every(world, 0.3)
    config = world.config()
    elsewhere = "http://127.0.0.1:9/v1"  # an endpoint this config does not know
    async with running(config):
        await settled(world)
        await human_moves_group(world, elsewhere, "someone-elses-key-448811")
        await wait_for(lambda: "drift" in world.events(config), what="drift recorded")
        # Even with the primary dead and healthy fallbacks at hand, the daemon does not
        # move a group it no longer knows the endpoint of.
        world.sims["a"].set(Behaviour.HTTP_500)
        seen = world.sims["a"].requests
        await wait_for(lambda: world.sims["a"].requests >= seen + 6, what="a judged down")
        lists = len(world.convai.calls_of("list"))
        await wait_for(lambda: len(world.convai.calls_of("list")) >= lists + 2, what="syncs")
    assert world.registered()["base_url"] == elsewhere
    assert len(world.convai.calls_of("update")) == 1  # the human's
    assert "failover" not in world.events(config)


async def test_a_group_moved_since_the_last_sync_is_not_switched(world: World) -> None:
    # No periodic sync during the test: only the check right before the update can see
    # what the human did.
    sync_every(world, 3600)
    path = world.config_path()
    config = world.config()
    c = world.sims["c"]
    async with running(config):
        await settled(world)
        lists = len(world.convai.calls_of("list"))
        await human_moves_group(world, c.base_url, world.keys["c"])
        world.sims["a"].set(Behaviour.REFUSE)  # the daemon still believes the group is on a
        await wait_for(lambda: "drift" in world.events(config), what="the moved group noticed")
        assert len(world.convai.calls_of("list")) > lists  # read right before the update
        seen = c.requests
        await wait_for(lambda: c.requests >= seen + 4, what="more ticks")
    # The switch to b (first healthy fallback) was skipped: Convai is where the human put
    # it, the daemon sent no update, and it now knows the group is on c.
    assert world.registered()["base_url"] == c.base_url
    assert len(world.convai.calls_of("update")) == 1  # the human's
    kinds = world.events(config)
    assert "failover" not in kinds
    assert "failover_failed" not in kinds
    assert (await asyncio.to_thread(status_json, path))["groups"][0]["active_endpoint"] == "c"


def test_run_register_registers_a_missing_group(world: World) -> None:
    world.convai.reset()  # Convai has never heard of the group
    assert world.convai.record(GROUP) is None
    path = world.config_path()
    refused = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2
    assert "--register" in refused.stderr
    assert world.convai.calls_of("register") == []

    log = world.tmp_path / "d.log"
    with daemon_process(path, log, args=["--register"]) as proc:
        poll(lambda: world.convai.record(GROUP) is not None, 15, "registered")
        seen = world.sims["a"].requests
        poll(lambda: world.sims["a"].requests >= seen + 2, 15, "probing the group")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    record = world.registered()
    # On its primary, with the primary's key and the configured model.
    assert record["base_url"] == world.sims["a"].base_url
    assert record["api_key"] == world.keys["a"]
    assert record["model_name"] == MODEL
    assert len(world.convai.calls_of("register")) == 1
    assert "registered" in [e["kind"] for e in history(path)]
    assert status_json(path)["groups"][0]["active_endpoint"] == "a"
