"""Every critical page tells on-call three things: what is broken (outcome, since when),
where the group is, and the exact command that acts on it. A table over the briefing
each condition gets, then each critical page as a real alert receiver gets it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.alerts.render import render
from monitor.app import open_store
from monitor.domain.alerts import rule_for
from monitor.domain.failover import Action, Decision, EndpointView, GroupView
from monitor.domain.health import Health, HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.runtime.briefing import brief
from monitor.runtime.evidence import Evidence
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver, Received
from monitor.store.switching import SwitchLog
from tests.harness import GROUP, World, make_world, running, settled, wait_for

Factory = Callable[..., EndpointSim]
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00Z
T0 = NOW - 125  # 07:57:55Z, 2m 5s before NOW


def failing(endpoint: str, outcome: Outcome, status: int | None = None) -> Evidence:
    seen = Evidence()
    for at in (T0, T0 + 1, T0 + 2):
        seen.add(ProbeResult(at, GROUP, endpoint, outcome, None, http_status=status))
    return seen


def view(health: str, **kwargs: object) -> GroupView:
    """`health`: one letter per endpoint a, b, c (U up, D down)."""
    letters = {"U": Health.UP, "D": Health.DOWN}
    endpoints = tuple(
        EndpointView(name, letters[h], up_since=T0 if h == "U" else None)
        for name, h in zip("abc", health, strict=False)
    )
    return GroupView(GROUP, endpoints, "a", **kwargs)  # type: ignore[arg-type]


CHECK = f"convai-monitor check -c cfg.yaml --group {GROUP}"


@pytest.mark.parametrize(
    ("kind", "group", "decision", "broken", "where", "command"),
    [
        (
            "all_down",
            view("DDD"),
            Decision(Action.ALL_DOWN, "a is down and no other endpoint is up"),
            "a: connect_error since 07:57:55Z (2m 5s); b: http_5xx HTTP 500 since 07:57:55Z "
            "(2m 5s); c: timeout since 07:57:55Z (2m 5s)",
            "on a (down)",
            CHECK,
        ),
        (
            "isolated",
            view("DDD", isolated=True),
            Decision(Action.ISOLATED, "every endpoint and Convai are unreachable"),
            "a: connect_error since 07:57:55Z (2m 5s); b: http_5xx HTTP 500 since 07:57:55Z "
            "(2m 5s); c: timeout since 07:57:55Z (2m 5s); Convai unreachable too",
            "on a (down)",
            CHECK,
        ),
        (
            "flapping",
            view("DUU", switch_times=(NOW - 60,) * 4),
            Decision(Action.FLAPPING, "a is down and 4 switches ...", ("b", "c")),
            "a: connect_error since 07:57:55Z (2m 5s)",
            "on a (down)",
            f"convai-monitor failover -c cfg.yaml {GROUP} --to b",
        ),
        (
            "pinned_down",
            view("DUU", pinned_to="a", pinned_until=NOW + 3600),
            Decision(Action.PINNED_DOWN, "a is down but the group is pinned to a", ("b", "c")),
            "a: connect_error since 07:57:55Z (2m 5s)",
            "on a (down), pinned to a until 09:00:00Z",
            f"convai-monitor failover -c cfg.yaml {GROUP} --to b",
        ),
        (
            "failover",
            view("DUU"),
            Decision(Action.FAILOVER, "a is down", ("b", "c")),
            "a: connect_error since 07:57:55Z (2m 5s)",
            "on a (down)",
            f"convai-monitor explain -c cfg.yaml {GROUP}",
        ),
    ],
)
def test_each_critical_briefing_says_what_where_and_what_to_run(
    kind: str, group: GroupView, decision: Decision, broken: str, where: str, command: str
) -> None:
    evidence = {
        (GROUP, "a"): failing("a", Outcome.CONNECT_ERROR),
        (GROUP, "b"): failing("b", Outcome.HTTP_5XX, 500),
        (GROUP, "c"): failing("c", Outcome.TIMEOUT),
    }
    states = {(GROUP, e.name): HealthState(e.health, since=T0) for e in group.endpoints}
    details = brief(
        group=GROUP,
        view=group,
        decision=decision,
        evidence=evidence,
        states=states,
        config_path="cfg.yaml",
        now=NOW,
    )
    assert details == {"broken": broken, "where": where, "command": command}
    rule = rule_for(kind)
    assert rule is not None
    assert rule.severity.label == "critical"
    _title, text = render(
        kind=kind, group=GROUP, message=decision.reason, details=details, rule=rule, incident=3
    )
    lines = text.splitlines()
    assert f"Broken: {broken}" in lines
    assert f"The group is {where}" in lines
    assert f"To act: {command}" in lines


# --- the pages as the receiver gets them ------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory, receiver: AlertReceiver) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.extra = {"alerts": {"targets": [{"url": receiver.url("pager"), "min_severity": "critical"}]}}
    return w


async def page(receiver: AlertReceiver, headline: str) -> Received:
    title = f"[CRITICAL] {GROUP}: {headline}"
    await wait_for(lambda: any(r.title == title for r in receiver.received), limit=15, what=title)
    return next(r for r in receiver.received if r.title == title)


SINCE = r"since \d\d:\d\d:\d\dZ \((\d+ms|[\d.]+s)\)"


def assert_three_parts(found: Received, broken: str, where: str, command: str) -> None:
    """The page's Broken line and where the group is (regexes: times vary), the command."""
    lines = found.message.splitlines()

    def line(prefix: str) -> str:
        told = next((x for x in lines if x.startswith(prefix)), None)
        assert told is not None, found.message
        return told

    assert re.fullmatch(f"Broken: {broken}", line("Broken: ")), found.message
    assert re.fullmatch(f"The group is {where}", line("The group is ")), found.message
    assert f"To act: {command}" in lines, found.message


