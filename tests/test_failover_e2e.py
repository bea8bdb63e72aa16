"""The real daemon against real local endpoints and a local Convai API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.app import open_store
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from monitor.store.switching import SwitchLog
from tests.harness import GROUP, World, cli_json, make_world, running, settled, wait_for

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
        await wait_for(
            lambda: all(s.requests >= 2 for s in world.sims.values()), what="first probes"
        )
        world.sims["a"].set(Behaviour.REFUSE)
        died = time.monotonic()
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
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
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["c"].base_url, what="failover to c"
        )
        assert world.registered()["api_key"] == world.keys["c"]
        assert world.updates() == 1


async def test_blips_never_switch(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        for _ in range(4):
            # two failures in a row, fall is 3: never judged down; and a fifth of the
            # probes failing (at most) stays under the 30% failure-rate threshold
            world.sims["a"].script([Behaviour.HTTP_500, Behaviour.HTTP_500])
            seen = world.sims["a"].requests
            await wait_for(lambda s=seen: world.sims["a"].requests >= s + 10, what="blip probed")  # type: ignore[misc]
    assert world.updates() == 0
    assert world.registered()["base_url"] == world.sims["a"].base_url


async def test_all_down_waits_then_switches_when_one_recovers(world: World) -> None:
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        for name in ("b", "c"):
            world.sims[name].set(Behaviour.HTTP_503)
        await wait_for(lambda: world.sims["b"].requests >= 6, what="fallbacks judged down")
        world.sims["a"].set(Behaviour.REFUSE)
        assert daemon.monitor is not None
        await wait_for(lambda: "my-turbo" in daemon.monitor.urgent, what="all_down")  # type: ignore[union-attr]
        assert world.updates() == 0
        world.sims["c"].set(Behaviour.OK)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["c"].base_url, what="switch to c"
        )
        assert world.updates() == 1
    kinds = world.events(config)
    assert kinds.index("all_down") < kinds.index("failover")


async def test_update_fails_twice_then_succeeds(world: World) -> None:
    world.convai.fail_next("update", 500, times=2, message="Database error")
    config = world.config()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
    calls = world.convai.calls_of("update")
    assert [c.status for c in calls] == [500, 500, 200]
    assert world.updates() == 1


async def test_convai_unreachable_records_failed_switch_and_retries(world: World) -> None:
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        world.convai.refuse()
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: "failover_failed" in world.events(config), limit=10, what="failed switch"
        )
        assert daemon.engine is not None
        world.convai.restore()
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url,
            limit=10,
            what="retry",
        )
    kinds = world.events(config)
    assert kinds.count("failover") == 1


async def test_auto_failback_only_after_the_delay(world: World) -> None:
    world.policy.update({"failback_after": 1.5, "min_dwell": 0.2})
    config = world.config()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
        world.sims["a"].set(Behaviour.OK)
        recovered = time.monotonic()
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["a"].base_url, what="failback"
        )
        # rise (2 probes) + failback_after (1.5 s) at the least
        assert time.monotonic() - recovered >= 1.5
        assert world.registered()["api_key"] == world.keys["a"]
    kinds = world.events(config)
    assert kinds.count("failover") == 1
    assert kinds.count("failback") == 1


async def test_manual_failback_waits_for_an_operator(world: World) -> None:
    world.policy.update({"failback": "manual", "failback_after": 0.3, "min_dwell": 0.1})
    config = world.config()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
        world.sims["a"].set(Behaviour.OK)
        await wait_for(lambda: "primary_recovered" in world.events(config), what="recovery noticed")
        seen = world.sims["a"].requests
        await wait_for(lambda: world.sims["a"].requests >= seen + 5, what="more probes")
        assert world.registered()["base_url"] == world.sims["b"].base_url
    kinds = world.events(config)
    assert kinds.count("primary_recovered") == 1  # said once, not on every evaluation
    assert "failback" not in kinds


async def test_flapping_freezes_the_group_when_the_fallbacks_flap_too(world: World) -> None:
    world.policy.update({"max_switches_per_hour": 2, "failback_after": 1.5, "min_dwell": 0.1})
    config = world.config()
    a, b, c = world.sims["a"], world.sims["b"], world.sims["c"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        states = daemon.monitor.states
        await settled(world)
        a.set(Behaviour.REFUSE)
        await wait_for(lambda: world.registered()["base_url"] == b.base_url, what="failover 1")
        a.set(Behaviour.OK)
        await wait_for(lambda: world.registered()["base_url"] == a.base_url, what="failback 1")
        # The fallbacks come and go as well: none of them is a steady refuge.
        for sim in (b, c):
            sim.set(Behaviour.REFUSE)
        await wait_for(
            lambda: (
                states[(GROUP, "b")].health.value == "down"
                and states[(GROUP, "c")].health.value == "down"
            ),
            what="fallbacks down",
        )
        for sim in (b, c):
            sim.set(Behaviour.OK)
        await wait_for(lambda: states[(GROUP, "b")].health.value == "up", what="b back")
        a.set(Behaviour.REFUSE)
        await wait_for(lambda: "flapping" in world.events(config), what="flapping")
        assert world.registered()["base_url"] == a.base_url  # frozen: the budget is spent
    kinds = world.events(config)
    assert kinds.count("failover") == 1
    assert kinds.count("failback") == 1
    assert world.updates() == 2


async def test_switch_budget_never_holds_a_group_on_a_down_endpoint(world: World) -> None:
    """Two short outages spend the budget; on the third the primary hangs while b has been
    up all along. Characters must not be left on the dead primary."""
    world.policy.update({"max_switches_per_hour": 2, "failback_after": 0.3, "min_dwell": 0.1})
    config = world.config()
    a, b = world.sims["a"], world.sims["b"]
    async with running(config):
        await settled(world)
        a.set(Behaviour.REFUSE)
        await wait_for(lambda: world.registered()["base_url"] == b.base_url, what="failover 1")
        a.set(Behaviour.OK)
        await wait_for(lambda: world.registered()["base_url"] == a.base_url, what="failback 1")
        a.set(Behaviour.HANG)
        await wait_for(
            lambda: world.registered()["base_url"] == b.base_url, limit=12, what="failover 2"
        )
    kinds = world.events(config)
    assert "flapping" not in kinds
    assert kinds.count("failover") == 2
    store = open_store(config, migrate=False)
    try:
        last = [e for e in SwitchLog(store).history(None, 0) if e.kind == "failover"][-1]
    finally:
        store.close()
    assert "switches within the hour, but b has been up for" in last.message


async def test_dry_run_changes_nothing_in_convai(world: World) -> None:
    config = world.config()
    async with running(config, dry_run=True):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: "dry_run" in world.events(config), what="would switch")
        seen = world.sims["b"].requests
        await wait_for(lambda: world.sims["b"].requests >= seen + 4, what="more probes")
    assert world.updates() == 0
    assert world.convai.calls_of("update") == []
    assert world.registered()["base_url"] == world.sims["a"].base_url
    assert world.events(config).count("dry_run") == 1


async def test_isolation_switches_nothing(world: World) -> None:
    config = world.config()
    async with running(config):
        await wait_for(lambda: all(s.requests >= 3 for s in world.sims.values()), what="judged up")
        # Our own network is gone: every endpoint and Convai fail at once.
        world.convai.refuse()
        for sim in world.sims.values():
            sim.set(Behaviour.REFUSE)
        await wait_for(lambda: "isolated" in world.events(config), limit=10, what="isolated")
        # The network comes back: every endpoint is judged afresh, nothing is switched.
        world.convai.restore()
        for sim in world.sims.values():
            sim.set(Behaviour.OK)
        seen = world.sims["a"].requests
        await wait_for(lambda: world.sims["a"].requests >= seen + 6, what="re-judged")
    assert world.convai.calls_of("update") == []
    assert world.registered()["base_url"] == world.sims["a"].base_url
    kinds = world.events(config)
    assert "failover" not in kinds
    assert kinds.count("isolated") == 1


async def test_a_failing_update_pages_once_and_backs_off(
    world: World, receiver: AlertReceiver
) -> None:
    # Convai rejects every update (a 404 is not retried): the daemon must keep trying,
    # but with backoff, and on-call hears about it once.
    world.convai.fail_next("update", 404, times=1000, message="Model not found")
    world.extra = {
        "alerts": {"targets": [{"url": receiver.url("pager"), "min_severity": "critical"}]}
    }
    config = world.config()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: len(world.convai.calls_of("update")) >= 1, what="first attempt")
        first = time.monotonic()
        await wait_for(lambda: len(receiver.received) >= 1, what="the page")
        await wait_for(lambda: len(world.convai.calls_of("update")) >= 3, limit=15, what="retries")
        spent = time.monotonic() - first
        # A page for a later attempt would be written with it and delivered within the
        # delivery job's next runs: give it that long to show up.
        await asyncio.sleep(1.0)
    attempts = len(world.convai.calls_of("update"))
    # Backoff 2 s, then 4 s: the third attempt comes ~6 s after the first, not 0.2 s.
    assert spent >= 5.0
    assert attempts <= 4
    pages = receiver.received
    assert len(pages) == 1, [p.title for p in pages]
    assert pages[0].type == "failure"  # critical
    assert GROUP in pages[0].title
    assert "Model not found" in pages[0].message
    assert world.registered()["base_url"] == world.sims["a"].base_url


def status_json(path: Path) -> dict[str, Any]:
    # Exit 1 once the daemon has stopped: the report is the same.
    data: dict[str, Any] = cli_json("status", "-c", str(path), codes=(0, 1))
    return data


async def test_health_and_incident_survive_a_restart(world: World, receiver: AlertReceiver) -> None:
    world.extra = {
        "alerts": {"targets": [{"url": receiver.url("pager"), "min_severity": "critical"}]}
    }
    path = world.config_path()
    config = world.config()
    a = world.sims["a"]
    async with running(config):
        await settled(world)
        a.set(Behaviour.HTTP_503)
        await wait_for(lambda: world.registered()["base_url"] == world.sims["b"].base_url)
        await wait_for(lambda: len(receiver.received) >= 1, what="the page")
    before = await asyncio.to_thread(status_json, path)
    down_since = before["groups"][0]["endpoints"][0]["health_since"]
    assert before["groups"][0]["endpoints"][0]["health"] == "down"

    # A new daemon on the same database, the primary still dead.
    async with running(config):
        after = await asyncio.to_thread(status_json, path)
        primary = after["groups"][0]["endpoints"][0]
        # Down from the first moment, not "unknown" until `fall` probes fail again...
        assert primary["health"] == "down"
        assert primary["health_since"] == down_since
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 5, what="the primary probed again")
        after = await asyncio.to_thread(status_json, path)
        # ...and not judged down afresh after them either: the same episode goes on.
        assert after["groups"][0]["endpoints"][0]["health_since"] == down_since
        assert after["groups"][0]["active_endpoint"] == "b"
        assert len(receiver.received) == 1  # no second page for the outage on-call knows of
        # The primary recovers: the incident opened before the restart is resolved, and
        # the resolution goes where that incident's page went.
        a.set(Behaviour.OK)
        await wait_for(lambda: world.registered()["base_url"] == a.base_url, what="failback")
        await wait_for(lambda: len(receiver.received) >= 2, what="the resolution")
    page, resolution = receiver.received
    # A critical-only target gets a resolution only for an incident it was paged for: the
    # daemon remembered which incident was open and where it had gone.
    assert (page.type, resolution.type) == ("failure", "success")
    assert world.events(config).count("failover") == 1
    assert world.updates() == 2  # the failover and the failback, nothing in between
