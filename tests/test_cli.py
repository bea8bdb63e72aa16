"""The command line as an operator uses it: exit codes, one-line errors, real servers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.config import load_config
from monitor.durations import format_duration
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.conftest import CONVAI_KEY, MODEL, config_dict, write_config
from tests.harness import GROUP, World, make_world

Factory = Callable[..., EndpointSim]


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- bad input --------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "check", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert err.strip() == f"convai-monitor: config error: {tmp_path / 'nope.yaml'}: no such file"


def test_bad_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("convai: {api_key: [\n")
    code, _, err = run_cli(capsys, "config", "validate", "-c", str(path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_invalid_config_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config_dict(
        tmp_path, [{"model_group_name": "g", "endpoints": [{"name": "a", "base_url": "x"}]}]
    )
    data["defaults"]["fall"] = -1
    path = write_config(tmp_path, data)
    code, out, err = run_cli(capsys, "config", "validate", "-c", str(path))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert any("defaults.fall:" in line for line in lines)
    assert any("groups[0].endpoints[0].base_url: not a URL" in line for line in lines)


def test_config_from_environment_variable(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVAI_MONITOR_CONFIG", str(world.config_path()))
    code, out, _ = run_cli(capsys, "config", "validate")
    assert code == 0
    assert out.strip() == "config ok: 1 group(s), 2 endpoint(s)"


def test_unreachable_database_path(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.extra = {"storage": {"url": "sqlite:////nonexistent-dir/sub/monitor.db"}}
    code, _, err = run_cli(capsys, "db", "upgrade", "-c", str(world.config_path()))
    assert code == 2
    assert err.startswith("convai-monitor: error: database /nonexistent-dir/sub/monitor.db:")
    assert len(err.strip().splitlines()) == 1


def test_a_missing_database_directory_is_reported_with_other_problems(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(world.tmp_path)
    world.extra = {
        "storage": {"url": "sqlite:///var/lib/convai-monitor/convai-monitor.db"},
        "bogus_section": 1,
    }
    code, out, err = run_cli(capsys, "config", "validate", "-c", str(world.config_path()))
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 2  # one line per problem
    assert "bogus_section: " in lines[0]
    assert f"directory {world.tmp_path}/var/lib/convai-monitor does not exist" in lines[1]


def test_config_validate_checks_the_database_directory(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three slashes: relative to the working directory, where var/lib/... does not exist.
    monkeypatch.chdir(world.tmp_path)
    world.extra = {"storage": {"url": "sqlite:///var/lib/convai-monitor/convai-monitor.db"}}
    code, out, err = run_cli(capsys, "config", "validate", "-c", str(world.config_path()))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert f"directory {world.tmp_path}/var/lib/convai-monitor does not exist" in err
    assert "sqlite:////var/lib/convai-monitor/convai-monitor.db" in err  # the fix
    readonly = world.tmp_path / "ro"
    readonly.mkdir(mode=0o500)
    world.extra = {"storage": {"url": f"sqlite:///{readonly}/monitor.db"}}
    code, _, err = run_cli(capsys, "config", "validate", "-c", str(world.config_path()))
    if os.geteuid() != 0:  # root writes anywhere
        assert code == 2
        assert f"directory {readonly} is not writable" in err
    world.extra = {}
    code, out, _ = run_cli(capsys, "config", "validate", "-c", str(world.config_path()))
    assert (code, out.strip()) == (0, "config ok: 1 group(s), 2 endpoint(s)")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["failover", "-c", "x.yaml", "g"])  # --to is required
    assert info.value.code == 2


def test_unknown_group(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", "-c", str(world.config_path()), "--group", "nope")
    assert code == 2
    assert "no group named 'nope'" in err


# --- check ------------------------------------------------------------------------------


def test_check_healthy_then_primary_down(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(world.config_path())
    code, out, _ = run_cli(capsys, "check", "-c", path)
    assert code == 0
    assert "GROUP" in out
    assert "ok" in out
    world.sims["a"].set(Behaviour.UNAUTHORIZED)
    code, out, _ = run_cli(capsys, "check", "-c", path, "--json")
    assert code == 1
    results = json.loads(out)["results"]
    assert [(r["endpoint"], r["ok"], r["outcome"], r["http_status"]) for r in results] == [
        ("a", False, "auth_error", 401),
        ("b", True, "ok", 200),
    ]
    assert set(results[0]) == {
        "model_group_name",
        "endpoint",
        "ok",
        "outcome",
        "latency_ms",
        "http_status",
        "detail",
    }


def test_check_fallback_down_primary_up_is_exit_0(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.sims["b"].set(Behaviour.HTTP_500)
    code, _, _ = run_cli(capsys, "check", "-c", str(world.config_path()))
    assert code == 0


def test_check_reads_model_name_from_convai(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    path = world.config_path()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if f"model_name: {MODEL}" not in line))
    code, _out, err = run_cli(capsys, "check", "-c", str(path), "--json")
    assert code == 0, err
    assert world.sims["a"].last_request is not None
    assert world.sims["a"].last_request["json"]["model"] == MODEL


# --- run, status, history, explain, failover, pin ----------------------------------------


def test_run_status_and_sigterm(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = world.config_path()
    log = world.tmp_path / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 15
        while world.sims["b"].requests < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        world.sims["a"].set(Behaviour.REFUSE)
        while (
            world.registered()["base_url"] != world.sims["b"].base_url
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"daemon_started", "endpoint_down", "failover_completed", "daemon_stopped"} <= events
    assert all("timestamp" in line and "level" in line for line in lines)

    code, out, _ = run_cli(capsys, "status", "-c", str(path), "--json")
    assert code == 1  # the daemon was stopped: status says so, and exits 1
    status = json.loads(out)
    assert status["daemon"]["running"] is False
    group = status["groups"][0]
    assert group["model_group_name"] == GROUP
    assert group["active_endpoint"] == "b"
    assert group["state"] == "failed_over"
    assert group["last_switch"]["from"] == "a"
    assert group["last_switch"]["to"] == "b"
    assert group["last_switch"]["transaction_id"]
    a, b = group["endpoints"]
    assert a["health"] == "down"
    assert b["health"] == "up"
    assert set(a) >= {"name", "base_url", "health", "last_probe", "uptime", "latency_ms"}
    assert set(a["last_probe"]) >= {"at", "ok", "outcome", "latency_ms"}
    assert a["last_probe"]["outcome"] == "connect_error"
    assert 0 < a["uptime"]["1h"] < 100
    assert b["uptime"]["1h"] == 100.0
    assert b["latency_ms"]["p50"] is not None
    assert b["latency_ms"]["p95"] >= b["latency_ms"]["p50"]

    code, out, _ = run_cli(capsys, "status", "-c", str(path))
    assert code == 1
    assert "failed_over" in out
    assert "b*" in out

    code, out, _ = run_cli(capsys, "history", "-c", str(path), "--json")
    kinds = [e["kind"] for e in json.loads(out)["events"]]
    assert "failover" in kinds
    failover = next(e for e in json.loads(out)["events"] if e["kind"] == "failover")
    assert failover["transaction_id"]
    assert failover["detection_to_switch_s"] > 0
    assert failover["details"]["failed_probes"]

    code, out, _ = run_cli(capsys, "explain", "-c", str(path), GROUP)
    assert code == 0
    assert "is on b, not on its primary a" in out
    assert "switched automatically from a to b" in out

    # The health the daemon judged is in the database for the next start to resume from
    # (test_failover_e2e.py::test_health_and_incident_survive_a_restart restarts one).
    conn = sqlite3.connect(world.tmp_path / "monitor.db")
    try:
        health = dict(conn.execute("select name, health from endpoints").fetchall())
    finally:
        conn.close()
    assert health == {"a": "down", "b": "up"}

    # The primary is judged up again: explain names the wait decide() applies (one switch
    # this hour, so failback_after itself), and a pin overrides it without contradiction.
    conn = sqlite3.connect(world.tmp_path / "monitor.db")
    try:
        conn.execute("update endpoints set health = 'up' where name = 'a'")
        conn.commit()
    finally:
        conn.close()
    wait = format_duration(load_config(path).groups[0].policy.failback_after)
    code, out, _ = run_cli(capsys, "explain", "-c", str(path), GROUP)
    assert f"fails back automatically once it has been up for {wait} and" in out
    code, _, err = run_cli(capsys, "pin", "-c", str(path), GROUP, "b", "--for", "1h")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "explain", "-c", str(path), GROUP)
    assert "fails back automatically" not in out
    assert "stays where it is while it is pinned" in out
    assert "no automatic switch until then" in out


def test_manual_failover_pin_and_unpin(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(world.config_path())
    code, out, err = run_cli(capsys, "failover", "-c", path, GROUP, "--to", "b")
    assert code == 0, err
    assert out.startswith(f"switched {GROUP}: a -> b (transactionID ")
    assert "held on b until 20" in out  # --hold defaults to 1h
    assert world.registered()["base_url"] == world.sims["b"].base_url
    assert world.registered()["api_key"] == world.keys["b"]

    code, out, _ = run_cli(capsys, "failover", "-c", path, GROUP, "--to", "b")
    assert code == 0
    assert "already on b; held there until" in out

    world.sims["a"].set(Behaviour.HTTP_500)
    code, _, err = run_cli(capsys, "failover", "-c", path, GROUP, "--to", "a")
    assert code == 1
    # What the pre-flight saw, not just that it failed.
    assert "no candidate passed pre-flight (a: http_5xx HTTP 500)" in err
    assert world.registered()["base_url"] == world.sims["b"].base_url
    code, out, err = run_cli(
        capsys, "failover", "-c", path, GROUP, "--to", "a", "--force", "--hold", "0"
    )
    assert code == 0, err
    assert "held" not in out
    assert world.registered()["base_url"] == world.sims["a"].base_url
    code, out, _ = run_cli(capsys, "status", "-c", path, "--json")
    assert json.loads(out)["groups"][0]["pinned"] is None  # moving off b ended its hold

    world.sims["a"].set(Behaviour.OK)
    code, out, err = run_cli(capsys, "pin", "-c", path, GROUP, "b", "--for", "2h")
    assert code == 0, err
    assert world.registered()["base_url"] == world.sims["b"].base_url
    code, out, _ = run_cli(capsys, "status", "-c", path, "--json")
    group = json.loads(out)["groups"][0]
    assert group["state"] == "pinned"
    assert group["pinned"]["endpoint"] == "b"
    code, out, _ = run_cli(capsys, "unpin", "-c", path, GROUP)
    assert out.strip() == f"unpinned {GROUP}"
    code, out, _ = run_cli(capsys, "history", "-c", path, "--group", GROUP, "--json")
    kinds = [e["kind"] for e in json.loads(out)["events"]]
    # The refused switch is in the audit log too.
    assert kinds == [
        "manual",
        "held",
        "pinned",
        "manual_failed",
        "manual",
        "unpinned",
        "manual",
        "pinned",
        "unpinned",
    ]
    code, out, _ = run_cli(capsys, "history", "-c", path, "--group", GROUP)
    pinned = next(line for line in out.splitlines() if "pinned to b until" in line)
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", pinned), pinned
    # No raw epoch anywhere: pins, holds and unpins all read as dates.
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", out), out

    code, _, err = run_cli(capsys, "pin", "-c", path, GROUP, "zz", "--for", "2h")
    assert code == 2
    assert "has no endpoint 'zz'" in err
    code, _, err = run_cli(capsys, "pin", "-c", path, GROUP, "a", "--for", "soon")
    assert code == 2
    assert "--for: not a duration" in err


def test_models_commands(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(world.config_path())
    world.convai.seed("someone-elses", "m2", "sk-other-key-123456", base_url="https://x.example/v1")
    code, out, _ = run_cli(capsys, "models", "list", "-c", path, "--json")
    assert code == 0
    models = {m["model_group_name"]: m for m in json.loads(out)["models"]}
    assert models[GROUP]["monitored"] is True
    assert models["someone-elses"]["monitored"] is False
    assert "api_key" not in models[GROUP]

    code, out, _ = run_cli(capsys, "models", "update", "-c", path, GROUP, "--endpoint", "b")
    assert code == 0
    assert "updated successfully" in out
    assert world.registered()["api_key"] == world.keys["b"]

    code, _, err = run_cli(capsys, "models", "deregister", "-c", path, GROUP)
    assert code == 2
    assert "--yes" in err
    code, out, _ = run_cli(capsys, "models", "deregister", "-c", path, GROUP, "--yes")
    assert code == 0
    code, out, err = run_cli(capsys, "models", "deregister", "-c", path, GROUP, "--yes")
    assert code == 1
    assert "HTTP 404" in err
    code, out, _ = run_cli(capsys, "models", "register", "-c", path, GROUP)
    assert code == 0
    assert world.registered()["base_url"] == world.sims["a"].base_url


def test_wrong_convai_key_is_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = world.config_path()
    path.write_text(path.read_text().replace(CONVAI_KEY, "wrong-key-0000000"))
    code, _, err = run_cli(capsys, "models", "list", "-c", str(path))
    assert code == 1
    assert "HTTP 401" in err
    assert "wrong-key-0000000" not in err
    assert len(err.strip().splitlines()) == 1


def test_run_refuses_an_unregistered_group(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.convai.reset()
    code, _, err = run_cli(capsys, "run", "-c", str(world.config_path()))
    assert code == 2
    assert f"Convai has no model group {GROUP}" in err


def test_run_with_listen_port_in_use_is_one_line_exit_2(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        world.extra = {"server": {"listen": f"127.0.0.1:{port}"}}
        code, _out, err = run_cli(capsys, "run", "-c", str(world.config_path()))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("convai-monitor: error:")]
    assert lines == [
        f"convai-monitor: error: server.listen 127.0.0.1:{port}: address already in use: "
        "another process listens there; stop it or choose another port"
    ]
    assert "Traceback" not in err


def test_status_into_a_closed_pipe_is_quiet(world: World) -> None:
    """`status | head`: the reader goes away early; no BrokenPipeError traceback."""
    path = world.config_path()
    assert main(["db", "upgrade", "-c", str(path)]) == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "status", "-c", str(path)],
            stdout=write,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.returncode == 0
    assert b"Traceback" not in proc.stderr
    assert b"BrokenPipeError" not in proc.stderr


async def test_forced_failover_to_a_down_endpoint_asks_for_yes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from tests.harness import running, settled, wait_for

    world.sims["b"].set(Behaviour.MODEL_NOT_FOUND)
    config = world.config()
    async with running(config) as daemon:
        await settled(world)
        assert daemon.monitor is not None
        states = daemon.monitor.states
        await wait_for(lambda: states[(GROUP, "b")].health.value == "down", what="b down")
    capsys.readouterr()  # the daemon's own log lines
    path = str(world.config_path())
    argv = ["failover", "-c", path, GROUP, "--to", "b", "--force"]
    code, out, err = await asyncio.to_thread(run_cli, capsys, *argv)
    assert (code, out) == (2, "")
    assert "b is down (for " in err
    assert "last probe: model_not_found HTTP 404" in err
    assert "add --yes to switch anyway" in err
    assert world.registered()["base_url"] == world.sims["a"].base_url  # nothing sent
    code, out, err = await asyncio.to_thread(run_cli, capsys, *argv, "--yes")
    assert code == 0, err
    assert world.registered()["base_url"] == world.sims["b"].base_url


def test_history_fits_the_terminal_with_relative_times(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(world.config_path())
    world.sims["b"].set(Behaviour.HTTP_500)
    assert run_cli(capsys, "failover", "-c", path, GROUP, "--to", "b")[0] == 1
    world.sims["b"].set(Behaviour.OK)
    assert run_cli(capsys, "failover", "-c", path, GROUP, "--to", "b", "--hold", "0")[0] == 0
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "history", "-c", path)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    heads = [line for line in lines if not line.startswith("    ")]
    assert len(heads) == 2
    assert re.match(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ +\d+s ago  {GROUP}  manual_failed$", heads[0]
    )
    assert heads[1].endswith(f"{GROUP}  manual")
    text = " ".join(line.strip() for line in lines if line.startswith("    "))
    assert "b: http_5xx HTTP 500" in text
    assert "Convai transactionID" in text
