"""Several copies, one decision: three daemons (real processes) on one real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.postgres import LocalPostgres, PostgresUnavailable
from monitor.sim.receiver import AlertReceiver
from monitor.store import Store
from monitor.store.lease import Instance, Lease, Leases
from monitor.store.switching import SwitchLog
from monitor.store.tables import ResultRow
from tests.conftest import write_config
from tests.harness import GROUP, World, free_port, make_world, poll

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


@contextmanager
def opened(url: str) -> Iterator[Store]:
    store = Store(url)
    try:
        yield store
    finally:
        store.close()


class Cluster:
    """`convai-monitor run` processes, one per instance name, on one database."""

    def __init__(
        self,
        world: World,
        stack: ExitStack,
        names: tuple[str, ...] = NAMES,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.world = world
        self.stack = stack
        self.overrides = overrides or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.configs: list[Path] = []
        self.listen: dict[str, str] = {}
        base = world.config_path()
        self.url = str(world.extra["storage"]["url"])
        self.data: dict[str, Any] = yaml.safe_load(base.read_text())
        # Schema first, so the test can read the lease while the daemons start (they
        # would migrate it themselves, once, under the advisory lock).
        with opened(self.url) as store:
            store.migrate()
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        """Start one more instance."""
        self.listen[name] = f"127.0.0.1:{free_port()}"
        data = {**self.data, "instance": {"name": name}, "server": {"listen": self.listen[name]}}
        for section, values in self.overrides.get(name, {}).items():
            data[section] = {**data.get(section, {}), **values}
        path = write_config(self.world.tmp_path, data, f"{name}.yaml")
        self.configs.append(path)
        self.logs[name] = self.world.tmp_path / f"{name}.log"
        sink = self.stack.enter_context(self.logs[name].open("ab"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ},
        )
        self.procs[name] = proc
        self.stack.callback(self._end, proc)

    def ready(self, name: str) -> tuple[int, dict[str, Any]]:
        """/readyz of one instance: its status code and its checks (0 and nothing while
        it does not listen yet)."""
        try:
            reply = httpx.get(f"http://{self.listen[name]}/readyz", timeout=5, trust_env=False)
        except httpx.TransportError:
            return 0, {}
        return reply.status_code, reply.json()

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)

    def _lease(self) -> tuple[Lease, list[Instance]]:
        with opened(self.url) as store:
            return Leases(store).read()

    def leader(self) -> str | None:
        lease, _ = self._lease()
        return lease.holder if lease.live else None

    def isolated(self) -> set[str]:
        return {i.name for i in self._lease()[1] if i.isolated}

    def heartbeats(self) -> set[str]:
        return {i.name for i in self._lease()[1]}


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


def test_kill_9_of_the_leader_another_completes_the_failback(world: World) -> None:
    world.policy = {"failback": "auto", "failback_after": 1.0, "min_dwell": 0.5}
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: views_of(cluster, "a") == dict.fromkeys(NAMES, "up"), 15, "a up everywhere")
        world.sims["a"].set(Behaviour.REFUSE)
        poll(lambda: on(world, "b"), 20, "failover")
        leader = cluster.leader()
        assert leader is not None
        # The primary is back; the leader dies before it can fail back.
        world.sims["a"].set(Behaviour.OK)
        cluster.procs[leader].kill()
        cluster.procs[leader].wait(timeout=10)
        died = time.monotonic()
        poll(lambda: on(world, "a"), 20, "failback by the new leader")
        took = time.monotonic() - died
        successor = cluster.leader()
        assert successor not in (None, leader)
        assert world.updates() == 2
        # lease_ttl, then rise and failback_after, then the switch (with slack for load).
        assert took < TTL + 1.0 + INTERVAL + 3.0, took


def switches(url: str) -> list[tuple[str, str]]:
    with opened(url) as store:
        return [(s.status, s.to_endpoint) for s in SwitchLog(store).switches(GROUP)]


@pytest.mark.parametrize("landed", [False, True])
def test_a_new_leader_closes_the_switch_a_dead_leader_left_open(world: World, landed: bool) -> None:
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: views_of(cluster, "a") == dict.fromkeys(NAMES, "up"), 15, "a up everywhere")
        leader = cluster.leader()
        assert leader is not None
        world.convai.hang_next("update")  # held: no answer, nothing applied
        world.sims["a"].set(Behaviour.REFUSE)
        poll(lambda: len(world.convai.calls_of("update")) == 1, 20, "update held by Convai")
        assert switches(cluster.url) == [("intent", "b")]
        cluster.procs[leader].kill()  # between intent and confirmation
        cluster.procs[leader].wait(timeout=10)
        if landed:
            # The update reached Convai but its answer died with the leader.
            world.update_behind_our_back("b")
        before = world.updates()
        poll(
            lambda: any(s == "confirmed" for s, _ in switches(cluster.url)),
            20,
            "the new leader closes the switch",
        )
        time.sleep(2 * TTL)  # a double switch would show up within a few ticks
        successor = cluster.leader()
        assert successor not in (None, leader)
        statuses = switches(cluster.url)
        # Read from Convai's list, as a restart does: applied, or abandoned and redone.
        assert statuses[0] == ("confirmed" if landed else "abandoned", "b")
        assert [s for s in statuses if s[0] == "confirmed"] == [("confirmed", "b")]
        assert on(world, "b")
        assert world.updates() - before == (0 if landed else 1)


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


def views_of(cluster: Cluster, endpoint: str) -> dict[str, str]:
    """Each vantage's stored view of one endpoint of the group."""
    with opened(cluster.url) as store:
        seen = store.vantage_health().get(("my-turbo", endpoint), {})
    return {name: state.health.value for name, state in seen.items()}


