"""Several copies, one decision: three daemons (real processes) on one real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from monitor.store import Store
from monitor.store.lease import Leases
from tests.conftest import write_config
from tests.harness import World, make_world, poll

Factory = Callable[..., EndpointSim]
NAMES = ("east", "west", "north")
TTL = 1.5  # lease_ttl: short, so a takeover fits in a test
INTERVAL = 0.5


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    with AlertReceiver() as r:
        yield r


@pytest.fixture
def world(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory, pg_url: str, receiver: AlertReceiver
) -> World:
    w = make_world(tmp_path, convai, endpoints, names=("a", "b"))
    w.policy = {"failback": "manual"}
    w.extra = {
        "storage": {"url": pg_url},
        "ha": {"lease_ttl": TTL},
        "alerts": {"targets": [{"url": receiver.url("pager"), "min_severity": "critical"}]},
    }
    return w


class Cluster:
    """Three `convai-monitor run` processes, one per instance name, on one database."""

    def __init__(self, world: World, stack: ExitStack) -> None:
        self.world = world
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.configs: list[Path] = []
        base = world.config_path()
        self.url = str(world.extra["storage"]["url"])
        import yaml

        data: dict[str, Any] = yaml.safe_load(base.read_text())
        # Schema first, so the test can read the lease while the daemons start (they
        # would migrate it themselves, once, under the advisory lock).
        store = Store(self.url)
        store.migrate()
        store.close()
        for name in NAMES:
            data["instance"] = {"name": name}
            path = write_config(world.tmp_path, data, f"{name}.yaml")
            self.configs.append(path)
            self.logs[name] = world.tmp_path / f"{name}.log"
            sink = stack.enter_context(self.logs[name].open("ab"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "-c", str(path)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ},
            )
            self.procs[name] = proc
            stack.callback(self._end, proc)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)

    def leader(self) -> str | None:
        store = Store(self.url)
        try:
            lease, _ = Leases(store).read()
        finally:
            store.close()
        return lease.holder if lease.live else None

    def heartbeats(self) -> set[str]:
        store = Store(self.url)
        try:
            _, instances = Leases(store).read()
        finally:
            store.close()
        return {i.name for i in instances}


def pages(receiver: AlertReceiver) -> list[str]:
    return [r.title for r in receiver.received]


def on(world: World, name: str) -> bool:
    return bool(world.registered()["base_url"] == world.sims[name].base_url)


def test_three_instances_one_outage_one_update_one_page(
    world: World, receiver: AlertReceiver
) -> None:
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: cluster.leader() is not None, 10, "a leader")
        # Every instance probes every endpoint itself.
        poll(lambda: all(s.requests >= 6 for s in world.sims.values()), 15, "probes")
        world.sims["a"].set(Behaviour.REFUSE)
        poll(lambda: on(world, "b"), 20, "failover")
        poll(lambda: any("failed over" in t for t in pages(receiver)), 15, "the page")
        time.sleep(2 * TTL)  # room for a second update or page, if one were coming
        assert world.updates() == 1
        assert [t for t in pages(receiver) if "CRITICAL" in t] == [
            "[CRITICAL] my-turbo: failed over"
        ]
        assert all(p.poll() is None for p in cluster.procs.values())
        # Any instance's status shows the whole system.
        shown = subprocess.run(
            [sys.executable, "-m", "monitor", "status", "--json", "-c", str(cluster.configs[1])],
            capture_output=True,
            text=True,
            check=True,
        )
        status = json.loads(shown.stdout)
        assert status["cluster"]["leader"] == cluster.leader()
        assert [i["name"] for i in status["cluster"]["instances"]] == sorted(NAMES)
        beats = [datetime.fromisoformat(i["heartbeat_at"]) for i in status["cluster"]["instances"]]
        now = datetime.fromisoformat(status["generated_at"])
        assert all((now - beat).total_seconds() < TTL for beat in beats)
        a = status["groups"][0]["endpoints"][0]
        assert a["health"] == "down"
        assert {n: v["health"] for n, v in a["vantages"].items()} == dict.fromkeys(NAMES, "down")


def test_kill_9_of_the_leader_another_completes_the_failover(world: World) -> None:
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: cluster.leader() is not None, 10, "a leader")
        poll(lambda: all(s.requests >= 6 for s in world.sims.values()), 15, "probes")
        leader = cluster.leader()
        assert leader is not None
        cluster.procs[leader].kill()  # SIGKILL: no release, the lease must lapse
        cluster.procs[leader].wait(timeout=10)
        died = time.monotonic()
        world.sims["a"].set(Behaviour.REFUSE)
        # fall (3) probes at fast_interval, then the switch: within lease_ttl + interval
        # of the leader's death, plus detection.
        poll(lambda: on(world, "b"), 20, "failover by the new leader")
        took = time.monotonic() - died
        successor = cluster.leader()
        assert successor not in (None, leader)
        assert world.updates() == 1
        assert took < TTL + INTERVAL + 3.0, took
        assert "leader_elected" in cluster.logs[str(successor)].read_text()


def test_a_paused_leader_completes_no_switch(world: World) -> None:
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: cluster.leader() is not None, 10, "a leader")
        poll(lambda: all(s.requests >= 6 for s in world.sims.values()), 15, "probes")
        leader = cluster.leader()
        assert leader is not None
        os.kill(cluster.procs[leader].pid, signal.SIGSTOP)  # a frozen VM, a long GC
        world.sims["a"].set(Behaviour.REFUSE)
        poll(lambda: on(world, "b"), 20, "failover by the new leader")
        successor = cluster.leader()
        assert successor not in (None, leader)
        # The old leader wakes up still believing it leads, with a seen down: it notices
        # from its own clock that its lease is gone, and acts on nothing.
        os.kill(cluster.procs[leader].pid, signal.SIGCONT)
        time.sleep(2 * TTL)
        assert world.updates() == 1
        assert cluster.leader() == successor
        text = cluster.logs[leader].read_text()
        assert "switch_started" not in text
        assert "leader_lost" in text
