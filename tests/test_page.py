"""The status page and its API on a running daemon: what they show, what they never show,
and who may see them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor.app import open_store
from monitor.config import Config, ConfigError, parse_config
from monitor.domain.health import Health
from monitor.page import render
from monitor.server import parse_listen
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from monitor.store.outbox import Deliveries
from monitor.store.switching import SwitchLog
from tests.conftest import CONVAI_KEY, MODEL, config_dict
from tests.harness import GROUP, World, running, settled, wait_for

Factory = Callable[..., EndpointSim]

# Keys of the shapes real ones take: a plain word with digits, a UUID, 40 hex chars (a
# GitHub-style token), and a Google API key.
CANARIES = {
    "a": "hunter2canary2024",
    "b": "0b7f3c1e-9a44-4d2b-8e6f-51c2a7d9e013",
    "c": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
}
GOOGLE_KEY = "AIzaSyD3fK9qL0mN8pR7sT6uV5wX4yZ2aB1cD0e"
PASSWORD = "pw-Kx81-canary-Qz7"


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory, receiver: AlertReceiver) -> World:
    sims = {n: endpoints(api_key=k) for n, k in CANARIES.items()}
    convai.seed(GROUP, MODEL, CANARIES["a"], base_url=sims["a"].base_url)
    w = World(tmp_path, convai, sims, dict(CANARIES))
    # An apprise URL carrying a token of its own: a secret like the keys.
    w.extra = {
        "server": {"listen": "127.0.0.1:0"},
        "alerts": {"targets": [{"url": receiver.url(f"hook/{GOOGLE_KEY}")}]},
    }
    return w


def _base(daemon: Any) -> str:
    assert daemon.server is not None
    return f"http://127.0.0.1:{daemon.server.port}"


async def _get(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(url, **kwargs)


async def failed_over(world: World, config: Config) -> None:
    """The primary refuses connections; back once the daemon has recorded the group as
    failed over and `a` as down (the recorder writes health in batches, the switch lands a
    moment before the group's state)."""
    await settled(world)
    world.sims["a"].set(Behaviour.REFUSE)
    store = open_store(config, migrate=False)
    try:
        await wait_for(
            lambda: (
                (g := SwitchLog(store).group(GROUP)) is not None
                and g.state == "failed_over"
                and g.active_endpoint == "b"
                and store.health()[(GROUP, "a")].health is Health.DOWN
            ),
            what="the group failed over to b",
        )
    finally:
        store.close()


def _secrets() -> list[str]:
    return [*CANARIES.values(), GOOGLE_KEY, CONVAI_KEY]


async def test_page_and_api_after_a_failover(world: World, receiver: AlertReceiver) -> None:
    # The standby rejects its key and echoes it whole, as some gateways do: the probe's
    # detail must not carry it onto the page.
    world.sims["c"].echo_key = True
    world.sims["c"].set(Behaviour.UNAUTHORIZED)
    config = world.config()
    async with running(config) as daemon:
        await failed_over(world, config)
        store = open_store(config, migrate=False)
        try:
            await wait_for(
                lambda: Deliveries(store).summary().delivered > 0, what="an alert delivered"
            )
        finally:
            store.close()
        await wait_for(lambda: world.sims["c"].requests >= 2, what="c probed")
        base = _base(daemon)
        page = await _get(f"{base}/")
        status = await _get(f"{base}/api/status")
        history = await _get(f"{base}/api/history?since=1h")
        day = await _get(f"{base}/api/history?since=1d&group={GROUP}")
        bad = await _get(f"{base}/api/history?since=soon")
        unknown = await _get(f"{base}/api/history?group=nope")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    group = re.search(
        rf'<section class="group t-warn" data-group="{GROUP}" '
        r'data-state="failed_over">.*?</section>',
        html,
    )
    assert group is not None, html[:2000]
    assert "Failed over" in group.group(0)
    assert "active endpoint <b>b</b>" in group.group(0)
    assert "failover <b>a → b</b>" in group.group(0)
    assert 'data-endpoint="a" data-health="down"' in html
    assert 'data-endpoint="b" data-health="up"' in html
    assert html.count("<rect ") == 3 * 90
    assert "<polyline" in html or '<circle class="p50"' in html
    timeline = html[html.index('<ol class="timeline">') :]
    kinds = re.findall(r'data-kind="([a-z_]+)"', timeline)
    assert "failover" in kinds
    assert "alert_delivered" in kinds
    times = re.findall(r'<time datetime="([^"]+)"', timeline)
    assert times == sorted(times, reverse=True)  # newest first
    # Nothing is fetched from anywhere: no script, stylesheet link, image or font URL.
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|@import|url\(", html)
    assert page.headers["content-security-policy"].startswith("default-src 'none'")

    assert status.status_code == 200
    data = status.json()
    assert data["groups"][0]["state"] == "failed_over"
    assert data["groups"][0]["active_endpoint"] == "b"
    assert set(data) == {"generated_at", "cluster", "daemon", "groups", "unmonitored", "alerts"}
    assert history.status_code == 200
    assert "failover" in [e["kind"] for e in history.json()["events"]]
    assert day.json()["events"] == history.json()["events"]
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "since: not a duration: 'soon' (use e.g. 500ms, 30s, 5m, 2h, 30d)"
    }
    assert unknown.status_code == 400

    for body in (html, status.text, history.text):
        for secret in _secrets():
            assert secret not in body
        # Nor the parts of the apprise URL: only its scheme is shown.
        assert "/hook/" not in body


async def _cli(*args: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


async def test_api_is_what_the_cli_prints(world: World) -> None:
    config = world.config()
    path = world.config_path()
    async with running(config) as daemon:
        await failed_over(world, config)
        # Stop probing, so the CLI and the API read the same rows.
        daemon.scheduler.pause()
        await asyncio.sleep(0.5)  # what was in flight lands
        base = _base(daemon)
        api_status = (await _get(f"{base}/api/status")).json()
        api_history = (await _get(f"{base}/api/history?since=24h")).json()
        cli_status = await _cli("status", "-c", str(path), "--json")
        cli_history = await _cli("history", "-c", str(path), "--json")
    for data in (api_status, cli_status):
        data.pop("generated_at")
    assert api_status == cli_status
    assert api_history == cli_history


def _auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("source", ["env", "file"])
async def test_auth_protects_page_and_api_never_health(
    world: World, tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "env":
        monkeypatch.setenv("STATUS_PASSWORD", PASSWORD)
        auth: dict[str, Any] = {"username": "oncall", "password": "${STATUS_PASSWORD}"}
    else:
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        auth = {"username": "oncall", "password_file": str(secret)}
    world.extra["server"]["auth"] = auth
    config = world.config()
    async with running(config) as daemon:
        base = _base(daemon)
        for path in ("/", "/api/status", "/api/history?since=1h"):
            anonymous = await _get(base + path)
            assert anonymous.status_code == 401, path
            assert anonymous.headers["www-authenticate"].startswith('Basic realm="convai-monitor"')
            for headers in (
                _auth("oncall", "wrong"),
                _auth("someone", PASSWORD),
                _auth("oncall", PASSWORD + "x"),
                {"Authorization": "Basic !!!"},
                {"Authorization": f"Bearer {PASSWORD}"},
            ):
                assert (await _get(base + path, headers=headers)).status_code == 401, headers
            allowed = await _get(base + path, headers=_auth("oncall", PASSWORD))
            assert allowed.status_code == 200, path
            assert PASSWORD not in allowed.text
        await wait_for(lambda: daemon.ready_check().ok, what="ready")
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await _get(base + path)).status_code == 200, path


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ({"username": "u"}, "server.auth: set exactly one of password or password_file"),
        (
            {"username": "u", "password": "a", "password_file": "/x"},
            "server.auth: set exactly one of password or password_file",
        ),
        (
            {"username": "a:b", "password": "p"},
            "server.auth.username: String should match pattern '^[^:\\s]+$'",
        ),
        ({"username": "u", "password": ""}, "server.auth: password must not be empty"),
        (
            {"username": "u", "password_file": "/nonexistent/pw"},
            "server.auth.password_file: cannot read /nonexistent/pw: No such file or directory",
        ),
        ({"username": "u", "password": "p", "realm": "x"}, "server.auth.realm: unknown key"),
        (None, "server: auth is set but listen is not: there is no page to protect"),
    ],
)
def test_auth_config_errors_are_one_line(
    tmp_path: Path, auth: dict[str, Any] | None, problem: str
) -> None:
    """`auth` None: a valid auth without `listen`."""
    server: dict[str, Any] = {"listen": "127.0.0.1:9478", "auth": auth}
    if auth is None:
        server = {"auth": {"username": "u", "password": "p"}}
    group = {
        "model_group_name": GROUP,
        "model_name": MODEL,
        "endpoints": [{"name": "a", "base_url": "http://127.0.0.1:9/v1", "api_key": "k-12345678"}],
    }
    data = {**config_dict(tmp_path, [group]), "server": server}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data), env={})
    assert caught.value.problems == [problem]


