"""PostgreSQL as an operator meets it: the URL, the driver extra, redaction, a daemon on it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from monitor import __version__
from monitor.cli import main
from monitor.config import ConfigError, parse_config
from monitor.domain.health import Health
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour
from monitor.store import Store
from tests.conftest import CONVAI_KEY
from tests.harness import World, make_world, running, settled, wait_for
from tests.test_failover_e2e import Factory

PASSWORD = "canary-pg-password-7c41e9"

BASE = f"""
convai:
  api_key: {CONVAI_KEY}
groups:
  - model_group_name: g
    model_name: m
    endpoints:
      - name: a
        base_url: http://127.0.0.1:9/v1
        api_key: sk-canary-a-0123456789
storage:
  url: URL
"""


def config_text(url: str) -> str:
    return BASE.replace("URL", url)


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory, pg_url: str) -> World:
    w = make_world(tmp_path, convai, endpoints, names=("a", "b"))
    # The password is taken from the environment, as an operator would write it; the
    # test server trusts loopback, so any password gets in.
    with_password = pg_url.replace("monitor@", "monitor:${PGPASSWORD}@")
    w.extra = {"storage": {"url": with_password}, "instance": {"name": "probe-east"}}
    return w


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_postgres_url_without_the_driver_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a user of a plain `pip install convai-monitor` sees: no traceback, exit 2.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    path = tmp_path / "config.yaml"
    path.write_text(config_text("postgresql+psycopg://monitor@db.internal:5432/monitor"))
    code, _, err = run_cli(capsys, "config", "validate", "-c", str(path))
    assert code == 2
    assert err.strip().splitlines() == [
        f"convai-monitor: config error: {path}: storage.url: PostgreSQL needs the psycopg "
        "driver: pip install 'convai-monitor[postgres]'"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "storage.url: mysql is not supported: use sqlite:///FILE or"),
        ("postgresql+psycopg2://u@h/db", "storage.url: PostgreSQL driver psycopg2 is not"),
        ("postgresql+asyncpg://u@h/db", "storage.url: PostgreSQL driver asyncpg is not"),
    ],
)
def test_other_databases_and_drivers_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(url), env={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(message)


def test_plain_postgresql_url_means_psycopg_3() -> None:
    config = parse_config(config_text("postgresql://monitor@db:5432/monitor"), env={})
    assert config.storage.url == "postgresql+psycopg://monitor@db:5432/monitor"


async def test_daemon_on_postgres_fails_over_and_never_shows_the_password(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    path = world.config_path()
    code, out, err = run_cli(capsys, "db", "upgrade", "-c", str(path))
    assert code == 0, err
    assert out.startswith("database at the newest schema: postgresql+psycopg://monitor:***@")
    config = world.config()
    assert PASSWORD in config.storage.url  # it reaches the driver, and only the driver

    async with running(config):
        await settled(world)
        world.sims["a"].set(Behaviour.REFUSE)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url,
            what="failover on PostgreSQL",
        )
    assert world.updates() == 1
    # Each endpoint's own log shows who probed, and every result is stored as this
    # instance's view.
    request = world.sims["b"].last_request
    assert request is not None
    assert request["headers"]["user-agent"] == f"convai-monitor/{__version__} (instance probe-east)"
    store = Store(config.storage.url)
    views = store.vantage_health()
    store.close()
    assert set(views[("my-turbo", "a")]) == {"probe-east"}
    assert views[("my-turbo", "a")]["probe-east"].health is Health.DOWN
    outputs = []
    # The daemon's own log lines (a failover is logged as an error) are not the CLI's.
    daemon_logs = capsys.readouterr()
    assert PASSWORD not in daemon_logs.out + daemon_logs.err
    for argv in (("status", "--json"), ("history",), ("explain", "my-turbo")):
        code, out, err = run_cli(capsys, *argv, "-c", str(path))
        # status exits 1: the daemon has stopped (it says so); the report is whole.
        assert code == (1 if argv[0] == "status" else 0), err
        outputs.append(out + err)
    status = json.loads(outputs[0])
    assert status["groups"][0]["active_endpoint"] == "b"
    assert "failover" in outputs[1]
    assert all(PASSWORD not in text for text in outputs)
    assert PASSWORD not in capsys.readouterr().err


def test_unreachable_postgres_is_a_one_line_error(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.sim.postgres import free_port

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    world.extra = {
        "storage": {
            "url": f"postgresql+psycopg://monitor:${{PGPASSWORD}}@127.0.0.1:{free_port()}/x"
        }
    }
    started = time.monotonic()
    code, _, err = run_cli(capsys, "status", "-c", str(world.config_path()))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("convai-monitor: error: database postgresql+psycopg://monitor:***@")
    assert "Connection refused" in lines[0]
    assert PASSWORD not in err
    assert time.monotonic() - started < 10
