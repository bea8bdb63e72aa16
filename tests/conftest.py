"""Shared fixtures: real loopback simulators, real SQLite files, a real PostgreSQL server
(started once per session from the machine's binaries), config files on disk."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from monitor.redact import redactor
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import EndpointSim
from monitor.sim.postgres import LocalPostgres, PostgresUnavailable
from monitor.sim.receiver import AlertReceiver

CONVAI_KEY = "canary-convai-key-5f1e2d3c"
MODEL = "sim-model"


def canary_key(n: int) -> str:
    """The n-th canary endpoint key. Real keys often do not start with `sk-` (vLLM's
    `--api-key` is any string, Google keys start `AIza`, gateways use hex or UUIDs), and the
    redactor masks `sk-...` by pattern alone; these shapes match none of its patterns, so
    only the registry filled at config load can hide them (tests/test_secrets.py checks)."""
    seed = hashlib.sha256(f"canary-{n}".encode()).hexdigest()
    shape = n % 4
    if shape == 0:
        return f"pelican{4718 + n}quartz"  # a plain word with digits
    if shape == 1:
        return str(uuid.UUID(seed[:32]))
    if shape == 2:
        return seed[:40]  # 40 hex characters, like a SHA-1 token
    return f"AIzaSy{seed[:33]}"  # Google's shape: AIza + 35 characters


@pytest.fixture(autouse=True)
def _fresh_redactor() -> Iterator[None]:
    # Secrets registered by one test's config must not mask another test's output.
    redactor.clear()
    yield
    redactor.clear()
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One real PostgreSQL server for the whole session; each test gets its own database.

    A test that needs PostgreSQL and cannot have it fails: a skip would let the suite pass
    with half of the storage code never run.
    """
    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"this test needs PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


_databases = itertools.count(1)


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the store supports: storage tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def endpoints() -> Iterator[Callable[..., EndpointSim]]:
    """Factory of started endpoint simulators, all stopped at teardown."""
    started: list[EndpointSim] = []

    def make(api_key: str | None = None, model: str = MODEL, **kwargs: Any) -> EndpointSim:
        sim = EndpointSim(model=model, api_key=api_key, **kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def convai() -> Iterator[ConvaiSim]:
    sim = ConvaiSim(api_keys=[CONVAI_KEY])
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    """A started alert receiver (apprise json:// targets post here)."""
    with AlertReceiver() as r:
        yield r


def endpoint_entry(name: str, sim: EndpointSim | str, key: str) -> dict[str, Any]:
    url = sim if isinstance(sim, str) else sim.base_url
    return {"name": name, "base_url": url, "api_key": key}


def config_dict(
    tmp_path: Path,
    groups: list[dict[str, Any]],
    convai_url: str = "http://127.0.0.1:9",
    **defaults: Any,
) -> dict[str, Any]:
    policy = {"interval": 0.5, "fast_interval": 0.1, "timeout": 0.4, "fall": 3, "rise": 2}
    policy.update(defaults)
    return {
        "convai": {
            "api_key": CONVAI_KEY,
            "base_url": convai_url,
            "retry_budget": 1.0,
            "timeout": 1.0,
        },
        "storage": {"url": f"sqlite:///{tmp_path / 'monitor.db'}"},
        "defaults": policy,
        "groups": groups,
    }


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
