"""/metrics: the per-endpoint families the daemon writes itself read exactly as
prometheus_client would write them, and a removed endpoint leaves the scrape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.domain.health import Health
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.metrics import _LATENCY_BUCKETS, Metrics
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import EndpointSim
from tests.harness import GROUP, World, free_port, make_world, running, wait_for

# Label values a config may not allow, but the text format must survive all the same.
ODD = ["plain", 'quo"te', "back\\slash", "new\nline"]

# (group, endpoint, outcome, latency_ms, prompt_tokens, completion_tokens, health)
# group, endpoint, outcome, latency ms, prompt and completion tokens, health after it
Probe = tuple[str, str, Outcome, float | None, int | None, int | None, Health]
PROBES: list[Probe] = [
    ("g1", "a", Outcome.OK, 12.0, 9, 1, Health.UP),
    ("g1", "a", Outcome.OK, 50.0, 9, 1, Health.UP),  # on a bucket's bound: counted in it
    ("g1", "a", Outcome.TIMEOUT, None, None, None, Health.UP),
    ("g1", "b", Outcome.HTTP_5XX, 3.5, None, None, Health.DOWN),
    ("g1", "b", Outcome.OK, 61_000.0, 12, 4, Health.DOWN),  # past the last bound: +Inf only
    *[(g, e, Outcome.OK, 250.0, 1, 1, Health.UNKNOWN) for g in ODD for e in ODD],
]


def reference() -> bytes:
    """The same observations through prometheus_client's own metric classes."""
    r = CollectorRegistry()
    latency = Histogram(
        "convai_monitor_probe_latency_seconds",
        "Latency of probes that got an answer, by group and endpoint.",
        ["group", "endpoint"],
        buckets=_LATENCY_BUCKETS,
        registry=r,
    )
    probes = Counter(
        "convai_monitor_probes",
        "Probes by group, endpoint and outcome kind.",
        ["group", "endpoint", "outcome"],
        registry=r,
    )
    tokens = Counter(
        "convai_monitor_probe_tokens",
        "Tokens spent by probes as the endpoints reported them, by kind (prompt, completion).",
        ["group", "endpoint", "kind"],
        registry=r,
    )
    up = Gauge(
        "convai_monitor_endpoint_up",
        "1 if the endpoint is judged up, 0 if down, -1 while unknown.",
        ["group", "endpoint"],
        registry=r,
    )
    active = Gauge(
        "convai_monitor_active_endpoint",
        "1 for the endpoint each group points at (as the daemon believes), 0 for the others.",
        ["group", "endpoint"],
        registry=r,
    )
    vantage = Gauge(
        "convai_monitor_vantage_endpoint_up",
        "Each instance's own view of each endpoint, as the leader last read it: 1 up, "
        "0 down, -1 unknown (the leader acts on the quorum of these).",
        ["group", "endpoint", "vantage"],
        registry=r,
    )
    values = {Health.UP: 1, Health.DOWN: 0, Health.UNKNOWN: -1}
    for group, endpoint, outcome, ms, prompt, completion, health in PROBES:
        probes.labels(group, endpoint, outcome.value).inc()
        if ms is not None:
            latency.labels(group, endpoint).observe(ms / 1000.0)
        for kind, count in (("prompt", prompt), ("completion", completion)):
            if count:
                tokens.labels(group, endpoint, kind).inc(count)
        up.labels(group, endpoint).set(values[health])
    active.labels("g1", "a").set(1)
    active.labels("g1", "b").set(0)
    vantage.labels("g1", "a", "node-2").set(0)
    vantage.labels("g1", "b", 'no"de-3').set(1)
    return generate_latest(r)


def feed(metrics: Metrics, probes: list[Probe]) -> None:
    for group, endpoint, outcome, ms, prompt, completion, health in probes:
        result = ProbeResult(0.0, group, endpoint, outcome, ms, None, None, prompt, completion)
        metrics.probe(result, health)


def settle(metrics: Metrics) -> None:
    """The reference's active endpoint and other vantages' views."""
    metrics.set_active("g1", ["a", "b"], "a")
    metrics.vantage_health("g1", "a", "node-2", Health.DOWN)
    metrics.vantage_health("g1", "b", 'no"de-3', Health.UP)


def ours() -> Metrics:
    metrics = Metrics()
    feed(metrics, PROBES)
    settle(metrics)
    return metrics


def families(
    text: bytes,
) -> dict[str, tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    parsed = {}
    for family in text_string_to_metric_families(text.decode()):
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples)
        parsed[family.name] = (family.type, family.documentation, samples)
    return parsed


def test_the_endpoint_families_read_as_prometheus_client_writes_them() -> None:
    text = ours().render()
    expected = families(reference())
    got = families(text)
    for name, family in expected.items():
        assert got[name] == family, name
    # Line for line, too (not only after parsing): same label order, same number format.
    ours_lines = set(text.decode().splitlines())
    assert set(reference().decode().splitlines()) <= ours_lines


def test_probes_after_a_scrape_reach_the_next_one() -> None:
    # After the first scrape each probe writes its endpoint's lines itself (the render
    # only joins them): what it writes must be the counts as they are then.
    metrics = Metrics()
    half = len(PROBES) // 2
    feed(metrics, PROBES[:half])
    first = families(metrics.render())
    feed(metrics, PROBES[half:])
    settle(metrics)
    # Written by the probes, not left for the scrape.
    series = metrics.endpoints._series
    assert all(series[(g, e)].text is not None for g, e, *_rest in PROBES[half:])
    got, expected = families(metrics.render()), families(reference())
    assert got != first
    for name, family in expected.items():
        assert got[name] == family, name


def test_a_removed_endpoint_leaves_the_scrape() -> None:
    metrics = ours()
    metrics.forget("g1", "b")
    text = metrics.render().decode()
    assert 'endpoint="b",group="g1"' not in text
    assert 'endpoint="a",group="g1"' in text
    assert "convai_monitor_scheduler_lag_seconds" in text  # the registry's families stay


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Callable[..., EndpointSim]) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


async def test_a_reload_that_removes_an_endpoint_takes_it_off_metrics(world: World) -> None:
    port = free_port()
    world.extra = {"server": {"listen": f"127.0.0.1:{port}"}}
    path = world.config_path()
    url = f"http://127.0.0.1:{port}/metrics"
    async with running(world.config(), config_path=str(path)) as daemon:
        await wait_for(lambda: world.sims["b"].requests >= 1, what="b probed")
        async with httpx.AsyncClient() as client:

            async def scrape() -> str:
                return (await client.get(url)).text

            before = await scrape()
            assert f'convai_monitor_endpoint_up{{endpoint="b",group="{GROUP}"}}' in before
            data = yaml.safe_load(path.read_text())
            data["groups"][0]["endpoints"] = [
                e for e in data["groups"][0]["endpoints"] if e["name"] != "b"
            ]
            path.write_text(yaml.safe_dump(data))
            await daemon.reload()
            after = await scrape()
    assert 'endpoint="b"' not in after
    assert f'convai_monitor_endpoint_up{{endpoint="a",group="{GROUP}"}}' in after