def test_auth_password_file_empty(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    group = {
        "model_group_name": GROUP,
        "model_name": MODEL,
        "endpoints": [{"name": "a", "base_url": "http://127.0.0.1:9/v1", "api_key": "k-12345678"}],
    }
    data = {
        **config_dict(tmp_path, [group]),
        "server": {"listen": ":9478", "auth": {"username": "u", "password_file": str(empty)}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data), env={})
    assert caught.value.problems == [f"server.auth.password_file: {empty} is empty"]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (":9478", ("127.0.0.1", 9478)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9478", ("::1", 9478)),
    ],
)
def test_listen_without_a_host_is_loopback(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


HOSTILE = '<img src=x onerror="alert(1)">&amp;</section>'


def _model(text: str) -> dict[str, Any]:
    """A page model with `text` in every field that comes from outside."""
    endpoint = {
        "name": text,
        "base_url": f"http://h/{text}",
        "health": text,
        "health_since": None,
        "last_probe": {
            "at": "2027-01-15T12:00:00.000Z",
            "ok": False,
            "outcome": text,
            "latency_ms": None,
            "http_status": 500,
            "detail": text,
        },
        "uptime": {"1h": None, "24h": 50.0, "7d": None, "30d": None},
        "latency_ms": {"p50": None, "p95": None},
        "latency_ms_24h": {"p50": None, "p95": None},
        "days": [{"day": text, "probes": 2, "uptime": 50.0}],
        "latency": [
            {"at": "2027-01-15T12:00:00.000Z", "seconds": 60, "probes": 1, "p50": 5, "p95": 9}
        ],
    }
    return {
        "generated_at": "2027-01-15T12:00:30.000Z",
        "daemon": {"running": True, "last_seen": "2027-01-15T12:00:28.000Z", "stopped": False},
        "groups": [
            {
                "model_group_name": text,
                "state": text,
                "active_endpoint": text,
                "registered_base_url": None,
                "condition": text,
                "pinned": {"endpoint": text, "until": "2027-01-15T13:00:00.000Z"},
                "last_switch": {
                    "at": "2027-01-15T12:00:00.000Z",
                    "from": text,
                    "to": text,
                    "kind": text,
                    "reason": text,
                    "transaction_id": text,
                },
                "endpoints": [endpoint],
            }
        ],
        "unmonitored": [{"model_group_name": text, "base_url": text}],
        "alerts": {
            "pending": 0,
            "delivered": 0,
            "failed": 1,
            "last_failure": {"group": text, "kind": text, "attempts": 3, "error": text},
        },
        "timeline": [
            {
                "at": "2027-01-15T12:00:00.000Z",
                "model_group_name": text,
                "kind": text,
                "message": text,
                "transaction_id": text,
            }
        ],
        "timeline_since": "2027-01-08T12:00:00.000Z",
    }


def test_page_escapes_everything_it_did_not_write() -> None:
    model = _model(HOSTILE)
    html = render(model, 1_800_000_000.0)
    assert "<img" not in html
    assert 'onerror="' not in html
    assert html.count("</section>") == 2  # the group and the timeline, nothing injected
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;amp;" in html


async def test_a_reloaded_password_applies_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUS_PASSWORD", PASSWORD)
    world.extra["server"]["auth"] = {"username": "oncall", "password": "${STATUS_PASSWORD}"}
    config = world.config()
    async with running(config, config_path=str(world.config_path())) as daemon:
        url = _base(daemon) + "/api/status"
        assert (await _get(url, headers=_auth("oncall", PASSWORD))).status_code == 200
        monkeypatch.setenv("STATUS_PASSWORD", PASSWORD + "-rotated")
        await daemon.reload()
        assert (await _get(url, headers=_auth("oncall", PASSWORD))).status_code == 401
        rotated = await _get(url, headers=_auth("oncall", PASSWORD + "-rotated"))
        assert rotated.status_code == 200


def test_a_rehome_is_not_shown_as_a_move() -> None:
    model = _model("x")
    switch = model["groups"][0]["last_switch"]
    switch.update({"kind": "rehome", "from": "b", "to": "b", "reason": "new base_url"})
    html = render(model, 1_800_000_000.0)
    assert "last switch rehome on <b>b</b>" in html
    assert "b → b" not in html


@pytest.mark.parametrize(
    ("daemon", "banner"),
    [
        ({"running": True, "last_seen": "2027-01-15T12:00:28.000Z", "stopped": False}, None),
        (
            {"running": False, "last_seen": "2027-01-15T12:00:00.000Z", "stopped": False},
            "daemon not running (last seen 90 s ago)",
        ),
        (
            {"running": False, "last_seen": "2027-01-15T11:59:30.000Z", "stopped": True},
            "daemon not running (stopped 120 s ago)",
        ),
        (
            {"running": False, "last_seen": None, "stopped": False},
            "daemon has never run against this database",
        ),
    ],
)
def test_page_says_when_the_daemon_is_not_running(
    daemon: dict[str, Any], banner: str | None
) -> None:
    model = _model("x")
    model["daemon"] = daemon
    now = datetime(2027, 1, 15, 12, 1, 30, tzinfo=UTC).timestamp()
    html = render(model, now)
    shown = re.search(r'<p class="daemon-down" role="alert">([^<]*)</p>', html)
    title = re.search(r"<title>([^<]*)</title>", html)
    assert title is not None
    if banner is None:
        assert shown is None
        assert "not running" not in html
        assert not title.group(1).startswith("Daemon not running")
    else:
        assert shown is not None
        assert shown.group(1).startswith(banner + ": nothing is probed or failed over")
        # Above the groups, and in the tab's title, where someone glancing sees it.
        assert html.index('daemon-down"') < html.index('<section class="group')
        assert title.group(1).startswith("Daemon not running · ")
