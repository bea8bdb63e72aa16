"""Canary secrets never reach logs, the database, CLI output, alerts or /metrics, even when
an upstream echoes them back.

The canaries are shaped like real keys that are not `sk-...` (see `canary_key`): no generic
pattern of the redactor matches them, so what hides them here is the registry that config
loading fills. Disable that registration and these tests fail.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from monitor.cli import main
from monitor.redact import Redactor
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.sim.receiver import AlertReceiver
from tests.conftest import CONVAI_KEY, canary_key
from tests.harness import GROUP, World, daemon_process, free_port, make_world, poll

Factory = Callable[..., EndpointSim]

# Apprise URL tokens: one in the path and query of a target that cannot be reached, one in
# the user of an Emby target whose login is refused (apprise's error names that user).
PATH_TOKEN = "hook-S3cretT0ken1234"
QUERY_TOKEN = "Zz9secretvalue"
EMBY_USER = "opsBot7781user"
EMBY_PASSWORD = "pw5511Secret"


@pytest.fixture
def receivers() -> Iterator[tuple[AlertReceiver, AlertReceiver]]:
    with AlertReceiver() as good, AlertReceiver() as refusing:
        yield good, refusing


def file_bytes(tmp_path: Path) -> bytes:
    """Every byte SQLite wrote: the database and whatever WAL or journal is left."""
    return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("monitor.db*")))


def test_canaries_are_not_caught_by_generic_patterns() -> None:
    # The premise of every secret test below: without registration, a canary echoed in an
    # upstream's error text would pass through the redactor untouched.
    unregistered = Redactor()
    for key in (CONVAI_KEY, *(canary_key(n) for n in range(4)), EMBY_USER, PATH_TOKEN):
        text = f"Incorrect API key provided: {key}. You can find your API key at ..."
        assert key in unregistered.redact(text), key
    shapes = [canary_key(n) for n in range(4)]
    assert shapes[0].isalnum()
    assert not shapes[0].isalpha()
    assert str(uuid.UUID(shapes[1])) == shapes[1]
    assert len(shapes[2]) == 40
    assert int(shapes[2], 16) >= 0
    assert shapes[3].startswith("AIza")
    assert len(shapes[3]) == 39


def test_keys_never_leak(
    tmp_path: Path,
    convai: ConvaiSim,
    endpoints: Factory,
    receivers: tuple[AlertReceiver, AlertReceiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, refusing = receivers
    refusing.fail_next(10**6)
    world: World = make_world(tmp_path, convai, endpoints, names=("a", "b", "c", "d"))
    port = free_port()
    dead = f"json://127.0.0.1:9/{PATH_TOKEN}?token={QUERY_TOKEN}"
    emby = f"emby://{EMBY_USER}:{EMBY_PASSWORD}@127.0.0.1:{refusing.port}"
    world.extra = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "alerts": {
            "targets": [
                {"url": good.url("all"), "min_severity": "info"},
                {"url": dead, "min_severity": "info"},
                {"url": emby, "min_severity": "info"},
            ],
            # Short: the failing targets give up (an error) after their first attempts.
            "retry_for": 3,
        },
    }
    # The worst upstreams: 401s that quote the whole key they were sent.
    for sim in world.sims.values():
        sim.echo_key = True
    path = world.config_path()
    log = tmp_path / "daemon.log"
    base = f"http://127.0.0.1:{port}"
    with daemon_process(path, log, args=["--log-level", "debug"]) as proc:
        poll(lambda: world.sims["d"].requests >= 2, 20, "first probes")
        # Every endpoint now rejects its key, quoting it: a down primary and standbys that
        # are "not an outage" but warned about, then a fallback that works again.
        for sim in world.sims.values():
            sim.api_key = "rotated-elsewhere-000000"
            sim.set(Behaviour.UNAUTHORIZED)
        poll(lambda: "auth_error" in log.read_text(), 10, "echoed 401s probed")
        world.sims["b"].api_key = world.keys["b"]
        world.sims["b"].set(Behaviour.OK)
        poll(lambda: world.registered()["base_url"] == world.sims["b"].base_url, 20, "failover")
        poll(lambda: any("failed over" in r.title for r in good.received), 10, "page")
        poll(lambda: "alert_delivery_failed" in log.read_text(), 15, "a delivery given up")
        metrics = httpx.get(f"{base}/metrics", timeout=5, trust_env=False).text
        page = {
            route: httpx.get(f"{base}{route}", timeout=5, trust_env=False).text
            for route in ("/", "/api/status", "/api/history?since=24h")
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    daemon_output = log.read_text()

    argv = str(path)
    commands: list[list[str]] = [
        ["status", "-c", argv],
        ["status", "-c", argv, "--json"],
        ["history", "-c", argv],
        ["history", "-c", argv, "--json"],
        ["explain", "-c", argv, GROUP],
        ["check", "-c", argv],
        ["check", "-c", argv, "--json"],
        ["models", "list", "-c", argv],
        ["models", "list", "-c", argv, "--json"],
        ["alerts", "test", "-c", argv],
        ["config", "validate", "-c", argv],
        ["db", "upgrade", "-c", argv],
        ["failover", "-c", argv, GROUP, "--to", "c", "--force", "--yes"],
        ["pin", "-c", argv, GROUP, "c", "--for", "1h", "--force", "--yes"],
        ["unpin", "-c", argv, GROUP],
        ["models", "update", "-c", argv, GROUP, "--endpoint", "d"],
        ["models", "deregister", "-c", argv, GROUP, "--yes"],
        ["models", "register", "-c", argv, GROUP],
        ["history", "-c", argv, "--json"],
        ["drill", "-c", argv, GROUP],
    ]
    outputs: dict[str, str] = {}
    for command in commands:
        code = main(command)
        captured = capsys.readouterr()
        outputs[" ".join(command[:2])] = outputs.get(" ".join(command[:2]), "") + (
            captured.out + captured.err
        )
        assert code in (0, 1), (command, captured.err)

    apprise_tokens = [PATH_TOKEN, QUERY_TOKEN, EMBY_USER, EMBY_PASSWORD]
    secrets = [CONVAI_KEY, *world.keys.values(), *apprise_tokens]
    text = {
        "daemon output (logs)": daemon_output,
        "alerts": "\n".join(json.dumps(r.raw) for r in good.received),
        "/metrics": metrics,
        **{f"status page {route}": body for route, body in page.items()},
        **{f"`{name}` output": out for name, out in outputs.items()},
    }
    database = file_bytes(tmp_path)

    # What these outputs had to say, so that "no secret in them" means something: the
    # echoed 401s were recorded, logged at every level, a target's failure was recorded
    # with apprise's reason (which names the Emby user), and the alerts went out.
    levels = {json.loads(line)["level"] for line in daemon_output.splitlines() if line[:1] == "{"}
    assert {"debug", "info", "warning", "error"} <= levels, levels
    assert b"auth_error" in database
    assert b"Incorrect API key provided" in database
    assert b"Failed to authenticate Emby user" in database
    assert "apprise: failure: " in outputs["status -c"]  # the last failure, with its reason
    assert "convai_monitor_endpoint_up" in metrics
    assert GROUP in page["/"]
    assert "auth_error" in page["/api/status"]
    assert "drill" in outputs["drill -c"].lower()
    assert any("rejects its API key" in r.title for r in good.received)

    for secret in secrets:
        for where, content in text.items():
            assert secret not in content, f"a secret leaked into {where}"
            assert secret[-12:] not in content, f"part of a secret leaked into {where}"
        assert secret.encode() not in database, "a secret leaked into the database file"
        assert secret[-12:].encode() not in database, "part of a secret leaked into the database"
