"""Alerts delivered for real through apprise to a local receiver."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.alerts.render import render
from monitor.cli import main
from monitor.domain.alerts import Effect, Rule, Severity, backoff, reminder_due, rule_for
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
    w.policy = {"failback_after": 0.6, "min_dwell": 0.3}
    w.extra = {
        "alerts": {
            "targets": [
                {"url": receiver.url("all"), "min_severity": "info"},
                {"url": receiver.url("pager"), "min_severity": "critical"},
            ],
            "reminder_interval": 3600,
        }
    }
    return w


def kinds(receiver: AlertReceiver, path: str) -> list[str]:
    return [r.title for r in receiver.received if r.path == f"/{path}"]


# --- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "severity", "effect"),
    [
        ("failover", Severity.CRITICAL, Effect.OPEN),
        ("failover_failed", Severity.CRITICAL, Effect.OPEN),
        ("all_down", Severity.CRITICAL, Effect.OPEN),
        ("isolated", Severity.CRITICAL, Effect.OPEN),
        ("flapping", Severity.CRITICAL, Effect.OPEN),
        ("endpoint_down", Severity.WARNING, Effect.ATTACH),
        ("auth_error", Severity.WARNING, Effect.ATTACH),
        ("drift", Severity.WARNING, Effect.ATTACH),
        ("primary_recovered", Severity.WARNING, Effect.ATTACH),
        ("failback", Severity.INFO, Effect.CLOSE),
        ("recovered", Severity.INFO, Effect.CLOSE),
    ],
)
def test_rules(kind: str, severity: Severity, effect: Effect) -> None:
    assert rule_for(kind) == Rule(severity, effect)


def test_unpaged_kinds_and_manual_return() -> None:
    assert rule_for("pinned") is None
    assert rule_for("manual") == Rule(Severity.INFO, Effect.ATTACH)
    assert rule_for("manual", {"to_primary": True}) == Rule(Severity.INFO, Effect.CLOSE)


def test_reminders_and_backoff() -> None:
    assert reminder_due(True, Severity.CRITICAL, 0.0, 1800.0, 1800.0)
    assert not reminder_due(True, Severity.CRITICAL, 0.0, 1799.0, 1800.0)
    assert not reminder_due(True, Severity.WARNING, 0.0, 9999.0, 1800.0)
    # Characters served by a healthy fallback: the incident waits without reminders.
    assert not reminder_due(True, Severity.CRITICAL, 0.0, 9999.0, 1800.0, serving=True)
    assert not reminder_due(False, Severity.CRITICAL, 0.0, 9999.0, 1800.0)
    assert [backoff(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 120.0]


def test_render_is_redacted_and_says_what_happened() -> None:
    from monitor.redact import redactor

    redactor.register("sk-very-secret-key-1234")
    title, body = render(
        kind="failover",
        group="g",
        message="failover a -> b 4.2s after the first failed probe: a is down",
        details={
            "failed_probes": [
                {
                    "at": 0,
                    "outcome": "http_5xx",
                    "http_status": 500,
                    "detail": "key sk-very-secret-key-1234",
                }
            ],
            "detection_to_switch_s": 4.2,
            "transaction_id": "tx-1",
        },
        rule=Rule(Severity.CRITICAL, Effect.OPEN),
        incident=7,
    )
    assert title == "[CRITICAL] g: failed over"
    assert "http_5xx (HTTP 500)" in body
    assert "Detection to switch: 4.2s" in body
    assert "Convai transactionID: tx-1" in body
    assert "Incident #7" in body
    assert "sk-very-secret-key-1234" not in body


def test_render_says_the_http_status_once() -> None:
    _title, body = render(
        kind="failover",
        group="g",
        message="m",
        details={
            "failed_probes": [
                {"at": 0, "outcome": "http_5xx", "http_status": 500, "detail": "HTTP 500: busy"}
            ]
        },
        rule=Rule(Severity.CRITICAL, Effect.OPEN),
        incident=None,
    )
    assert "http_5xx (HTTP 500): busy" in body
    assert "HTTP 500: HTTP 500" not in body
    assert "(HTTP 500): HTTP 500" not in body


# --- end to end --------------------------------------------------------------------------


async def test_outage_is_one_story_routed_by_severity(
    world: World, receiver: AlertReceiver
) -> None:
    world.sims["c"].set(Behaviour.MODEL_NOT_FOUND)  # a broken standby, reported early
    config = world.config()
    async with running(config):
        await wait_for(
            lambda: any("fallback is down" in t for t in kinds(receiver, "all")), what="standby"
        )
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: any("failed over" in t for t in kinds(receiver, "pager")), what="page"
        )
        world.sims["a"].set(Behaviour.OK)
        await wait_for(
            lambda: any("failed back" in t for t in kinds(receiver, "all")), what="failback"
        )
    everything = kinds(receiver, "all")
    paged = kinds(receiver, "pager")
    # The pager gets criticals, and the resolution of the incident it was paged for.
    assert paged == [
        f"[CRITICAL] {GROUP}: failed over",
        f"[RESOLVED] {GROUP}: failed back; resolved",
    ]
    assert everything == [
        f"[WARNING] {GROUP}: a fallback is down",
        f"[CRITICAL] {GROUP}: failed over",
        f"[RESOLVED] {GROUP}: failed back; resolved",
    ]
    by_title = {r.title: r for r in receiver.received if r.path == "/all"}
    standby = by_title[f"[WARNING] {GROUP}: a fallback is down"]
    assert "does not serve the group's model" in standby.message
    assert standby.type == "warning"
    failover = by_title[f"[CRITICAL] {GROUP}: failed over"]
    assert failover.type == "failure"
    assert "connect_error" in failover.message
    assert "Convai transactionID:" in failover.message
    assert "Detection to switch:" in failover.message
    assert "Incident #1" in failover.message
    resolved = by_title[f"[RESOLVED] {GROUP}: failed back; resolved"]
    assert resolved.type == "success"
    assert "Incident #1" in resolved.message


async def test_flaky_receiver_gets_each_alert_once(
    world: World, receiver: AlertReceiver, tmp_path: Path
) -> None:
    receiver.fail_next(2)
    world.extra["alerts"]["targets"] = [{"url": receiver.url("pager"), "min_severity": "critical"}]
    config = world.config()
    async with running(config) as daemon:
        assert daemon.deliverer is not None
        daemon.deliverer.retry_base = 0.05
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(lambda: len(receiver.received) >= 1, what="delivered after retries")
    assert receiver.failed_posts == 2
    assert [r.title for r in receiver.received] == [f"[CRITICAL] {GROUP}: failed over"]
    conn = sqlite3.connect(tmp_path / "monitor.db")
    try:
        attempts = conn.execute("select ok from alert_attempts order by id").fetchall()
        status = conn.execute("select status, attempts from alert_outbox").fetchall()
    finally:
        conn.close()
    assert [a[0] for a in attempts] == [0, 0, 1]
    assert status == [("delivered", 3)]


async def test_real_backoff_and_jitter_until_retry_for_runs_out(
    world: World, receiver: AlertReceiver, tmp_path: Path
) -> None:
    # The delivery job as it ships (2 s base, doubling, +-20% jitter), no knob turned:
    # attempts at 0, ~2 and ~6 s; the next would come ~8 s later, past retry_for.
    receiver.fail_next(1000)
    world.extra["alerts"]["targets"] = [{"url": receiver.url("pager"), "min_severity": "critical"}]
    world.extra["alerts"]["retry_for"] = 10
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: daemon.deliverer is not None and daemon.deliverer.failed >= 1,
            limit=20,
            what="given up",
        )
    conn = sqlite3.connect(tmp_path / "monitor.db")
    try:
        attempts = [a for (a,) in conn.execute("select at from alert_attempts order by id")]
        status = conn.execute("select status, attempts from alert_outbox").fetchall()
    finally:
        conn.close()
    assert status == [("failed", 3)]
    assert receiver.failed_posts == 3
    first, second = attempts[1] - attempts[0], attempts[2] - attempts[1]
    # Each wait is at least the jittered backoff (2 s and 4 s, less 20%) and at most that
    # plus the delivery job's 0.5 s cadence and a busy machine's slack; the second is
    # about twice the first, never the same fixed step.
    assert 1.6 <= first < 3.2, attempts
    assert 3.2 <= second < 6.4, attempts
    # Given up after the third failure: a fourth attempt (6.4 s or more later) would land
    # past retry_for (10 s after the alert was written).
    assert attempts[2] - attempts[0] < 10


async def test_undeliverable_alert_is_failed_and_shown(
    world: World, receiver: AlertReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.fail_next(1000)
    world.extra["alerts"]["targets"] = [
        {"url": receiver.url("pager"), "min_severity": "critical", "name": "pagerduty"}
    ]
    world.extra["alerts"]["retry_for"] = 0.5
    config = world.config()
    logs = io.StringIO()
    setup_logging("info", stream=logs, json=True)
    async with running(config) as daemon:
        assert daemon.deliverer is not None
        daemon.deliverer.retry_base = 0.05
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: daemon.deliverer is not None and daemon.deliverer.failed >= 1, what="gave up"
        )
    assert "alert_delivery_failed" in logs.getvalue()
    import asyncio

    await asyncio.to_thread(main, ["status", "-c", str(world.config_path())])
    out = capsys.readouterr().out
    assert "1 failed" in out
    assert "last failed delivery: failover" in out
    # Which target failed, by the name the config gives it, and why.
    line = next(line for line in out.splitlines() if "last failed delivery" in line)
    assert f"for {GROUP} to pagerduty (targets[0], json://...): apprise: failure: " in line
    # The cause as the running daemon saw it (the receiver answers 503), not only "failure".
    assert "503" in line, line


async def test_reminders_repeat_an_open_critical_incident(
    world: World, receiver: AlertReceiver
) -> None:
    world.extra["alerts"]["reminder_interval"] = 0.4
    for name in ("b", "c"):
        world.sims[name].set(Behaviour.HTTP_500)
    config = world.config()
    async with running(config):
        await wait_for(lambda: world.sims["b"].requests >= 5, what="fallbacks down")
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: len([t for t in kinds(receiver, "pager") if "still unresolved" in t]) >= 2,
            what="two reminders",
        )
        world.sims["a"].set(Behaviour.OK)
        await wait_for(
            lambda: any("recovered" in t for t in kinds(receiver, "pager")), what="resolution"
        )
    paged = kinds(receiver, "pager")
    assert paged[0] == f"[CRITICAL] {GROUP}: all endpoints down"
    assert paged.count(f"[CRITICAL] {GROUP}: all endpoints down") == 1  # one incident, not a storm
    assert all("still unresolved" in t for t in paged[1:-1]), paged
    assert paged[-1] == f"[RESOLVED] {GROUP}: recovered; resolved"


async def test_auth_error_is_a_warning_not_an_outage(world: World, receiver: AlertReceiver) -> None:
    config = world.config()
    async with running(config):
        await wait_for(lambda: world.sims["b"].requests >= 2, what="probes")
        world.sims["b"].set(Behaviour.UNAUTHORIZED)
        await wait_for(
            lambda: any("rejects its API key" in t for t in kinds(receiver, "all")), what="auth"
        )
        seen = world.sims["b"].requests
        await wait_for(lambda: world.sims["b"].requests >= seen + 3, what="more probes")
    auth = [r for r in receiver.received if "rejects its API key" in r.title]
    assert len(auth) == 1  # once per episode, not per probe
    assert "Not an outage" in auth[0].message
    assert kinds(receiver, "pager") == []


async def test_auth_error_on_the_active_endpoint_is_told_as_an_outage(
    world: World, receiver: AlertReceiver
) -> None:
    # Convai calls the active endpoint with the same key: the notice must not say "not an
    # outage" a second before the failover page says the opposite.
    config = world.config()
    async with running(config):
        await wait_for(lambda: world.sims["b"].requests >= 2, what="probes")
        world.sims["a"].set(Behaviour.UNAUTHORIZED)
        await wait_for(
            lambda: any("rejects its API key" in t for t in kinds(receiver, "all")), what="auth"
        )
    (auth,) = [r for r in receiver.received if "rejects its API key" in r.title]
    assert "Not an outage" not in auth.message
    assert "characters get the same error" in auth.message


async def test_no_secret_in_any_alert(
    world: World, receiver: AlertReceiver, tmp_path: Path
) -> None:
    world.sims["a"].echo_key = True
    # A target whose URL carries a token and that never answers: its failures are logged.
    dead = "json://127.0.0.1:9/hook-S3cretT0ken1234?token=Zz9secretvalue"
    world.extra["alerts"]["targets"].append({"url": dead, "min_severity": "critical"})
    config = world.config()
    logs = io.StringIO()
    setup_logging("debug", stream=logs, json=True)
    async with running(config) as daemon:
        assert daemon.deliverer is not None
        daemon.deliverer.retry_base = 0.05
        await settled(world)
        world.sims["a"].api_key = "sk-rotated-000000000000"
        world.sims["a"].set(Behaviour.UNAUTHORIZED)
        await wait_for(
            lambda: any("failed over" in t for t in kinds(receiver, "pager")), what="page"
        )
        await wait_for(lambda: "alert_delivery_retry" in logs.getvalue(), what="retry logged")
    secrets = [
        CONVAI_KEY,
        *world.keys.values(),
        receiver.url("all"),
        receiver.url("pager"),
        dead,
        "S3cretT0ken1234",
        "Zz9secretvalue",
    ]
    assert "targets[2] (json://...)" in logs.getvalue()
    text = "\n".join(r.title + r.message for r in receiver.received)
    conn = sqlite3.connect(tmp_path / "monitor.db")
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    for secret in secrets:
        assert secret not in text
        assert secret not in dump
        assert secret not in logs.getvalue()


def test_alerts_test_command(
    world: World, receiver: AlertReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    world.extra["alerts"]["targets"].append(
        {"url": "json://127.0.0.1:9/nowhere-token-12345", "name": "backup-pager"}
    )
    code = main(["alerts", "test", "-c", str(world.config_path())])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("targets[0] (json://...): delivered")
    assert lines[1].startswith("targets[1] (json://...): delivered")
    assert lines[2].startswith("backup-pager (targets[2], json://...): FAILED")
    assert "connection" in lines[2].lower(), lines[2]  # the cause, not just "failure"
    assert "nowhere-token-12345" not in out
    assert str(receiver.url("all")) not in out
    assert len(receiver.received) == 2
