"""Learned deadlines end to end: the real daemon, real endpoint simulators, a real store.

Each endpoint's history is what it would be after a while of probing: successful results
written to the store before the daemon starts (the daemon learns from stored data, so this
is also what a restart sees).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.app import Daemon, open_store
from monitor.config import Config
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.store.switching import SwitchLog
from tests.harness import GROUP, World, make_world, running, wait_for

Factory = Callable[..., EndpointSim]
TIMEOUT = 3.0
# interval 4 s / timeout 3 s: by timeouts alone a hang would take fall x 3 s plus the
# re-probe before the failover (12 s); the learned deadline here is the 0.2 s floor.
POLICY = {
    "interval": 4.0,
    "fast_interval": 0.2,
    "timeout": TIMEOUT,
    "deadline_floor": 0.2,
    "deadline_factor": 4.0,
    "failback_after": 60.0,
}


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.policy = dict(POLICY)
    return w


def seed(world: World, config: Config, history: dict[str, float], count: int = 30) -> None:
    """`count` successful probes per endpoint over the last minutes, at the given latency."""
    store = open_store(config)
    try:
        ids = store.sync_endpoints(
            [(GROUP, name, world.sims[name].base_url) for name in world.sims]
        )
        now = time.time()
        rows = [
            (
                ids[(GROUP, name)],
                ProbeResult(now - 300 + i, GROUP, name, Outcome.OK, latency_ms),
            )
            for name, latency_ms in history.items()
            for i in range(count)
        ]
        store.save(rows, {})
    finally:
        store.close()


async def all_up(daemon: Daemon) -> None:
    """Every endpoint judged up (generous: at interval 4 s a loaded machine is slow)."""
    monitor = daemon.monitor
    assert monitor is not None
    await wait_for(
        lambda: all(s.health.value == "up" for s in monitor.states.values()),
        limit=30,
        what="every endpoint up",
    )


def failures(config: Config, name: str) -> list[tuple[str, str | None]]:
    store = open_store(config, migrate=False)
    try:
        ids = store.endpoint_ids()
        rows = store.recent_results(ids[(GROUP, name)], 200)
    finally:
        store.close()
    return [(r.outcome, r.detail) for r in rows if not r.ok]


async def test_a_hang_is_failed_at_the_learned_deadline(world: World) -> None:
    config = world.config()
    seed(world, config, {"a": 20.0, "b": 20.0, "c": 20.0})
    a, b = world.sims["a"], world.sims["b"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        target = daemon.monitor.targets[(GROUP, "a")]
        assert daemon.monitor.deadline(target, time.time()) == pytest.approx(0.2)
        await all_up(daemon)
        a.set(Behaviour.HANG)
        await wait_for(
            lambda: world.registered()["base_url"] == b.base_url, limit=15, what="failover"
        )
    store = open_store(config, migrate=False)
    try:
        switch = SwitchLog(store).switches(GROUP)[-1]
    finally:
        store.close()
    assert switch.kind == "failover"
    assert switch.detected_at is not None
    assert switch.completed_at is not None
    # Three deadline failures, the re-probe before the failover (same deadline) and the
    # switch: well under one `timeout`, where waiting out timeouts would take four.
    assert switch.completed_at - switch.detected_at < TIMEOUT
    kinds = failures(config, "a")
    assert len(kinds) >= 4
    assert all(outcome == Outcome.TIMEOUT for outcome, _ in kinds)
    assert all("learned deadline 0.2s" in (detail or "") for _, detail in kinds)


async def test_a_slow_by_nature_endpoint_is_not_failed(world: World) -> None:
    """a has always taken 0.8 s (deadline 3.2 s, capped at 3 s) and keeps doing so: it
    stays up. b, which used to answer in 20 ms, is failed for the same 0.8 s: it is the
    endpoint's own history that sets its deadline."""
    config = world.config()
    seed(world, config, {"a": 800.0, "b": 20.0, "c": 20.0})
    a, b = world.sims["a"], world.sims["b"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        await all_up(daemon)
        a.set(Behaviour.OK, delay=0.8)
        b.set(Behaviour.HANG)  # b never answers: its deadline is the 0.2 s floor
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 3, limit=20, what="slow probes of a")
        await wait_for(
            lambda: (
                daemon.monitor is not None
                and daemon.monitor.states[(GROUP, "b")].health.value == "down"
            ),
            limit=20,
            what="b down",
        )
        assert daemon.monitor.states[(GROUP, "a")].health.value == "up"
    assert world.registered()["base_url"] == a.base_url
    assert world.updates() == 0
    assert failures(config, "a") == []


async def test_a_late_answer_is_a_success_and_raises_the_deadline(world: World) -> None:
    """An endpoint that is getting slower (20 ms -> 0.3 s) misses its old deadline once;
    the answer still comes within `timeout`, counts as a success, and its latency lifts
    the deadline, so the next probes pass on time. No switch."""
    config = world.config()
    seed(world, config, {"a": 20.0, "b": 20.0, "c": 20.0})
    a = world.sims["a"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        await all_up(daemon)
        a.set(Behaviour.OK, delay=0.3)
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 3, limit=20, what="slow probes of a")
        target = daemon.monitor.targets[(GROUP, "a")]
        assert daemon.monitor.deadline(target, time.time()) == pytest.approx(1.2, abs=0.2)
        assert daemon.monitor.states[(GROUP, "a")].health.value == "up"
    assert world.updates() == 0
    # The first slow probe (or two, when its late answer lands just after the fast
    # re-probe went out) misses the old deadline; the late answers break the streak
    # before `fall`, and with the deadline raised the rest pass.
    missed = failures(config, "a")
    assert 1 <= len(missed) < 3
    assert set(missed) == {
        (Outcome.TIMEOUT, "no answer within the learned deadline 0.2s (still waiting up to 3s)")
    }


async def test_a_new_endpoint_waits_out_the_timeout(world: World) -> None:
    """No history: nothing says what normal is, so `timeout` alone applies."""
    config = world.config()
    a = world.sims["a"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        target = daemon.monitor.targets[(GROUP, "a")]
        assert daemon.monitor.deadline(target, time.time()) == TIMEOUT
        await all_up(daemon)
        a.set(Behaviour.HANG)
        seen = a.requests
        await wait_for(lambda: a.requests > seen, limit=10, what="a hanging probe")
        sent = time.monotonic()
        states = daemon.monitor.states
        await wait_for(lambda: states[(GROUP, "a")].failures >= 1, limit=10, what="a failed")
        assert time.monotonic() - sent >= TIMEOUT * 0.9
    details = [detail for _, detail in failures(config, "a")]
    assert details
    assert all("learned deadline" not in (d or "") for d in details)
