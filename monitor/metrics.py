"""Prometheus metrics. Labels carry group, endpoint, outcome and kind names only: never a
URL, a key or anything else that could be secret."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from monitor.domain.health import Health
from monitor.domain.outcome import ProbeResult

# No `*_created` series: Prometheus' text format does not use them, and with a latency
# histogram and three counters per endpoint they were a fifth of every scrape's lines
# (render time 500 -> 330 ms at 2,000 endpoints; the server thread holds the GIL that long).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Probe latencies run from a few ms (a local vLLM) to tens of seconds (a cold model).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_UP = {Health.UP: 1, Health.DOWN: 0, Health.UNKNOWN: -1}


class Metrics:
    """One registry per daemon, so tests and embedded runs do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.probe_latency = Histogram(
            "convai_monitor_probe_latency_seconds",
            "Latency of probes that got an answer, by group and endpoint.",
            ["group", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.probes = Counter(
            "convai_monitor_probes",
            "Probes by group, endpoint and outcome kind.",
            ["group", "endpoint", "outcome"],
            registry=r,
        )
        self.probe_tokens = Counter(
            "convai_monitor_probe_tokens",
            "Tokens spent by probes as the endpoints reported them, by kind (prompt, completion).",
            ["group", "endpoint", "kind"],
            registry=r,
        )
        self.endpoint_up = Gauge(
            "convai_monitor_endpoint_up",
            "1 if the endpoint is judged up, 0 if down, -1 while unknown.",
            ["group", "endpoint"],
            registry=r,
        )
        self.leader = Gauge(
            "convai_monitor_leader",
            "1 while this instance holds the leader lease (it syncs, switches and pages).",
            registry=r,
        )
        self.vantage_up = Gauge(
            "convai_monitor_vantage_endpoint_up",
            "Each instance's own view of each endpoint, as the leader last read it: 1 up, "
            "0 down, -1 unknown (the leader acts on the quorum of these).",
            ["group", "endpoint", "vantage"],
            registry=r,
        )
        self.isolated = Gauge(
            "convai_monitor_isolated",
            "1 while this instance sees every endpoint and Convai unreachable (its view of "
            "the endpoints is not counted).",
            registry=r,
        )
        self.active = Gauge(
            "convai_monitor_active_endpoint",
            "1 for the endpoint each group points at (as the daemon believes), 0 for the others.",
            ["group", "endpoint"],
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
        self.probes.labels(result.group, result.endpoint, result.outcome.value).inc()
        if result.latency_ms is not None:
            self.probe_latency.labels(result.group, result.endpoint).observe(
                result.latency_ms / 1000.0
            )
        for kind, tokens in (
            ("prompt", result.prompt_tokens),
            ("completion", result.completion_tokens),
        ):
            if tokens:
                self.probe_tokens.labels(result.group, result.endpoint, kind).inc(tokens)
        self.health(result.group, result.endpoint, health)

    def health(self, group: str, endpoint: str, health: Health) -> None:
        self.endpoint_up.labels(group, endpoint).set(_UP[health])

    def vantage_health(self, group: str, endpoint: str, vantage: str, health: Health) -> None:
        self.vantage_up.labels(group, endpoint, vantage).set(_UP[health])

    def set_active(self, group: str, endpoints: list[str], active: str | None) -> None:
        for name in endpoints:
            self.active.labels(group, name).set(1 if name == active else 0)

    def convai_call(self, operation: str, outcome: str) -> None:
        self.convai_calls.labels(operation, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
