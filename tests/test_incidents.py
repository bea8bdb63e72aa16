"""The incident lifecycle as on-call lives it: an incident ends when the group is well
again (on a healthy primary, no trouble condition), whatever kind of switch got it there,
and reminders stop with it."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.logs import setup_logging
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from tests.conftest import CONVAI_KEY
from tests.harness import GROUP, World, make_world, running, settled, wait_for

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory, receiver: AlertReceiver) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.extra = {
        "alerts": {
            "targets": [{"url": receiver.url("pager"), "min_severity": "critical"}],
            "reminder_interval": 0.5,
        }
    }
    return w


def paged(receiver: AlertReceiver) -> list[str]:
    return [r.title for r in receiver.received]


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def quiet_after_resolution(receiver: AlertReceiver) -> None:
    """Three reminder intervals after the resolution: nothing more reaches the pager."""
    await wait_for(lambda: any("RESOLVED" in t for t in paged(receiver)), what="resolution")
    seen = len(receiver.received)
    await asyncio.sleep(1.5)
    assert paged(receiver)[seen:] == []
    assert paged(receiver)[-1].startswith("[RESOLVED]")


async def test_forced_switch_to_a_bad_endpoint_then_back_closes_the_incident(
    world: World, receiver: AlertReceiver
) -> None:
    """(b) `failover --to b --force --hold 0` to a known-bad b; the daemon moves it back to
    its primary as a failover. The group is healthy: the incident must end."""
    world.sims["b"].set(Behaviour.MODEL_NOT_FOUND)
    config = world.config()
    path = str(world.config_path())
    async with running(config) as daemon:
        assert daemon.monitor is not None
        states = daemon.monitor.states
        await settled(world)
        await wait_for(lambda: states[(GROUP, "b")].health.value == "down", what="b down")
        argv = ("failover", "-c", path, GROUP, "--to", "b", "--force", "--yes", "--hold", "0")
        assert await cli(*argv) == 0
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["a"].base_url,
            what="back on the primary",
        )
        await quiet_after_resolution(receiver)
    titles = paged(receiver)
    assert titles[0] == f"[CRITICAL] {GROUP}: failed over"
    assert titles[-1] == f"[RESOLVED] {GROUP}: recovered; resolved"
    assert "back on its primary a, which is up" in receiver.received[-1].message


async def test_frozen_group_moved_by_an_operator_then_failed_over_home_closes_the_incident(
    world: World, receiver: AlertReceiver
) -> None:
    """(a) The group freezes; an operator moves it; that endpoint's key is revoked and the
    daemon fails over to the primary (a failover, not a failback). Reminders must stop."""
    world.policy = {"max_switches_per_hour": 1, "failback": "manual", "failback_after": 1.5}
    config = world.config()
    path = str(world.config_path())
    a, b, c = world.sims["a"], world.sims["b"], world.sims["c"]
    logs = io.StringIO()
    async with running(config, config_path=path) as daemon:
        setup_logging("info", stream=logs, json=True)
        assert daemon.monitor is not None
        states = daemon.monitor.states

        def health(name: str) -> str:
            return states[(GROUP, name)].health.value

        await settled(world)
        a.set(Behaviour.REFUSE)
        await wait_for(lambda: world.registered()["base_url"] == b.base_url, what="failover")
        # c comes and goes, so it is no steady refuge; then b dies: frozen on b.
        c.set(Behaviour.REFUSE)
        await wait_for(lambda: health("c") == "down", what="c down")
        c.set(Behaviour.OK)
        await wait_for(lambda: health("c") == "up", what="c up")
        b.set(Behaviour.REFUSE)
        await wait_for(lambda: any("flapping" in t for t in paged(receiver)), what="frozen")
        # The freeze page says what is broken, where the group is, and what to run.
        frozen = next(r for r in receiver.received if "flapping" in r.title).message
        assert "Broken: b: connect_error since " in frozen
        assert "The group is on b (down)" in frozen
        assert f"To act: convai-monitor failover -c {path} {GROUP} --to c" in frozen
        after = len(receiver.received)
        await wait_for(
            lambda: any("still unresolved" in t for t in paged(receiver)[after:]),
            what="a reminder of the freeze",
        )
        reminder = next(
            r for r in receiver.received[after:] if "still unresolved" in r.title
        ).message
        assert "--to c" in reminder
        assert "Broken: b: connect_error" in reminder
        assert await cli("failover", "-c", path, GROUP, "--to", "c", "--hold", "0") == 0
        a.set(Behaviour.OK)
        await wait_for(lambda: health("a") == "up", what="primary up")
        c.set(Behaviour.UNAUTHORIZED)  # `badkey c`
        await wait_for(lambda: world.registered()["base_url"] == a.base_url, what="home")
        await quiet_after_resolution(receiver)
    titles = paged(receiver)
    assert f"[CRITICAL] {GROUP}: flapping; switching frozen" in titles
    # The freeze is an error in the log too: characters are failing, nothing automatic helps.
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if x.startswith("{")]
    assert {x["level"] for x in lines if x["event"] == "flapping"} == {"error"}
    assert titles[-1] == f"[RESOLVED] {GROUP}: recovered; resolved"


async def test_convai_unreachable_at_start_still_pages_and_is_paged_itself(
    world: World, receiver: AlertReceiver
) -> None:
    """Neither Convai nor the endpoints answer from the start: health and its alerts do
    not wait for Convai, and Convai unreachable past the grace period is a page of its
    own, resolved when Convai is reached."""
    world.extra["convai"] = {
        "api_key": CONVAI_KEY,
        "base_url": world.convai.base_url,
        "timeout": 0.5,
        "retry_budget": 0.5,
        "unreachable_grace": 1.0,
    }
    world.convai.refuse()
    for sim in world.sims.values():
        sim.set(Behaviour.REFUSE)
    config = world.config()
    async with running(config):
        await wait_for(
            lambda: f"[CRITICAL] {GROUP}: all endpoints down" in paged(receiver),
            what="all down paged without Convai",
        )
        await wait_for(
            lambda: "[CRITICAL] convai: Convai unreachable; failover impossible" in paged(receiver),
            what="Convai unreachable paged",
        )
        page = next(r for r in receiver.received if "Convai unreachable" in r.title)
        assert "failover is impossible while Convai cannot be reached" in page.message
        world.convai.restore()
        world.sims["a"].set(Behaviour.OK)
        await wait_for(
            lambda: "[RESOLVED] convai: Convai reachable again; resolved" in paged(receiver),
            limit=15,
            what="Convai resolved",
        )
        await wait_for(
            lambda: f"[RESOLVED] {GROUP}: recovered; resolved" in paged(receiver),
            limit=15,
            what="group resolved",
        )
    titles = paged(receiver)
    assert titles.count(f"[CRITICAL] {GROUP}: all endpoints down") == 1  # not again after sync


async def test_a_failover_page_says_what_broke_where_the_group_is_and_what_to_run(
    world: World, receiver: AlertReceiver
) -> None:
    config = world.config()
    path = str(world.config_path())
    async with running(config, config_path=path):
        await settled(world)
        world.sims["a"].set(Behaviour.HTTP_500)
        await wait_for(lambda: bool(paged(receiver)), what="the page")
    page = receiver.received[0]
    assert page.title == f"[CRITICAL] {GROUP}: failed over"
    assert "Broken: a: http_5xx HTTP 500 since " in page.message
    assert "The group is now on b, which passed pre-flight" in page.message
    assert f"To act: convai-monitor explain -c {path} {GROUP}" in page.message


async def test_a_group_served_by_a_healthy_fallback_is_not_reminded_until_it_breaks_again(
    world: World, receiver: AlertReceiver
) -> None:
    """After a failover the incident stays open until the failback (one story), but while
    characters are served by a healthy fallback nobody is woken again; when that fallback
    breaks too, the reminders come back; the failback resolves it."""
    world.policy = {"failback_after": 60}
    config = world.config()
    a, b, c = world.sims["a"], world.sims["b"], world.sims["c"]
    async with running(config) as daemon:
        assert daemon.engine is not None
        serving = daemon.engine.beliefs.serving
        await settled(world)
        a.set(Behaviour.REFUSE)
        await wait_for(lambda: world.registered()["base_url"] == b.base_url, what="failover")
        await wait_for(lambda: GROUP in serving, what="served by b")
        # Seven reminder intervals on a healthy fallback: the pager hears nothing more.
        await asyncio.sleep(3.5)
        assert paged(receiver) == [f"[CRITICAL] {GROUP}: failed over"]
        # The fallback's fallback: c too breaks, then b; the group is all down.
        c.set(Behaviour.REFUSE)
        b.set(Behaviour.REFUSE)
        await wait_for(
            lambda: any("still unresolved" in t for t in paged(receiver)),
            what="reminders while characters are failing",
        )
        assert GROUP not in serving
        a.set(Behaviour.OK)
        await wait_for(
            lambda: world.registered()["base_url"] == a.base_url, limit=15, what="back home"
        )
        await quiet_after_resolution(receiver)
    titles = paged(receiver)
    assert titles[0] == f"[CRITICAL] {GROUP}: failed over"
    assert titles[-1].startswith("[RESOLVED]")


async def test_a_group_convai_stopped_listing_is_paged_with_the_command_that_registers_it(
    world: World, receiver: AlertReceiver
) -> None:
    config = world.config()
    path = str(world.config_path())
    async with running(config, config_path=path) as daemon:
        await settled(world)
        assert daemon.engine is not None
        world.convai.reset()  # Convai forgot every model: the group is not listed any more
        await daemon.engine.sync()
        await wait_for(lambda: bool(paged(receiver)), what="the page")
    page = receiver.received[0]
    assert page.title.startswith(f"[CRITICAL] {GROUP}: ")
    assert f"Broken: Convai does not list {GROUP} since " in page.message
    assert "The group is not registered on Convai" in page.message
    assert f"To act: convai-monitor models register -c {path} {GROUP}" in page.message


async def test_convai_rejecting_our_key_is_paged_with_since_when_and_what_to_do(
    world: World, receiver: AlertReceiver
) -> None:
    config = world.config()
    async with running(config, config_path=str(world.config_path())) as daemon:
        await settled(world)
        assert daemon.engine is not None
        world.convai.fail_next("list", 401)
        await daemon.engine.sync()
        await wait_for(lambda: bool(paged(receiver)), what="the page")
    page = receiver.received[0]
    assert "Broken: Convai rejects convai.api_key since " in page.message
    assert "To act: set a valid convai.api_key in the config, then reload" in page.message
