"""`probe_runs_missed` advises by cause, found from what is slow at that moment: each
cause produced for real on a running daemon (Convai hanging, an endpoint slower than its
interval, a full probe pool, a locked database, a starved event loop)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.logs import setup_logging
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.conftest import CONVAI_KEY
from tests.harness import GROUP, World, make_world, running, wait_for

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


def missed(logs: io.StringIO, cause: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if x.startswith("{")]
    return [x for x in lines if x["event"] == "probe_runs_missed" and x["cause"] == cause]


async def hint(logs: io.StringIO, cause: str, limit: float = 10.0) -> dict[str, Any]:
    await wait_for(lambda: bool(missed(logs, cause)), limit=limit, what=f"a {cause} line")
    line = missed(logs, cause)[0]
    assert line["level"] == "warning"
    assert line["missed_total"] >= 1
    return line


async def test_convai_hanging_is_blamed_on_convai(world: World) -> None:
    world.extra = {
        "convai": {
            "api_key": CONVAI_KEY,
            "base_url": world.convai.base_url,
            "timeout": 1.5,
            "retry_budget": 1.5,
            "sync_interval": 0.3,
        }
    }
    logs = io.StringIO()
    async with running(world.config()):
        setup_logging("info", stream=logs, json=True)
        world.convai.delay = 5.0  # every sync now waits out its timeout
        line = await hint(logs, "convai")
        world.convai.delay = 0.0
    assert line["job"] == "sync"
    assert "the sync waits on Convai, which is slow or unreachable" in line["hint"]
    assert "raise interval" not in line["hint"]


async def test_an_endpoint_slower_than_its_interval_is_blamed_on_the_interval(
    world: World,
) -> None:
    # Before it has a history its deadline is the whole timeout: a hang takes 1.5 s of a
    # 0.5 s interval.
    world.policy = {"interval": 0.5, "timeout": 1.5, "deadline_floor": 0.3}
    world.sims["b"].set(Behaviour.HANG)
    logs = io.StringIO()
    async with running(world.config()):
        setup_logging("info", stream=logs, json=True)
        line = await hint(logs, "interval")
    assert line["job"] == f"probe:{GROUP}/b"
    assert line["hint"] == (
        f"probes of {GROUP}/b can take their whole timeout (1.5s) of a 0.5s interval: "
        "lower timeout or raise interval"
    )
    assert not missed(logs, "cpu")


async def test_a_full_probe_pool_is_blamed_on_max_in_flight(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory
) -> None:
    # One slot, three endpoints hanging for 0.7 s each every second: the pool is the
    # bottleneck, not any one endpoint's timeout (well under its interval).
    world = make_world(tmp_path, convai, endpoints, names=("a", "b", "c"))
    world.policy = {"interval": 1.0, "timeout": 0.7, "deadline_floor": 0.5}
    world.extra = {"probes": {"max_in_flight": 1}}
    for sim in world.sims.values():
        sim.set(Behaviour.HANG)
    logs = io.StringIO()
    async with running(world.config()):
        setup_logging("info", stream=logs, json=True)
        line = await hint(logs, "probe_slots")
    assert line["job"].startswith(f"probe:{GROUP}/")
    assert line["hint"].startswith("all 1 probe slots are taken and probes queue for one: ")
    assert "raise probes.max_in_flight" in line["hint"]
    assert not missed(logs, "interval")


async def test_a_locked_database_is_blamed_on_the_database(world: World) -> None:
    logs = io.StringIO()
    config = world.config()
    async with running(config):
        setup_logging("info", stream=logs, json=True)
        # Another writer holds the database for 2.5 s (under the 5 s busy timeout): every
        # write of the daemon, and every read queued behind it, waits.
        holder = sqlite3.connect(world.tmp_path / "monitor.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("CREATE TABLE held (x INTEGER)")
            line = await hint(logs, "database", limit=2.5)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert not line["job"].startswith("probe:")
    assert line["job"] != "sync"
    assert f"the {line['job']} job waits on the database" in line["hint"]
    assert "check the disk or the database server (storage.url)" in line["hint"]
    assert not missed(logs, "cpu")


async def test_a_starved_event_loop_is_blamed_on_the_cpu(world: World) -> None:
    for sim in world.sims.values():
        sim.set(Behaviour.OK, delay=0.2)  # a probe is nearly always in flight
    world.policy = {"interval": 1.0, "timeout": 0.9, "deadline_floor": 0.5}
    logs = io.StringIO()
    async with running(world.config()):
        setup_logging("info", stream=logs, json=True)
        deadline = time.monotonic() + 10
        while not missed(logs, "cpu") and time.monotonic() < deadline:
            # What CPU-bound work in the daemon's process does to the loop: it gets a
            # thirtieth of the time, so jobs start late and probes outlast their interval.
            time.sleep(2.5)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0.05)
        line = await hint(logs, "cpu", limit=0.1)
    assert "this host's CPU is starved" in line["hint"]
    assert line["late_s"] >= 0.5
    waited = re.search(r"\(jobs waited up to ([\d.]+)s for the loop\)", line["hint"])
    assert waited is not None, line["hint"]
    assert float(waited.group(1)) >= 0.5
