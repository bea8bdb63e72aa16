"""Canary keys never reach logs, the database, or CLI output, even when echoed back."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.logs import setup_logging
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from tests.conftest import CONVAI_KEY
from tests.harness import GROUP, World, make_world, running, wait_for

Factory = Callable[..., EndpointSim]


def dump_database(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        lines = list(conn.iterdump())
    finally:
        conn.close()
    return "\n".join(lines)


async def test_keys_never_leak(
    tmp_path: Path,
    convai: ConvaiSim,
    endpoints: Factory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world: World = make_world(tmp_path, convai, endpoints, names=("a", "b"))
    secrets = [CONVAI_KEY, *world.keys.values()]
    # The worst upstream: a 401 that quotes the whole key it was sent.
    world.sims["a"].echo_key = True
    config = world.config()
    logs = io.StringIO()
    setup_logging("debug", stream=logs, json=True)
    async with running(config):
        await wait_for(lambda: world.sims["b"].requests >= 2, what="probes")
        world.sims["a"].api_key = "sk-rotated-so-the-old-key-fails"
        world.sims["a"].set(Behaviour.UNAUTHORIZED)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
    path = str(world.config_path())
    outputs = []
    for argv in (
        ["status", "-c", path, "--json"],
        ["status", "-c", path],
        ["history", "-c", path, "--json"],
        ["explain", "-c", path, GROUP],
        ["check", "-c", path, "--json"],
        ["models", "list", "-c", path],
    ):
        await asyncio.to_thread(main, argv)  # the CLI runs its own event loop
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
    text = {
        "logs": logs.getvalue(),
        "database": dump_database(tmp_path / "monitor.db"),
        "cli": "\n".join(outputs),
    }
    assert "auth_error" in text["database"]  # the echoed-key answer was recorded...
    assert "failover_completed" in text["logs"]
    for where, content in text.items():
        for secret in secrets:
            assert secret not in content, f"a key leaked into {where}"
            assert secret[-16:] not in content, f"part of a key leaked into {where}"
