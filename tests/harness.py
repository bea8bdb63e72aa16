"""A small world for end-to-end tests: endpoints, a Convai API, a config, a daemon."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from monitor.app import Daemon, open_store
from monitor.config import Config, load_config
from monitor.logs import setup_logging
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.store.switching import SwitchLog
from tests.conftest import CONVAI_KEY, MODEL, canary_key, config_dict, write_config

GROUP = "my-turbo"


def poll(condition: Callable[[], bool], limit: float, what: str) -> None:
    """Blocking twin of wait_for, for tests that drive a daemon in a subprocess."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_json(*argv: str, codes: tuple[int, ...] = (0,)) -> Any:
    """What `convai-monitor ARGV --json` prints. In its own process, as a user runs it:
    in-process, a daemon running in the test would print into the same stdout (from
    async code, call it through asyncio.to_thread). `codes`: the exit codes expected
    (`status` exits 1 once the daemon has stopped)."""
    done = subprocess.run(
        [sys.executable, "-m", "monitor", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in codes, done.stderr
    return json.loads(done.stdout)


@contextmanager
def daemon_process(
    path: Path, log: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`convai-monitor run -c path [args]` in a subprocess, output to `log`; killed at the
    end."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(path), *(args or [])],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def wait_for(
    condition: Callable[[], bool], limit: float = 8.0, what: str = "condition"
) -> float:
    """Poll until `condition()`; return the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def settled(world: World) -> None:
    """Every endpoint probed enough to be judged (rise is 2): a test that breaks one now
    is not racing the first probes of the others."""
    await wait_for(
        lambda: all(
            s.requests >= 3 for s in world.sims.values() if s.behaviour is not Behaviour.REFUSE
        ),
        what="every endpoint judged",
    )


@dataclass
class World:
    tmp_path: Path
    convai: ConvaiSim
    sims: dict[str, EndpointSim]
    keys: dict[str, str]
    policy: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def config_path(self, **policy: Any) -> Path:
        group = {
            "model_group_name": GROUP,
            "model_name": MODEL,
            "endpoints": [
                {"name": n, "base_url": s.base_url, "api_key": self.keys[n]}
                for n, s in self.sims.items()
            ],
        }
        data = config_dict(
            self.tmp_path, [group], self.convai.base_url, **{**self.policy, **policy}
        )
        data.update(self.extra)
        return write_config(self.tmp_path, data)

    def config(self, **policy: Any) -> Config:
        return load_config(self.config_path(**policy))

    def registered(self) -> dict[str, Any]:
        record = self.convai.record(GROUP)
        assert record is not None
        return record

    def update_behind_our_back(self, name: str) -> None:
        """Point the group at endpoint `name` through Convai's API, as if an update the
        daemon sent had landed but its answer was lost with the process."""
        response = httpx.post(
            f"{self.convai.base_url}/llm-models/update",
            headers={"CONVAI-API-KEY": CONVAI_KEY},
            json={
                "model_group_name": GROUP,
                "base_url": self.sims[name].base_url,
                "api_key": self.keys[name],
            },
            timeout=5,
        )
        assert response.status_code == 200

    def updates(self) -> int:
        return len([c for c in self.convai.calls_of("update") if c.status == 200])

    def events(self, config: Config) -> list[str]:
        store = open_store(config, migrate=False)
        try:
            return [e.kind for e in SwitchLog(store).history(None, 0)]
        finally:
            store.close()


def make_world(
    tmp_path: Path,
    convai: ConvaiSim,
    endpoints: Callable[..., EndpointSim],
    names: tuple[str, ...] = ("a", "b", "c"),
) -> World:
    keys = {n: canary_key(i) for i, n in enumerate(names)}
    sims = {n: endpoints(api_key=keys[n]) for n in names}
    first = names[0]
    convai.seed(GROUP, MODEL, keys[first], base_url=sims[first].base_url)
    return World(tmp_path, convai, sims, keys)


@asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    if not structlog.is_configured():
        # As `convai-monitor run` does: logs go to stderr. structlog's default prints to
        # stdout, where an in-process CLI call (cli_json) would read them as its output.
        setup_logging("debug")
    store = open_store(config)
    daemon = Daemon(config, store, **kwargs)
    task = asyncio.create_task(daemon.run())
    try:
        ready = asyncio.create_task(daemon.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # raises what stopped it
        assert ready in done, "daemon did not become ready"
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=15)
        store.close()
