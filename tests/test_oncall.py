"""What on-call reads besides pages: the daemon's liveness in status and explain, logs
that say what changed (not every probe), and a reload that applies every section."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import monitor.runtime.monitor as monitor_module
from monitor.cli import main
from monitor.logs import setup_logging
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.state import DAEMON_STALE_AFTER, daemon_liveness
from tests.conftest import CONVAI_KEY
from tests.harness import (
    GROUP,
    World,
    daemon_process,
    free_port,
    make_world,
    poll,
    running,
    settled,
    wait_for,
)

Factory = Callable[..., EndpointSim]
NOW = 1_000_000.0


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


@pytest.mark.parametrize(
    ("beat", "running", "text"),
    [
        (None, False, "daemon has never run against this database"),
        ({"at": NOW - 3, "pid": 7}, True, "daemon running (pid 7, last seen 3 s ago)"),
        (
            {"at": NOW - DAEMON_STALE_AFTER - 25, "pid": 7},
            False,
            f"daemon not running (last seen {DAEMON_STALE_AFTER + 25:.0f} s ago)",
        ),
        ({"at": NOW - 2, "pid": 7, "stopped": True}, False, "daemon not running (stopped 2 s ago)"),
    ],
)
def test_daemon_liveness(beat: dict[str, Any] | None, running: bool, text: str) -> None:
    found = daemon_liveness(beat, NOW)
    assert (found["running"], found["text"]) == (running, text)


def status(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["status", "-c", str(path), *extra])
    return code, capsys.readouterr().out


def test_status_and_explain_say_when_the_daemon_stopped(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    path = world.config_path()
    with daemon_process(path, world.tmp_path / "d.log") as proc:

        def beating() -> bool:
            code, out = status(path, capsys, "--json")
            return code == 0 and bool(json.loads(out)["daemon"]["running"])

        poll(beating, 20, "a heartbeat")
        code, out = status(path, capsys)
        assert code == 0
        assert out.splitlines()[0].startswith("daemon running (pid ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    code, out = status(path, capsys)
    assert code == 1  # a monitoring check of the monitor sees it is gone
    assert out.splitlines()[0].startswith("WARNING: daemon not running (stopped ")
    assert main(["explain", "-c", str(path), GROUP]) == 0
    assert capsys.readouterr().out.startswith("Note: daemon not running (stopped ")


async def test_a_down_standby_is_logged_when_it_changes_not_every_probe(world: World) -> None:
    world.sims["b"].set(Behaviour.MODEL_NOT_FOUND)
    logs = io.StringIO()
    config = world.config()
    async with running(config):
        setup_logging("info", stream=logs, json=True)
        await wait_for(lambda: world.sims["b"].requests >= 15, limit=15, what="many probes of b")
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    failed_b = [x for x in lines if x["event"] == "probe_failed" and x.get("endpoint") == "b"]
    # Until it is down, and then nothing more while it fails the same way (a line a
    # minute with a count would follow).
    assert 1 <= len(failed_b) <= 3, failed_b
    assert any(x["event"] == "endpoint_down" and x.get("endpoint") == "b" for x in lines)


async def test_a_failover_logs_as_an_error_a_failback_as_info(world: World) -> None:
    world.policy = {"failback_after": 0.3, "min_dwell": 0.1}
    logs = io.StringIO()
    config = world.config()
    async with running(config):
        setup_logging("info", stream=logs, json=True)
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: "failover_completed" in logs.getvalue(), what="failover")
        world.sims["a"].set(Behaviour.OK)
        await wait_for(lambda: "failback_completed" in logs.getvalue(), what="failback")
    levels = {
        x["event"]: x["level"]
        for x in (json.loads(line) for line in logs.getvalue().splitlines() if line[:1] == "{")
    }
    assert levels["failover_completed"] == "error"
    assert levels["failback_completed"] == "info"
    assert levels["endpoint_up"] == "info"


async def test_reload_applies_listen_alerts_and_reminders_and_names_what_needs_a_restart(
    world: World,
) -> None:
    first, second = free_port(), free_port()
    world.extra = {"server": {"listen": f"127.0.0.1:{first}"}}
    path = world.config_path()
    config = world.config()
    logs = io.StringIO()
    async with running(config, config_path=str(path)) as daemon:
        setup_logging("info", stream=logs, json=True)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{first}/healthz")).status_code == 200
            data = yaml.safe_load(path.read_text())
            data["server"]["listen"] = f"127.0.0.1:{second}"
            data["alerts"] = {
                "targets": [{"url": "json://127.0.0.1:9/hook", "name": "hook"}],
                "reminder_interval": "10m",
            }
            data["storage"]["url"] = data["storage"]["url"].replace("monitor.db", "other.db")
            path.write_text(yaml.safe_dump(data))
            await daemon.reload()
        async with httpx.AsyncClient() as client:  # no connection kept from before
            assert (await client.get(f"http://127.0.0.1:{second}/healthz")).status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{first}/healthz")
        assert daemon.deliverer is not None
        assert daemon.deliverer.config.reminder_interval == 600.0
        reminders = daemon.scheduler.get_job("reminders")
        assert reminders is not None
        assert reminders.trigger.interval.total_seconds() == 60.0
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    reloaded = next(x for x in lines if x["event"] == "config_reloaded")
    assert reloaded["sections"] == ["storage", "alerts", "server"]
    restart = next(x for x in lines if x["event"] == "config_reload_needs_restart")
    assert restart["settings"] == ["storage.url"]
    await asyncio.sleep(0)


def json_lines(logs: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]


async def test_log_counts_repeats_and_tells_transitions_and_decisions_at_their_level(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby that stays broken is one line a period with a count of what was not
    logged; every transition and decision is a line, at the level its meaning calls for:
    a failover, a failed switch, Convai unreachable are errors; a failback and an endpoint
    coming up are info."""
    period = 1.0
    monkeypatch.setattr(monitor_module, "REPEAT_LOG_EVERY", period)
    world = make_world(tmp_path, convai, endpoints, names=("a", "b", "c"))
    world.policy = {"failback_after": 0.3, "min_dwell": 0.1}
    world.extra = {
        "convai": {
            "api_key": CONVAI_KEY,
            "base_url": convai.base_url,
            "timeout": 0.5,
            "retry_budget": 0.5,
            "sync_interval": 0.5,
            "unreachable_grace": 1.0,
        }
    }
    c = world.sims["c"]
    c.set(Behaviour.MODEL_NOT_FOUND)
    logs = io.StringIO()

    def seen(event: str, **fields: str) -> bool:
        return any(
            x["event"] == event and all(x.get(k) == v for k, v in fields.items())
            for x in json_lines(logs)
        )

    async with running(world.config()):
        setup_logging("info", stream=logs, json=True)
        await settled(world)
        await wait_for(lambda: seen("endpoint_down", endpoint="c"), what="c down")
        down_at = time.monotonic()
        await asyncio.sleep(3 * period + 0.2)  # three periods of c failing the same way
        world.convai.refuse()
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: seen("switch_failed"), what="a failover that cannot reach Convai")
        await wait_for(lambda: seen("convai_unreachable"), what="Convai unreachable")
        world.convai.restore()
        await wait_for(lambda: seen("failover_completed"), limit=15, what="the failover")
        world.sims["a"].set(Behaviour.OK)
        await wait_for(lambda: seen("failback_completed"), limit=15, what="the failback")
        await wait_for(lambda: seen("convai_reachable"), what="Convai reachable")
        down_for = time.monotonic() - down_at
    lines = json_lines(logs)
    of_c = [x for x in lines if x["event"] == "probe_failed" and x.get("endpoint") == "c"]
    repeats = [x for x in of_c if x.get("repeated")]
    assert repeats, of_c
    # Each repeat line stands for the failures not logged since the previous line: one
    # period's worth (c is probed every 0.5 s, every 0.1 s while its group has no
    # switch to make that works).
    for line in repeats:
        assert line["level"] == "info"
        assert line["outcome"] == "model_not_found"
        assert line["over_s"] >= period
        assert 1 <= line["repeated"] <= (line["over_s"] + 0.5) / 0.1
    # Nothing lost, nothing counted twice: logged lines plus counted repeats make up every
    # failed probe of c, but for those of the last period (counted, not yet logged).
    told = len(of_c) + sum(x.get("repeated", 0) for x in of_c)
    assert told <= c.requests
    assert c.requests - told <= period / 0.1 + 2
    # Until it was down (fall is 3), then one line a period however often it was probed.
    assert len(of_c) <= 3 + down_for / period + 1, (len(of_c), c.requests)

    def level(event: str, **fields: str) -> set[str]:
        return {
            x["level"]
            for x in lines
            if x["event"] == event and all(x.get(k) == v for k, v in fields.items())
        }

    # Transitions: down and up, each once, at their level.
    assert level("endpoint_down", endpoint="c") == {"warning"}
    assert level("endpoint_down", endpoint="a") == {"warning"}
    assert level("endpoint_up", endpoint="a") == {"info"}
    # Decisions and what came of them.
    assert level("switch_failed") == {"error"}
    assert level("convai_unreachable") == {"error"}
    assert level("failover_completed") == {"error"}
    assert level("failback_completed") == {"info"}
    assert level("convai_reachable") == {"info"}
    assert level("switch_started") == {"info"}