def status_of(cluster: Cluster) -> dict[str, Any]:
    shown = subprocess.run(
        [sys.executable, "-m", "monitor", "status", "--json", "-c", str(cluster.configs[0])],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def test_one_vantages_bad_path_switches_nothing_a_majority_does(world: World) -> None:
    # A vote is fresh for two intervals: 2 s here, so a loaded machine does not make the
    # followers' views stale and leave the leader's alone to count.
    world.policy = {**world.policy, "interval": 1.0}
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: cluster.leader() is not None, 10, "a leader")
        poll(lambda: views_of(cluster, "a") == dict.fromkeys(NAMES, "up"), 15, "a up everywhere")
        leader = cluster.leader()
        assert leader is not None
        others = [n for n in NAMES if n != leader]
        # The leader's own path to the primary breaks (the hardest case: the instance
        # that acts is the one that sees the outage); the other two see it serve.
        world.sims["a"].set_for(leader, Behaviour.HTTP_503)
        poll(lambda: views_of(cluster, "a").get(leader) == "down", 15, "the leader's view")
        time.sleep(6 * INTERVAL)  # fall, the checks before a switch, several decisions
        assert world.updates() == 0
        assert on(world, "a")
        a = status_of(cluster)["groups"][0]["endpoints"][0]
        assert a["health"] == "up"
        assert {n: v["health"] for n, v in a["vantages"].items()} == {
            leader: "down",
            others[0]: "up",
            others[1]: "up",
        }
        assert a["quorum"] == {"needed": 2, "counted": 3, "down": 1, "up": 2}
        # The leader's /metrics has every vantage's view.
        metrics = httpx.get(f"http://{cluster.listen[leader]}/metrics", trust_env=False).text
        for name, value in ((leader, "0.0"), (others[0], "1.0"), (others[1], "1.0")):
            line = (
                f'convai_monitor_vantage_endpoint_up{{endpoint="a",group="{GROUP}",'
                f'vantage="{name}"}} {value}'
            )
            assert line in metrics
        assert "convai_monitor_leader 1.0" in metrics
        explained = subprocess.run(
            [sys.executable, "-m", "monitor", "explain", "-c", str(cluster.configs[0]), GROUP],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{leader} down (leader)" in explained
        assert "1 of 3 counted see it down, 2 needed" in explained
        # A second vantage loses it too: a real outage, seen by a majority.
        world.sims["a"].set_for(others[0], Behaviour.REFUSE)
        poll(lambda: on(world, "b"), 20, "failover on the majority's word")
        time.sleep(2 * INTERVAL)
        assert world.updates() == 1
        assert "switch_started" in cluster.logs[leader].read_text()


def events(cluster: Cluster) -> list[str]:
    with opened(cluster.url) as store:
        return [e.kind for e in SwitchLog(store).history(None, 0)]


def test_a_standby_down_on_one_vantages_path_pages_nobody(world: World) -> None:
    world.policy = {**world.policy, "interval": 1.0}  # fresh for 2 s, as above
    with ExitStack() as stack:
        cluster = Cluster(world, stack)
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: views_of(cluster, "b") == dict.fromkeys(NAMES, "up"), 15, "b up everywhere")
        leader = cluster.leader()
        assert leader is not None
        # The leader's own path to the fallback breaks; the other two see it serve.
        world.sims["b"].set_for(leader, Behaviour.HTTP_503)
        poll(lambda: views_of(cluster, "b").get(leader) == "down", 15, "the leader's view")
        time.sleep(6 * INTERVAL)
        assert "endpoint_down" not in events(cluster)
        world.sims["b"].set_for(leader, None)
        poll(lambda: views_of(cluster, "b").get(leader) == "up", 15, "the leader's view back")
        time.sleep(4 * INTERVAL)
        assert not {"endpoint_down", "endpoint_up"} & set(events(cluster))
        # The fallback really breaks, for everybody: on-call hears of it, once.
        world.sims["b"].set(Behaviour.HTTP_503)
        poll(lambda: "endpoint_down" in events(cluster), 20, "the notice about b")
        time.sleep(4 * INTERVAL)
        assert events(cluster).count("endpoint_down") == 1
        assert world.updates() == 0


