"""The read model behind status, history, explain and the page, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.alerts.targets import target_id
from monitor.config import Config, load_config
from monitor.domain.alerts import Severity
from monitor.domain.latency import Bucket, fold
from monitor.report import iso
from monitor.state import PAGE_DAYS, State, daily_uptime, latency_series
from monitor.store import Store
from monitor.store.outbox import Deliveries, Outbox, Route
from monitor.store.switching import SwitchLog
from tests.conftest import config_dict, write_config
from tests.test_store import result

DAY = 86400
HOUR = 3600
# Noon UTC on a day: the current day is half gone, the current hour just begun.
NOW = 1_800_000_000 - 1_800_000_000 % DAY + 12 * HOUR + 60.0


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        # nothing probed: every day is unknown, not 0% and not 100%
        ([], {}),
        # two hours today: 3 of 4 passed
        ([(HOUR, 2, 2), (2 * HOUR, 2, 1)], {-1: 75.0}),
        # yesterday and 89 days back (the first cell); 90 days back falls off the bar
        ([(DAY, 10, 10), (89 * DAY, 4, 0), (90 * DAY, 4, 4)], {-2: 100.0, 0: 0.0}),
    ],
)
def test_daily_uptime(hours: list[tuple[int, int, int]], expected: dict[int, float]) -> None:
    """`hours` are (seconds before NOW, probes, successes)."""
    stats = [Bucket(int((NOW - ago) // HOUR) * HOUR, HOUR, p, s, {}) for ago, p, s in hours]
    days = daily_uptime(stats, NOW, PAGE_DAYS)
    assert len(days) == PAGE_DAYS
    assert days[-1].day == "2027-01-15"  # today (NOW), UTC
    assert days[0].day == "2026-10-18"
    for index, day in enumerate(days):
        want = expected.get(index, expected.get(index - PAGE_DAYS))
        assert day.uptime == want, (index, day)
        assert (day.probes == 0) == (want is None)


def test_latency_series_hourly_then_finer() -> None:
    current = int(NOW // HOUR) * HOUR
    hours = [
        Bucket(current - 30 * HOUR, HOUR, 9, 9, {1: 9}),  # before the 24 h: left out
        Bucket(current - 5 * HOUR, HOUR, 1, 0, {}),  # probed, nothing passed: no latency
        Bucket(current - HOUR, HOUR, 3, 3, {40: 2, 60: 1}),  # 1.1^40 = 45.3, 1.1^60 = 304.5
    ]
    raw = [(current + i, True, 100.0) for i in range(0, 60, 1)]
    series = latency_series(hours, raw, NOW, 24 * HOUR)
    assert [(p.probes, p.p50, p.p95) for p in series[:2]] == [(1, None, None), (3, 45.3, 304.5)]
    # The chart spans 5 h of data: the raw minute after the rollups is drawn in steps of
    # 5 h / 48, at most 300 s: one point here.
    (tail,) = series[2:]
    assert (tail.seconds, tail.probes) == (300.0, 60)
    assert 100 <= (tail.p50 or 0) <= 110


@pytest.mark.parametrize(
    ("age", "step"),
    [(10.0, 1.0), (600.0, 12.5), (5 * HOUR, 300.0)],
)
def test_latency_series_of_a_young_daemon_fills_the_chart(age: float, step: float) -> None:
    """A daemon started `age` ago, nothing rolled up: points `step` apart, never just one."""
    raw = [(NOW - age + i * age / 100, True, 50.0) for i in range(100)]
    series = latency_series([], raw, NOW, 24 * HOUR)
    assert {p.seconds for p in series} == {step}
    assert len(series) >= 2


def test_latency_series_empty() -> None:
    assert latency_series([], [(NOW - 2 * 86400, True, 5.0)], NOW, 24 * HOUR) == []


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    s.migrate()
    return s


def test_hours_join_rollups_and_raw_rows(store: Store) -> None:
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    endpoint = ids[("g", "a")]
    rows = [(endpoint, result(NOW - 3 * DAY + 60 * i, ok=i % 4 != 0)) for i in range(40)]
    rows += [(endpoint, result(NOW - 2 * HOUR + 60 * i, latency=50.0)) for i in range(10)]
    rows += [(endpoint, result(NOW - 30 + i, latency=200.0)) for i in range(5)]  # this hour
    store.save(rows, {})
    # Everything before this hour is rolled up, then the raw rows are pruned: the page
    # must still show those days.
    store.rollup(NOW)
    store.prune(NOW, HOUR, 400 * DAY)
    assert store.result_count() == 5
    hours, raw = store.hours(endpoint, NOW - 90 * DAY, NOW, histograms_from=NOW - DAY)
    assert len(raw) == 5
    assert sum(h.probes for h in hours) == 50
    assert sum(h.successes for h in hours) == 40
    by_day = {d.day: d for d in daily_uptime(hours + fold(raw, HOUR), NOW, PAGE_DAYS)}
    assert by_day["2027-01-12"].uptime == 75.0
    assert by_day["2027-01-15"].uptime == 100.0
    # Three days back is outside the latency chart: its histogram is not even parsed.
    assert all(h.histogram == {} for h in hours if h.start < NOW - DAY)
    series = latency_series(hours, raw, NOW, 24 * HOUR)
    assert sum(p.probes for p in series) == 15
    # Histogram percentiles are at most 10% high.
    assert 200 <= (series[-1].p50 or 0) <= 220
    assert 50 <= (series[0].p50 or 0) <= 55


def _config(tmp_path: Path, base_url: str, **extra: object) -> Config:
    group = {
        "model_group_name": "g",
        "model_name": "m",
        "endpoints": [{"name": "a", "base_url": base_url, "api_key": "k-1234567890"}],
    }
    return load_config(write_config(tmp_path, {**config_dict(tmp_path, [group]), **extra}))


def test_status_and_page_never_show_a_query_string(tmp_path: Path, store: Store) -> None:
    token = "Zq81Xc0aSecretToken"
    config = _config(tmp_path, f"http://127.0.0.1:9/v1?api-key={token}")
    ids = store.sync_endpoints([("g", "a", config.groups[0].endpoints[0].base_url)])
    store.save([(ids[("g", "a")], result(NOW - 10))], {})
    SwitchLog(store).observe_registration(
        "g",
        registered_base_url=config.groups[0].endpoints[0].base_url,
        model_name="m",
        monitored=True,
        active_endpoint="a",
        at=NOW,
    )
    state = State(config, store)
    page = state.page(NOW)
    endpoint = page["groups"][0]["endpoints"][0]
    assert endpoint["base_url"] == "http://127.0.0.1:9/v1?..."
    assert page["groups"][0]["registered_base_url"] == "http://127.0.0.1:9/v1?..."
    assert token not in repr(page)
    assert token not in repr(state.status(NOW))
    assert endpoint["days"][-1] == {"day": "2027-01-15", "probes": 1, "uptime": 100.0}
    assert endpoint["latency"][-1]["p50"] is not None


def test_timeline_is_newest_first_with_events_and_alert_deliveries(
    tmp_path: Path, store: Store
) -> None:
    url = "json://127.0.0.1:9/hook-Zq81Xc0aSecret"
    config = _config(tmp_path, "http://127.0.0.1:9/v1", alerts={"targets": [{"url": url}]})
    routes = [Route(target_id(url), Severity.INFO)]
    log = SwitchLog(store, Outbox(routes))
    log.record("g", "old", "outside the window", NOW - 8 * DAY)
    log.record("g", "all_down", "every endpoint of g is down", NOW - 100)
    log.record("g", "drift", "g was pointed at http://elsewhere/v1 by someone else", NOW - 50)
    deliveries = Deliveries(store)
    first, second = deliveries.due(NOW)  # all_down and drift both page
    deliveries.attempted(first.id, ok=True, error=None, elapsed_ms=5, at=NOW - 99, retry_at=None)
    deliveries.attempted(
        second.id, ok=False, error="HTTP 503", elapsed_ms=5, at=NOW - 40, retry_at=None
    )
    timeline = State(config, store).page(NOW)["timeline"]
    assert [(e["kind"], e["at"]) for e in timeline] == [
        ("alert_failed", iso(NOW - 40)),
        ("drift", iso(NOW - 50)),
        ("alert_delivered", iso(NOW - 99)),
        ("all_down", iso(NOW - 100)),
    ]
    assert timeline[1]["message"].startswith("g was pointed at")
    assert "targets[0] (json://...)" in timeline[0]["message"]
    assert "HTTP 503" in timeline[0]["message"]
    assert "Zq81Xc0aSecret" not in repr(timeline)


def test_an_alert_delivered_to_several_targets_is_one_timeline_entry(
    tmp_path: Path, store: Store
) -> None:
    urls = ["json://127.0.0.1:9/oncall", "json://127.0.0.1:9/pager"]
    config = _config(
        tmp_path, "http://127.0.0.1:9/v1", alerts={"targets": [{"url": u} for u in urls]}
    )
    log = SwitchLog(store, Outbox([Route(target_id(u), Severity.INFO) for u in urls]))
    log.record("g", "all_down", "every endpoint of g is down", NOW - 100)
    deliveries = Deliveries(store)
    for i, due in enumerate(deliveries.due(NOW)):
        deliveries.attempted(
            due.id, ok=True, error=None, elapsed_ms=5, at=NOW - 90 + i, retry_at=None
        )
    timeline = State(config, store).page(NOW)["timeline"]
    assert [(e["kind"], e["at"]) for e in timeline] == [
        ("alert_delivered", iso(NOW - 89)),
        ("all_down", iso(NOW - 100)),
    ]
    assert timeline[0]["message"] == (
        "alert about all_down delivered to targets[0] (json://...), targets[1] (json://...)"
    )


def test_a_hold_shows_as_held_and_a_pin_as_pinned(tmp_path: Path, store: Store) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    log = SwitchLog(store)
    log.observe_registration(
        "g", registered_base_url=None, model_name="m", monitored=True, active_endpoint="a", at=NOW
    )

    def state() -> str:
        return str(State(config, store).status(NOW)["groups"][0]["state"])

    log.pin("g", "a", NOW + 3600, NOW - 30)
    assert state() == "pinned"
    # `failover --hold` pins the group and records `held`.
    log.record("g", "held", "held on a for 1h after a manual switch", NOW - 20)
    assert state() == "held"
    log.unpin("g", NOW - 10)
    assert state() == "healthy"
    log.pin("g", "a", NOW + 3600, NOW - 5)
    assert state() == "pinned"
