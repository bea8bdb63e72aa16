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


async def test_one_late_request_per_endpoint(world: World) -> None:
    """A hang re-probed at the fast cadence, each probe failed at its 0.2 s deadline, with
    a 3 s `timeout`: without the cap some ten requests would wait at once, each holding a
    probe slot. The endpoint itself sees at most the late one and the current one (a
    third only while a cancelled one is being hung up). fall 20 keeps it re-probed fast
    for longer than a `timeout`."""
    config = world.config(fall=20)
    seed(world, config, {"a": 20.0, "b": 20.0, "c": 20.0})
    a = world.sims["a"]
    async with running(config) as daemon:
        monitor = daemon.monitor
        assert monitor is not None
        await all_up(daemon)
        a.set(Behaviour.HANG)
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 12, limit=20, what="fast probes of the hang")
        assert monitor.states[(GROUP, "a")].failures >= 10
    # Two at once at least (the late one and the current one): the count is real.
    assert 2 <= a.held_peak <= 3
    # Every one of them a failure at the deadline, none waited out.
    kinds = failures(config, "a")
    assert all("learned deadline 0.2s" in (detail or "") for _, detail in kinds)


def streaming(world: World) -> Config:
    world.policy["stream"] = True
    return world.config()


async def test_a_stream_whose_first_chunk_never_comes_is_failed_at_the_deadline(
    world: World,
) -> None:
    """The answer's headers come at once (200, text/event-stream), the first token never
    does: what a character waits for is the first chunk, so that is what the learned
    deadline measures."""
    config = streaming(world)
    # Enough history that the p99 is the seeded 20 ms: with 30 samples it was the slowest
    # one, and a single real probe slowed past 50 ms by a busy machine raised the
    # deadline to 0.3 s.
    seed(world, config, {"a": 20.0, "b": 20.0, "c": 20.0}, count=300)
    a, b = world.sims["a"], world.sims["b"]
    async with running(config) as daemon:
        assert daemon.monitor is not None
        await all_up(daemon)
        a.first_chunk_delay = 30.0
        await wait_for(
            lambda: world.registered()["base_url"] == b.base_url, limit=15, what="failover"
        )
    kinds = failures(config, "a")
    assert len(kinds) >= 4
    assert all(outcome == Outcome.TIMEOUT for outcome, _ in kinds)
    assert all("learned deadline 0.2s" in (detail or "") for _, detail in kinds)


async def test_a_stream_is_judged_by_its_first_chunk_not_its_end(world: World) -> None:
    """a's first token comes in 20 ms, the rest of its answer over the next 2 s (ten times
    its 0.2 s deadline): a character is already reading, so a stays up, with the time to
    first token as its latency. b's first token takes 0.5 s where it used to take 20 ms:
    slower but answering within `timeout`, so its late answers are successes and it stays
    up too. No switch."""
    config = streaming(world)
    seed(world, config, {"a": 20.0, "b": 20.0, "c": 20.0})
    a, b = world.sims["a"], world.sims["b"]
    async with running(config) as daemon:
        monitor = daemon.monitor
        assert monitor is not None
        await all_up(daemon)
        a.first_chunk_delay, a.chunk_delay = 0.02, 1.0
        b.first_chunk_delay = 0.5
        up_since = {name: monitor.states[(GROUP, name)].since for name in ("a", "b")}
        seen_a, seen_b = a.requests, b.requests
        await wait_for(
            # Past the misses and the late answers, and a couple of probes on.
            lambda: a.requests >= seen_a + 3 and b.requests >= seen_b + 6,
            limit=30,
            what="paced streams probed",
        )
        for name in ("a", "b"):
            # Up all along: not down and back, which would move `since`.
            assert monitor.states[(GROUP, name)].health.value == "up"
            assert monitor.states[(GROUP, name)].since == up_since[name]
        # b's late answers (0.5 s) raised its deadline to about 4 x 0.5 s.
        target = monitor.targets[(GROUP, "b")]
        assert monitor.deadline(target, time.time()) == pytest.approx(2.0, abs=0.4)
    assert world.updates() == 0
    assert failures(config, "a") == []
    store = open_store(config, migrate=False)
    try:
        latest = store.recent_results(store.endpoint_ids()[(GROUP, "a")], 3)
    finally:
        store.close()
    assert all(r.ok and r.latency_ms is not None and r.latency_ms < 500 for r in latest)
    # b missed its old 0.2 s deadline only until the first late answer raised it: the
    # probes already sent by then (at most three at a 0.2 s cadence), each taken back from
    # the failure-rate window when its answer came (else 3 of ~10 probes is 30%: down).
    assert 1 <= len(failures(config, "b")) <= 3
