"""kill -9 between intent and confirmation: the next start reconciles, nothing doubles."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from monitor.app import open_store
from monitor.config import Config
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.store.switching import SwitchLog
from tests.harness import GROUP, World, daemon_process, make_world, poll

Factory = Callable[..., EndpointSim]


def switches(config: Config) -> list[tuple[str, str]]:
    store = open_store(config, migrate=False)
    try:
        return [(s.status, s.to_endpoint) for s in SwitchLog(store).switches(GROUP)]
    except OperationalError:  # the daemon has not created the tables yet
        return []
    finally:
        store.close()


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


@pytest.mark.parametrize("landed", [False, True])
def test_kill_9_between_intent_and_confirmation(world: World, landed: bool) -> None:
    path = world.config_path()
    config = world.config()
    log = world.tmp_path / "daemon.log"
    world.convai.hang_next("update")  # the first update is held: no answer, nothing applied
    world.sims["a"].set(Behaviour.REFUSE)
    with daemon_process(path, log) as proc:
        poll(lambda: ("intent", "b") in switches(config), 15, "intent")
        # Kill only once the update has reached Convai and is held there (the armed hang
        # consumed): killed earlier, the hang would catch this test's own update below.
        poll(lambda: len(world.convai.calls_of("update")) == 1, 15, "update held by Convai")
        assert [c.status for c in world.convai.calls_of("update")] == [None]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    assert world.registered()["base_url"] == world.sims["a"].base_url
    if landed:
        # The update reached Convai but the answer was lost with the process.
        world.update_behind_our_back("b")
    updates_before = len([c for c in world.convai.calls_of("update") if c.status == 200])
    with daemon_process(path, log) as proc:
        poll(lambda: any(s == "confirmed" for s, _ in switches(config)), 15, "confirmed switch")
        time.sleep(1.0)  # a double switch would show up within a few ticks
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    statuses = switches(config)
    assert statuses[0] == ("confirmed" if landed else "abandoned", "b")
    assert [s for s in statuses if s[0] == "confirmed"] == [("confirmed", "b")]
    assert world.registered()["base_url"] == world.sims["b"].base_url
    new_updates = (
        len([c for c in world.convai.calls_of("update") if c.status == 200]) - updates_before
    )
    assert new_updates == (0 if landed else 1)
    assert "Traceback" not in log.read_text()