async def test_all_down_page(world: World, receiver: AlertReceiver) -> None:
    path = str(world.config_path())
    async with running(world.config(), config_path=path):
        await settled(world)
        for sim in world.sims.values():
            sim.set(Behaviour.REFUSE)
        found = await page(receiver, "all endpoints down")
    assert_three_parts(
        found,
        f"a: connect_error {SINCE}; b: connect_error {SINCE}; c: connect_error {SINCE}",
        r"on a \(down\)",
        f"convai-monitor check -c {path} --group {GROUP}",
    )


async def test_isolated_page(world: World, receiver: AlertReceiver) -> None:
    path = str(world.config_path())
    async with running(world.config(), config_path=path):
        await settled(world)
        world.convai.refuse()
        for sim in world.sims.values():
            sim.set(Behaviour.REFUSE)
        found = await page(receiver, "monitor looks cut off; switching nothing")
        world.convai.restore()
    assert_three_parts(
        found,
        f"a: connect_error {SINCE}; b: connect_error {SINCE}; c: connect_error {SINCE}; "
        "Convai unreachable too",
        r"on a \(down\)",
        f"convai-monitor check -c {path} --group {GROUP}",
    )


async def test_failover_failed_page(world: World, receiver: AlertReceiver) -> None:
    path = str(world.config_path())
    async with running(world.config(), config_path=path):
        await settled(world)
        world.convai.refuse()  # the update cannot be sent
        world.sims["a"].set(Behaviour.HTTP_503)
        found = await page(receiver, "failover FAILED")
        world.convai.restore()
    assert_three_parts(
        found,
        f"a: (overloaded|http_5xx) HTTP 503 {SINCE}",
        r"still on a \(the switch failed\)",
        f"convai-monitor failover -c {path} {GROUP} --to b",
    )


async def test_preflight_failed_page(world: World, receiver: AlertReceiver) -> None:
    """b is judged up, but fails the pre-flight probe right before the group would move
    there. A long interval keeps b's own schedule out of the way: after start-up b is only
    probed by the pre-flight."""
    del world.sims["c"]
    world.policy = {"interval": 30.0}
    path = str(world.config_path())
    async with running(world.config(), config_path=path) as daemon:
        assert daemon.monitor is not None
        monitor = daemon.monitor
        up = Health.UP
        await wait_for(
            lambda: all(monitor.states[(GROUP, n)].health is up for n in "ab"), what="both up"
        )
        world.sims["b"].set(Behaviour.HTTP_500)
        world.sims["a"].set(Behaviour.REFUSE)
        monitor.hurry((GROUP, "a"))
        found = await page(receiver, "no fallback passed pre-flight")
    assert found.message.startswith("no candidate passed pre-flight (b: http_5xx HTTP 500)")
    check = f"convai-monitor check -c {path} --group {GROUP}"
    assert_three_parts(found, f"a: connect_error {SINCE}", r"on a \(down\)", check)
    assert world.registered()["base_url"] == world.sims["a"].base_url


async def test_pinned_down_page(world: World, receiver: AlertReceiver) -> None:
    config = world.config()
    path = str(world.config_path())
    store = open_store(config)
    try:
        SwitchLog(store).pin(GROUP, "a", time.time() + 3600, time.time())
    finally:
        store.close()
    async with running(config, config_path=path):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        found = await page(receiver, "pinned to a down endpoint")
    assert_three_parts(
        found,
        f"a: connect_error {SINCE}",
        r"on a \(down\), pinned to a until \d\d:\d\d:\d\dZ",
        f"convai-monitor failover -c {path} {GROUP} --to b",
    )
    assert f"Or let it switch by itself again: convai-monitor unpin -c {path} {GROUP}" in (
        found.message.splitlines()
    )