def test_an_isolated_vantage_is_not_counted(world: World) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    world.policy = {**world.policy, "interval": 1.0}  # fresh for 2 s, as above
    with ExitStack() as stack:
        # north reaches neither Convai (nothing listens at its Convai URL) nor, soon, the
        # endpoints; it starts last so that it is not the first leader.
        cluster = Cluster(
            world,
            stack,
            names=("east", "west"),
            overrides={"north": {"convai": {"base_url": dead}}},
        )
        poll(lambda: cluster.leader() is not None, 30, "a leader")
        cluster.add("north")
        poll(lambda: cluster.heartbeats() == set(NAMES), 30, "three instances up")
        poll(lambda: len(views_of(cluster, "a")) == 3, 15, "three views of a")
        leader = cluster.leader()
        assert leader in ("east", "west")
        other = "west" if leader == "east" else "east"
        for sim in world.sims.values():
            sim.set_for("north", Behaviour.REFUSE)
        poll(lambda: cluster.isolated() == {"north"}, 20, "north isolated")
        code, checks = cluster.ready("north")
        assert (code, checks["isolated"], checks["ok"]) == (503, True, False)
        assert "vantage_isolated" in cluster.logs["north"].read_text()
        north = httpx.get(f"http://{cluster.listen['north']}/metrics", trust_env=False).text
        assert "convai_monitor_isolated 1.0" in north
        assert "convai_monitor_leader 0.0" in north
        assert cluster.ready(leader)[1]["isolated"] is False
        # The follower sees the primary down, north (cut off) sees everything down:
        # counted, that would be two of three; not counted, it is one of two.
        world.sims["a"].set_for(other, Behaviour.REFUSE)
        poll(lambda: views_of(cluster, "a").get(other) == "down", 15, "the follower's view")
        time.sleep(6 * INTERVAL)
        assert world.updates() == 0
        a = status_of(cluster)["groups"][0]["endpoints"][0]
        assert a["vantages"]["north"]["vote"] == "isolated"
        assert a["quorum"]["counted"] == 2
        shown = subprocess.run(
            [sys.executable, "-m", "monitor", "status", "-c", str(cluster.configs[0])],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert "(isolated: its view is not counted)" in shown
        assert f"{GROUP}/a: " in shown
        assert "north down (isolated)" in shown
        assert "1 of 2 see it down, 2 needed" in shown
        # north's network comes back: it counts again and says so.
        for sim in world.sims.values():
            sim.set_for("north", None)
        poll(lambda: cluster.isolated() == set(), 20, "north back")
        assert "isolation_ended" in cluster.logs["north"].read_text()


def results_between(url: str, start: float, end: float) -> dict[str, int]:
    """Probe results stored per vantage, probed between two times."""
    with opened(url) as store, store.session() as session:
        rows = session.execute(
            select(ResultRow.vantage, func.count())
            .where(ResultRow.at > start, ResultRow.at < end)
            .group_by(ResultRow.vantage)
        )
        return {str(v): int(n) for v, n in rows}


def test_database_outage_switches_nothing_and_loses_no_results(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory
) -> None:
    try:
        server = LocalPostgres().start()  # its own server: this test stops it
    except PostgresUnavailable as exc:
        pytest.fail(f"this test needs PostgreSQL: {exc}", pytrace=False)
    names = ("east", "west")
    with ExitStack() as stack:
        stack.callback(server.stop)
        url = server.create_database("outage")
        world = make_world(tmp_path, convai, endpoints, names=("a", "b"))
        world.policy = {"failback": "manual"}
        world.extra = {"storage": {"url": url}, "ha": {"lease_ttl": TTL}}
        cluster = Cluster(world, stack, names=names)
        poll(lambda: cluster.leader() is not None, 30, "a leader")
        poll(lambda: all(cluster.ready(n)[0] == 200 for n in names), 20, "both ready")
        server.halt()
        halted = time.time()
        world.sims["a"].set(Behaviour.REFUSE)  # an outage nobody may act on now
        poll(
            lambda: all(cluster.ready(n)[1].get("database_reachable") is False for n in names),
            20,
            "not ready without the database",
        )
        assert all(cluster.ready(n)[0] == 503 for n in names)
        probed = world.sims["b"].requests
        time.sleep(4 * TTL)
        # Both keep probing (every INTERVAL each), nothing is switched.
        assert world.sims["b"].requests >= probed + 2 * int(4 * TTL / INTERVAL) - 4
        assert world.updates() == 0
        assert on(world, "a")
        for name in names:
            text = cluster.logs[name].read_text().splitlines()
            lines = [json.loads(x) for x in text if x.startswith("{")]
            errors = {x["event"] for x in lines if x.get("level") == "error"}
            assert {"lease_unreachable", "store_write_failed"} <= errors, errors
        server.resume()
        resumed = time.time()
        poll(lambda: all(cluster.ready(n)[1].get("database_reachable") for n in names), 20, "back")
        # The outage is acted on once a lease can be proven again, exactly once.
        poll(lambda: on(world, "b"), 20, "failover after the database returns")
        time.sleep(2 * INTERVAL)
        assert world.updates() == 1
        # What both probed while the database was away was buffered and written since.
        kept = results_between(url, halted + 0.5, resumed - 0.5)
        assert set(kept) == set(names), kept
        assert all(n >= 2 * int((resumed - halted - 1) / INTERVAL) - 4 for n in kept.values())
