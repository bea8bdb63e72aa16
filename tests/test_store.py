"""The store on a real SQLite file: results, health, windows, rollups, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.domain.health import Health, HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.store import Store

HOUR = 3600.0
NOW = 1_800_000_000.0  # a fixed "now" on an hour boundary plus change
KEY = ("g", "a")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'm.db'}")
    s.migrate()
    return s


def result(at: float, ok: bool = True, latency: float | None = 100.0) -> ProbeResult:
    return ProbeResult(
        at=at,
        group="g",
        endpoint="a",
        outcome=Outcome.OK if ok else Outcome.HTTP_5XX,
        latency_ms=latency if ok else None,
        http_status=200 if ok else 500,
    )


def test_migrate_twice_is_a_no_op(store: Store) -> None:
    store.migrate()
    assert store.schema_current()


def test_health_survives_a_reopen(store: Store, tmp_path: Path) -> None:
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    down = HealthState(Health.DOWN, 0, 5, since=NOW - 10, last_probe_at=NOW)
    store.save([(ids[KEY], result(NOW, ok=False))], {ids[KEY]: down})
    store.close()
    reopened = Store(f"sqlite:///{tmp_path / 'm.db'}")
    assert reopened.health()[KEY] == down
    # Same endpoint, same id; a changed URL starts its health afresh.
    assert reopened.sync_endpoints([("g", "a", "http://x/v1")]) == ids
    reopened.sync_endpoints([("g", "a", "http://y/v1")])
    assert reopened.health()[KEY].health is Health.UNKNOWN


def test_window_uptime_and_percentiles(store: Store) -> None:
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    rows = [(ids[KEY], result(NOW - 60 * i, latency=float(10 * (i + 1)))) for i in range(50)]
    rows += [(ids[KEY], result(NOW - 60 * i - 30, ok=False)) for i in range(10)]
    store.save(rows, {})
    window = store.window(ids[KEY], HOUR, NOW)
    assert window.probes == 60
    assert window.successes == 50
    assert window.uptime == pytest.approx(50 / 60)
    assert window.p50_ms == 250.0  # nearest rank over 10..500 ms
    assert window.p95_ms == 480.0
    empty = store.window(ids[KEY], HOUR, NOW - 10 * HOUR)
    assert empty.probes == 0
    assert empty.uptime is None
    assert empty.p50_ms is None


def test_rollups_answer_after_raw_rows_are_pruned(store: Store) -> None:
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    eid = ids[KEY]
    # 3 days of one probe a minute, 1 failure in 10, latency 100 ms (200 ms every 4th).
    rows = []
    for i in range(3 * 24 * 60):
        at = NOW - 3 * 86400 + 60 * i
        rows.append((eid, result(at, ok=i % 10 != 0, latency=200.0 if i % 4 == 0 else 100.0)))
    store.save(rows, {})
    before = store.window(eid, 7 * 86400, NOW)
    folded = store.rollup(NOW)
    assert folded >= 72
    removed = store.prune(NOW, retention=HOUR, rollup_retention=30 * 86400)
    assert removed > 0
    assert store.result_count() <= 61
    after = store.window(eid, 7 * 86400, NOW)
    assert after.probes == before.probes
    assert after.successes == before.successes
    assert after.uptime == pytest.approx(0.9, abs=0.001)
    # Histogram percentiles are within one 10% bucket of the exact ones.
    assert before.p50_ms is not None
    assert after.p50_ms is not None
    assert before.p50_ms <= after.p50_ms <= before.p50_ms * 1.1
    assert after.p95_ms is not None
    assert 200.0 <= after.p95_ms <= 220.0
    # Rolling up again does nothing new; pruning the rollups drops old hours.
    assert store.rollup(NOW) == 0
    store.prune(NOW, retention=HOUR, rollup_retention=86400)
    assert store.window(eid, 7 * 86400, NOW).probes < before.probes


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    from monitor.store import StoreError

    store = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'm.db'}")
    with pytest.raises(StoreError, match="unable to open database file"):
        store.migrate()
