"""Prometheus metrics. Labels carry group, endpoint, outcome and kind names only: never a
URL, a key or anything else that could be secret."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from monitor.domain.health import Health
from monitor.domain.outcome import ProbeResult

# No `*_created` series: Prometheus' text format does not use them (a fifth of the lines).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Probe latencies run from a few ms (a local vLLM) to tens of seconds (a cold model).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_UP = {Health.UP: 1, Health.DOWN: 0, Health.UNKNOWN: -1}


def _number(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _label(value: str) -> str:
    """A label value as the text format escapes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**pairs: str) -> str:
    # Sorted by name, as prometheus_client writes them, so a scrape reads the same.
    return ",".join(f'{name}="{_label(value)}"' for name, value in sorted(pairs.items()))


@dataclass(slots=True)
class _Series:
    """One endpoint's samples, with its label text escaped once, when it first appears."""

    labels: str
    buckets: list[int]
    latency_sum: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    up: int | None = None
    active: int | None = None
    # Its latency, probes and tokens lines, once /metrics has been scraped (see
    # EndpointSeries.probe).
    text: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    kind: str
    help: str

    def head(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"


_LATENCY = _Family(
    "convai_monitor_probe_latency_seconds",
    "histogram",
    "Latency of probes that got an answer, by group and endpoint.",
)
_PROBES = _Family(
    "convai_monitor_probes_total", "counter", "Probes by group, endpoint and outcome kind."
)
_TOKENS = _Family(
    "convai_monitor_probe_tokens_total",
    "counter",
    "Tokens spent by probes as the endpoints reported them, by kind (prompt, completion).",
)
_UP_FAMILY = _Family(
    "convai_monitor_endpoint_up",
    "gauge",
    "1 if the endpoint is judged up, 0 if down, -1 while unknown.",
)
_ACTIVE = _Family(
    "convai_monitor_active_endpoint",
    "gauge",
    "1 for the endpoint each group points at (as the daemon believes), 0 for the others.",
)
_VANTAGE = _Family(
    "convai_monitor_vantage_endpoint_up",
    "gauge",
    "Each instance's own view of each endpoint, as the leader last read it: 1 up, "
    "0 down, -1 unknown (the leader acts on the quorum of these).",
)
_BUCKET_TEXT = tuple(f'le="{_number(b)}"' for b in (*_LATENCY_BUCKETS, float("inf")))


def _text(series: _Series) -> tuple[str, str, str]:
    """An endpoint's latency, probes and tokens lines. The loop thread bumps the counts
    without a lock: each copy below is one C call that holds the GIL throughout."""
    labels, buckets = series.labels, list(series.buckets)
    total, outcomes, spent = series.latency_sum, dict(series.outcomes), dict(series.tokens)
    latency = ""
    if any(buckets):
        name, lines, cumulative = _LATENCY.name, [], 0
        for le, count in zip(_BUCKET_TEXT, buckets, strict=True):
            cumulative += count
            lines.append(f"{name}_bucket{{{labels},{le}}} {cumulative}.0\n")
        lines.append(f"{name}_count{{{labels}}} {cumulative}.0\n")
        lines.append(f"{name}_sum{{{labels}}} {_number(total)}\n")
        latency = "".join(lines)
    probes = "".join(
        f'{_PROBES.name}{{{labels},outcome="{_label(kind)}"}} {count}.0\n'
        for kind, count in sorted(outcomes.items())
    )
    tokens = "".join(
        f'{_TOKENS.name}{{{labels},kind="{kind}"}} {count}.0\n'
        for kind, count in sorted(spent.items())
    )
    return latency, probes, tokens


class EndpointSeries:
    """The per-endpoint families, kept and written here rather than by prometheus_client.

    Its exposition validates and escapes every label of every sample on each scrape: at
    2,000 endpoints (38,000 lines) a render took 330-530 ms, long enough for the server
    thread's hold on the GIL to show in probe timing every 15 s. Here each endpoint's
    label text is escaped once, and a render only joins strings. The output is the same
    text prometheus_client writes (tests/test_metrics.py compares the two).
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._scraped = False
        self._vantages: dict[tuple[str, str, str], tuple[str, int]] = {}
        # Writers are the event loop; the reader is the HTTP server's thread. New keys and
        # removals take the lock; a render copies under it, then writes without it.
        self._lock = threading.Lock()

    def _get(self, group: str, endpoint: str) -> _Series:
        series = self._series.get((group, endpoint))
        if series is None:
            with self._lock:
                series = self._series.setdefault(
                    (group, endpoint),
                    _Series(_labels(group=group, endpoint=endpoint), [0] * len(_BUCKET_TEXT)),
                )
        return series

    def probe(self, result: ProbeResult, health: Health) -> None:
        series = self._get(result.group, result.endpoint)
        kind = result.outcome.value
        series.outcomes[kind] = series.outcomes.get(kind, 0) + 1
        if result.latency_ms is not None:
            seconds = result.latency_ms / 1000.0
            series.latency_sum += seconds
            # Cumulative counts are built at render time; here, one bucket per answer.
            index = next(
                (i for i, bound in enumerate(_LATENCY_BUCKETS) if seconds <= bound),
                len(_LATENCY_BUCKETS),
            )
            series.buckets[index] += 1
        for kind, tokens in (
            ("prompt", result.prompt_tokens),
            ("completion", result.completion_tokens),
        ):
            if tokens:
                series.tokens[kind] = series.tokens.get(kind, 0) + tokens
        series.up = _UP[health]
        if self._scraped:
            # Written here, a probe at a time, rather than all at once when scraped: at
            # 2,000 endpoints a render took 37 ms of the only core from the probes every
            # 15 s, and the answers that came in meanwhile read that much slower. Only
            # once someone scrapes: a daemon nobody scrapes writes nothing.
            series.text = _text(series)

    def health(self, group: str, endpoint: str, health: Health) -> None:
        self._get(group, endpoint).up = _UP[health]

    def set_active(self, group: str, endpoint: str, active: bool) -> None:
        self._get(group, endpoint).active = 1 if active else 0

    def vantage(self, group: str, endpoint: str, vantage: str, health: Health) -> None:
        key = (group, endpoint, vantage)
        known = self._vantages.get(key)
        text = (
            known[0]
            if known is not None
            else _labels(group=group, endpoint=endpoint, vantage=vantage)
        )
        with self._lock:
            self._vantages[key] = (text, _UP[health])

    def forget(self, group: str, endpoint: str) -> None:
        """An endpoint removed from the config: its series leave the scrape."""
        with self._lock:
            self._series.pop((group, endpoint), None)
            for key in [k for k in self._vantages if k[:2] == (group, endpoint)]:
                del self._vantages[key]

    def render(self) -> str:
        self._scraped = True
        with self._lock:
            series = [(s, s.text, s.up, s.active) for s in self._series.values()]
            vantages = list(self._vantages.values())
        latency: list[str] = [_LATENCY.head()]
        probes: list[str] = [_PROBES.head()]
        tokens: list[str] = [_TOKENS.head()]
        up: list[str] = [_UP_FAMILY.head()]
        active: list[str] = [_ACTIVE.head()]
        for one, text, health, chosen in series:
            if text is None:  # not probed since the first scrape began
                text = _text(one)  # (not kept: the loop thread owns `text`)
            if text[0]:
                latency.append(text[0])
            if text[1]:
                probes.append(text[1])
            if text[2]:
                tokens.append(text[2])
            if health is not None:
                up.append(f"{_UP_FAMILY.name}{{{one.labels}}} {health}.0\n")
            if chosen is not None:
                active.append(f"{_ACTIVE.name}{{{one.labels}}} {chosen}.0\n")
        vantage = [_VANTAGE.head()]
        vantage.extend(f"{_VANTAGE.name}{{{text}}} {value}.0\n" for text, value in vantages)
        return "".join(
            "".join(family)
            for family in (latency, probes, tokens, up, active, vantage)
            if len(family) > 1
        )


class Metrics:
    """One registry per daemon, so tests and embedded runs do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Per-endpoint families: thousands of series, written by EndpointSeries.
        self.endpoints = EndpointSeries()
        self.leader = Gauge(
            "convai_monitor_leader",
            "1 while this instance holds the leader lease (it syncs, switches and pages).",
            registry=r,
        )
        self.isolated = Gauge(
            "convai_monitor_isolated",
            "1 while this instance sees every endpoint and Convai unreachable (its view of "
            "the endpoints is not counted).",
            registry=r,
        )
        self.switches = Counter(
            "convai_monitor_switches",
            "Switches by group, kind (failover, failback, manual) and result.",
            ["group", "kind", "result"],
            registry=r,
        )
        self.convai_calls = Counter(
            "convai_monitor_convai_calls",
            "Calls to Convai's API by operation and outcome (success, error, unreachable).",
            ["operation", "outcome"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "convai_monitor_alert_deliveries",
            "Alert delivery attempts by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=r,
        )
        self.scheduler_lag = Histogram(
            "convai_monitor_scheduler_lag_seconds",
            "How late probes start against their schedule.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.missed_runs = Counter(
            "convai_monitor_missed_runs",
            "Probe runs skipped because the previous one was still running.",
            registry=r,
        )

    def probe(self, result: ProbeResult, health: Health) -> None:
        self.endpoints.probe(result, health)

    def health(self, group: str, endpoint: str, health: Health) -> None:
        self.endpoints.health(group, endpoint, health)

    def vantage_health(self, group: str, endpoint: str, vantage: str, health: Health) -> None:
        self.endpoints.vantage(group, endpoint, vantage, health)

    def set_active(self, group: str, endpoints: list[str], active: str | None) -> None:
        for name in endpoints:
            self.endpoints.set_active(group, name, name == active)

    def forget(self, group: str, endpoint: str) -> None:
        self.endpoints.forget(group, endpoint)

    def convai_call(self, operation: str, outcome: str) -> None:
        self.convai_calls.labels(operation, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.endpoints.render().encode()
