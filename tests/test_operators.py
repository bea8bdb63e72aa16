"""What operators do to a running daemon: reload a changed config, rotate keys, pin, hold.

The real daemon against real local endpoints, a local Convai API and a local alert
receiver; each test failed on the daemon before the change it covers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.app import open_store
from monitor.config import Config, load_config
from monitor.convai import ConvaiClient
from monitor.domain.health import Health
from monitor.ops import manual_failover
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from monitor.state import State
from monitor.store.switching import EventRecord, SwitchLog, SwitchRecord
from tests.conftest import CONVAI_KEY, MODEL, config_dict, write_config
from tests.harness import GROUP, World, make_world, running, settled, wait_for

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory, receiver: AlertReceiver) -> World:
    w = make_world(tmp_path, convai, endpoints)
    w.policy = {"failback_after": 0.6, "min_dwell": 0.3}
    w.extra = {
        "alerts": {
            "targets": [
                {"url": receiver.url("all"), "min_severity": "info"},
                {"url": receiver.url("warn"), "min_severity": "warning"},
                {"url": receiver.url("pager"), "min_severity": "critical"},
            ],
            "reminder_interval": 3600,
        }
    }
    return w


def titles(receiver: AlertReceiver, path: str) -> list[str]:
    return [r.title for r in receiver.received if r.path == f"/{path}"]


def history(config: Config, group: str | None = GROUP) -> list[EventRecord]:
    store = open_store(config, migrate=False)
    try:
        return SwitchLog(store).history(group, 0)
    finally:
        store.close()


def switches(config: Config) -> list[SwitchRecord]:
    store = open_store(config, migrate=False)
    try:
        return SwitchLog(store).switches(GROUP)
    finally:
        store.close()


def kinds(config: Config, group: str | None = GROUP) -> list[str]:
    return [e.kind for e in history(config, group)]


def updates(world: World) -> list[dict[str, Any]]:
    return [c.body for c in world.convai.calls_of("update") if c.status == 200]


def db_text(world: World) -> str:
    """Everything the database holds, as text (to look for secrets)."""
    return (world.tmp_path / "monitor.db").read_bytes().decode("latin-1")


async def reload(daemon: Any, world: World) -> None:
    world.config_path()
    await daemon.reload()


# --- 1. reload that changes or removes the active endpoint ------------------------------


async def test_reload_with_a_new_base_url_rehomes_convai(world: World, endpoints: Factory) -> None:
    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        old = world.sims["a"]
        new = endpoints(api_key=world.keys["a"])
        world.sims["a"] = new
        await reload(daemon, world)
        await wait_for(lambda: world.registered()["base_url"] == new.base_url, what="rehome")
        assert new.requests >= 1  # pre-flighted before Convai was told
        # The old address dies later: it is nobody's endpoint any more, nothing happens.
        old.set(Behaviour.REFUSE)
        seen = new.requests
        await wait_for(lambda: new.requests >= seen + 4, what="more probes of the new URL")
    assert world.registered()["api_key"] == world.keys["a"]
    assert [u["base_url"] for u in updates(world)] == [new.base_url]
    rows = switches(config)
    assert [(s.kind, s.from_endpoint, s.to_endpoint, s.status) for s in rows] == [
        ("rehome", "a", "a", "confirmed")
    ]
    assert "rehome" in kinds(config)
    assert "failover" not in kinds(config)


async def test_reload_removing_the_active_endpoint_fails_over(world: World) -> None:
    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        del world.sims["a"]
        await reload(daemon, world)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
    assert world.registered()["api_key"] == world.keys["b"]
    failover = next(e for e in history(config) if e.kind == "failover")
    assert "a was removed from the config" in failover.message


# --- unmanaged: Convai points at no configured endpoint ----------------------------------


async def test_unconfigured_url_is_unmanaged_paged_and_explained(
    world: World, receiver: AlertReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        world.convai.move(GROUP, "http://127.0.0.1:9/v1")  # someone, by hand
        assert daemon.engine is not None
        await daemon.engine.sync()
        await daemon.engine.sync()  # a lasting condition is recorded (and paged) once
        await wait_for(lambda: any("unmanaged" in t for t in titles(receiver, "warn")), what="page")
        command = f"convai-monitor failover -c {path} {GROUP} --to a"

        status = await asyncio.to_thread(main, ["status", "-c", str(path)])
        out = capsys.readouterr().out
        assert status == 0
        assert "unmanaged: Convai points at http://127.0.0.1:9/v1" in out
        assert command in out
        await asyncio.to_thread(main, ["explain", "-c", str(path), GROUP])
        assert command in capsys.readouterr().out

        # The command it prints brings the group back under management.
        code = await asyncio.to_thread(main, [*command.split()[1:], "--hold", "0"])
        assert code == 0
        await daemon.engine.sync()
        await asyncio.to_thread(main, ["status", "-c", str(path)])
        assert "unmanaged" not in capsys.readouterr().out
    assert world.registered()["base_url"] == world.sims["a"].base_url
    assert kinds(config).count("unmanaged") == 1
    unmanaged = next(e for e in history(config) if e.kind == "unmanaged")
    assert unmanaged.details == {"command": command}
    assert titles(receiver, "pager") == []  # a warning, not a page in the night


# --- 2. key rotation ---------------------------------------------------------------------


async def test_reloaded_key_is_rotated_in_convai(world: World) -> None:
    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        rotated = "sk-canary-a-rotated-" + "y" * 20
        world.sims["a"].api_key = rotated  # the provider now wants the new key only
        world.keys["a"] = rotated
        await reload(daemon, world)
        await wait_for(lambda: world.registered()["api_key"] == rotated, what="rotation")
        # A standby's new key needs no call to Convai.
        world.keys["b"] = world.sims["b"].api_key = "sk-canary-b-rotated-" + "z" * 20
        await reload(daemon, world)
        seen = world.sims["b"].requests
        await wait_for(lambda: world.sims["b"].requests >= seen + 3, what="b probed")
    assert world.registered()["base_url"] == world.sims["a"].base_url
    assert updates(world) == [{"model_group_name": GROUP, "api_key": rotated}]
    rotation = next(e for e in history(config) if e.kind == "key_rotation")
    assert rotation.message.startswith("key_rotation a -> a")
    store = open_store(config, migrate=False)
    try:
        explained = "\n".join(State(config, store).explain(GROUP, time.time()))
    finally:
        store.close()
    assert "Convai was given a's new api_key" in explained
    assert rotated not in explained
    stored = db_text(world)
    assert rotated not in stored  # the keys themselves are never stored
    assert world.keys["b"] not in stored
    assert "failover" not in kinds(config)


async def test_key_file_rewritten_in_place_is_rotated_at_sync(
    tmp_path: Path, convai: ConvaiSim, endpoints: Factory
) -> None:
    key_file = tmp_path / "a.key"
    key_file.write_text("sk-canary-file-" + "k" * 24 + "\n")
    a = endpoints(api_key="sk-canary-file-" + "k" * 24)
    b = endpoints(api_key="sk-canary-b-" + "b" * 24)
    convai.seed(GROUP, MODEL, "sk-canary-file-" + "k" * 24, base_url=a.base_url)
    group = {
        "model_group_name": GROUP,
        "model_name": MODEL,
        "endpoints": [
            {"name": "a", "base_url": a.base_url, "api_key_file": str(key_file)},
            {"name": "b", "base_url": b.base_url, "api_key": "sk-canary-b-" + "b" * 24},
        ],
    }
    path = write_config(tmp_path, config_dict(tmp_path, [group], convai.base_url))
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await wait_for(lambda: a.requests >= 3 and b.requests >= 3, what="judged")
        new = "sk-canary-file-new-" + "n" * 20
        key_file.write_text(new + "\n")
        a.api_key = new
        assert daemon.engine is not None
        await daemon.engine.sync()
        await wait_for(lambda: (convai.record(GROUP) or {}).get("api_key") == new, what="rotation")
    assert [c.body for c in convai.calls_of("update")] == [
        {"model_group_name": GROUP, "api_key": new}
    ]
    assert "key_rotation" in kinds(config)


async def test_a_key_convai_did_not_take_is_not_recorded_as_rotated(world: World) -> None:
    # `list` never shows keys: `updated_fields` is the only proof the key changed.
    path = world.config_path()
    config = load_config(path)
    world.convai.drop_next_field("api_key")
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        rotated = "sk-canary-a-rotated-" + "y" * 20
        world.keys["a"] = world.sims["a"].api_key = rotated
        await reload(daemon, world)
        await wait_for(lambda: "failover_failed" in kinds(config), what="rotation failed")
        await wait_for(lambda: world.registered()["api_key"] == rotated, limit=10, what="retry")
    rows = switches(config)
    assert [(s.kind, s.status) for s in rows] == [
        ("key_rotation", "failed"),
        ("key_rotation", "confirmed"),
    ]
    assert "did not confirm the new api_key" in (rows[0].error or "")


# --- 3./4. pins ----------------------------------------------------------------------------


async def test_a_pin_set_during_a_switch_stops_it(world: World) -> None:
    # The evaluation reads the group before the pin; the pre-flight of b takes a second;
    # the operator pins meanwhile. The compare-and-set must refuse the switch.
    world.policy.update(interval=1.0, timeout=0.9)
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        states = daemon.monitor.states
        world.sims["b"].set(Behaviour.OK, delay=0.8)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: states[(GROUP, "a")].health is Health.DOWN, what="a down")
        await asyncio.sleep(0.15)  # the evaluation is now waiting on b's pre-flight
        store = open_store(config, migrate=False)
        try:
            SwitchLog(store).pin(GROUP, "a", time.time() + 3600, time.time())
        finally:
            store.close()
        await wait_for(lambda: "pinned_down" in kinds(config), what="pinned down")
        await asyncio.sleep(1.5)
    assert world.updates() == 0
    assert world.registered()["base_url"] == world.sims["a"].base_url


async def test_pinned_to_a_down_endpoint_pages_once_and_resolves(
    world: World, receiver: AlertReceiver
) -> None:
    world.extra["alerts"]["reminder_interval"] = 0.4
    config = world.config()
    store = open_store(config)
    try:
        SwitchLog(store).pin(GROUP, "a", time.time() + 3600, time.time())
    finally:
        store.close()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: len([t for t in titles(receiver, "pager") if "still unresolved" in t]) >= 2,
            what="reminders",
        )
        world.sims["a"].set(Behaviour.OK)
        await wait_for(
            lambda: any("RESOLVED" in t for t in titles(receiver, "pager")), what="resolved"
        )
    paged = titles(receiver, "pager")
    assert paged[0] == f"[CRITICAL] {GROUP}: pinned to a down endpoint"
    assert paged.count(paged[0]) == 1
    assert world.updates() == 0
    event = next(e for e in history(config) if e.kind == "pinned_down")
    assert "unpin" in event.message
    assert "--to b" in event.message


async def test_pin_ending_resolves_and_the_usual_rules_resume(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        store = open_store(config, migrate=False)
        try:
            SwitchLog(store).pin(GROUP, "a", time.time() + 3600, time.time())
            world.sims["a"].set(Behaviour.REFUSE)
            await wait_for(lambda: "pinned_down" in kinds(config), what="pinned down")
            SwitchLog(store).unpin(GROUP, time.time())
        finally:
            store.close()
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
    events = kinds(config)
    assert events.index("recovered") < events.index("failover")


# --- 5. manual switches hold ---------------------------------------------------------------


async def manual(world: World, config: Config, to: str, hold: float | None) -> None:
    store = open_store(config, migrate=False)
    try:
        async with ConvaiClient(world.convai.base_url, CONVAI_KEY) as client:
            result = await manual_failover(config, store, client, GROUP, to, force=False, hold=hold)
    finally:
        store.close()
    assert result.outcome is not None
    assert result.outcome.status == "confirmed"


async def test_manual_failover_holds_until_unpinned(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        await manual(world, config, "b", hold=3600)
        # failback_after is 0.6 s: without the hold the group would be back on a by now.
        await asyncio.sleep(3.0)
        assert world.registered()["base_url"] == world.sims["b"].base_url
        store = open_store(config, migrate=False)
        try:
            SwitchLog(store).unpin(GROUP, time.time())
        finally:
            store.close()
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["a"].base_url, what="failback"
        )
    events = kinds(config)
    assert events.index("held") < events.index("unpinned") < events.index("failback")
    held = next(e for e in history(config) if e.kind == "held")
    assert held.message.startswith("held on b for 1h")


async def test_manual_failover_with_no_hold_fails_back_as_usual(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        await manual(world, config, "b", hold=None)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["a"].base_url, what="failback"
        )
    assert "held" not in kinds(config)


# --- the smaller list ----------------------------------------------------------------------


async def test_group_added_by_reload_but_unregistered_is_recorded_once(world: World) -> None:
    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        data = config_dict(
            world.tmp_path,
            [
                {
                    "model_group_name": GROUP,
                    "model_name": MODEL,
                    "endpoints": [
                        {"name": n, "base_url": s.base_url, "api_key": world.keys[n]}
                        for n, s in world.sims.items()
                    ],
                },
                {
                    "model_group_name": "newcomer",
                    "model_name": MODEL,
                    "endpoints": [
                        {
                            "name": "x",
                            "base_url": world.sims["b"].base_url,
                            "api_key": world.keys["b"],
                        }
                    ],
                },
            ],
            world.convai.base_url,
            **world.policy,
        )
        data.update(world.extra)
        write_config(world.tmp_path, data)
        await daemon.reload()
        assert daemon.engine is not None
        for _ in range(3):
            await daemon.engine.sync()
    assert kinds(config, "newcomer") == ["not_registered"]


async def test_retry_backoff_starts_afresh_after_an_incident_that_ended(world: World) -> None:
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.engine is not None
        actor = daemon.engine.evaluator.actor
        # An earlier incident's failed switches left the backoff at 64 s.
        actor.retry[GROUP] = (0.0, 64.0)
        # Set from outside, so also undo what the failed switches' evaluations would have:
        # a group with a retry pending is never skipped as steady.
        daemon.engine.evaluator.steady.pop(GROUP, None)
        await asyncio.sleep(0.5)  # evaluations of a healthy group: that incident is over
        world.convai.fail_next("update", 404, times=1, message="Model not found")
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: "failover_failed" in kinds(config), what="failed switch")
        # The retry comes after 2 s, not 120 s.
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url,
            limit=6,
            what="retry",
        )


async def test_isolation_ends_when_anything_answers(world: World) -> None:
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.engine is not None
        assert daemon.monitor is not None
        isolation = daemon.engine.evaluator.isolation
        world.convai.refuse()
        for sim in world.sims.values():
            sim.set(Behaviour.REFUSE)
        await wait_for(lambda: isolation.isolated, limit=10, what="isolated")
        # The endpoints come back before Convai does: the active one answers first, so no
        # group is all-down to notice.
        for sim in world.sims.values():
            sim.set(Behaviour.OK)
        await wait_for(
            lambda: (
                daemon.monitor is not None
                and daemon.monitor.states[(GROUP, "a")].health is Health.UP
            ),
            what="a up",
        )
        world.convai.restore()
        assert not isolation.isolated


async def test_drift_backs_off(world: World) -> None:
    # Convai no longer lists the group while its endpoint is down: each evaluation finds
    # "drift" at the check before update. That must not cost two list calls a tick.
    config = world.config()
    async with running(config):
        await settled(world)
        async with ConvaiClient(world.convai.base_url, CONVAI_KEY) as client:
            await client.deregister(GROUP)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: len(world.convai.calls_of("list")) >= 3, what="first drift")
        before = len(world.convai.calls_of("list"))
        await asyncio.sleep(4.0)
        lists = len(world.convai.calls_of("list")) - before
    # Backoff 2 s then 4 s: a few calls, where every 0.1 s tick used to cost two.
    assert lists <= 6, lists


async def test_convai_rejecting_our_key_is_paged_once(
    world: World, receiver: AlertReceiver
) -> None:
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.engine is not None
        world.convai.fail_next("list", 401, times=2)
        await daemon.engine.sync()
        await daemon.engine.sync()
        await wait_for(lambda: any("rejects" in t for t in titles(receiver, "pager")), what="page")
        await daemon.engine.sync()
        await wait_for(
            lambda: any("RESOLVED" in t for t in titles(receiver, "pager")), what="resolved"
        )
    assert kinds(config, "convai") == ["convai_auth_failed", "convai_auth_ok"]


async def test_a_failed_record_of_a_landed_switch_is_not_a_failed_switch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    confirm = SwitchLog.confirm_switch
    calls = {"n": 0}

    def flaky_confirm(self: SwitchLog, *args: Any, **kwargs: Any) -> SwitchRecord:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk I/O error")  # the database, just once
        return confirm(self, *args, **kwargs)

    monkeypatch.setattr(SwitchLog, "confirm_switch", flaky_confirm)
    config = world.config()
    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: "failover" in kinds(config), limit=10, what="switch recorded")
    assert world.updates() == 1
    assert "failover_failed" not in kinds(config)
    assert [(s.kind, s.status) for s in switches(config)] == [("failover", "confirmed")]


async def test_an_update_read_back_different_is_not_sent_again(world: World) -> None:
    config = world.config()
    async with running(config):
        await settled(world)
        # Someone moves the group to c right after our update lands.
        world.convai.move_after_next_update(GROUP, world.sims["c"].base_url)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: "drift" in kinds(config), limit=10, what="drift adopted")
    assert world.updates() == 1
    assert "failover_failed" not in kinds(config)
    assert world.registered()["base_url"] == world.sims["c"].base_url


async def test_old_urls_probes_do_not_judge_the_new_url(world: World, endpoints: Factory) -> None:
    path = world.config_path()
    config = load_config(path)
    async with running(config, config_path=str(path)) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        old = world.sims["b"]
        old.set(Behaviour.HTTP_500, delay=0.3)  # probes of the old URL are in flight, failing
        new = endpoints(api_key=world.keys["b"])
        world.sims["b"] = new
        seen: list[tuple[str, bool]] = []

        async def listen(target: Any, result: Any, state: Any, transition: Any) -> None:
            if target.endpoint == "b":
                seen.append((target.base_url, result.ok))

        await wait_for(lambda: old.requests >= 6, what="old URL failing")
        await reload(daemon, world)
        daemon.monitor.listeners.append(listen)
        await wait_for(lambda: new.requests >= 4, what="new URL probed")
        state = daemon.monitor.states[(GROUP, "b")]
    assert all(url == new.base_url for url, _ in seen), seen
    assert state.failures == 0


async def test_dry_run_register_registers_nothing(world: World) -> None:
    world.convai.reset()  # Convai knows no group
    config = world.config()
    async with running(config, dry_run=True, register=True):
        await settled(world)
    assert world.convai.calls_of("register") == []
    assert world.convai.record(GROUP) is None
    dry = [e for e in history(config) if e.kind == "dry_run"]
    assert dry
    assert "would register" in dry[0].message
