"""The store on a real SQLite file and a real PostgreSQL database: results, health,
windows, rollups, retention, migrations."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from structlog.testing import capture_logs

from monitor.domain.health import Health, HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.runtime.leader import Leadership
from monitor.store import Store
from monitor.store.lease import Leases
from monitor.store.switching import SwitchLog, SwitchRecord
from monitor.store.tables import ResultRow

HOUR = 3600.0
NOW = 1_800_000_000.0  # a fixed "now" on an hour boundary plus change
KEY = ("g", "a")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


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


def test_the_deadlines_learnt_at_start_are_this_vantages_successes_in_time_order(
    db_url: str,
) -> None:
    east, west = Store(db_url, "east"), Store(db_url, "west")
    east.migrate()
    ids = east.sync_endpoints([("g", "a", "http://x/v1"), ("g", "b", "http://y/v1")])
    a, b = ids[("g", "a")], ids[("g", "b")]
    other = replace(result(NOW - 50, latency=1.0), endpoint="b")
    # Written out of order, across batches, with failures, an unanswered success, one
    # from before the hour and one from another vantage.
    east.save(
        [
            (a, result(NOW - 10, latency=30.0)),
            (a, result(NOW - 30, latency=10.0)),
            (a, result(NOW - 20, ok=False)),
            (b, other),
            (a, result(NOW - 2 * HOUR, latency=99.0)),
            (a, replace(result(NOW - 15), latency_ms=None)),
        ],
        {},
    )
    east.save([(a, result(NOW - 25, latency=20.0))], {})
    west.save([(a, result(NOW - 5, latency=500.0))], {})
    learnt = east.latencies(NOW - HOUR)
    assert {key: (list(times), list(values)) for key, (times, values) in learnt.items()} == {
        ("g", "a"): ([NOW - 30, NOW - 25, NOW - 10], [10.0, 20.0, 30.0]),
        ("g", "b"): ([NOW - 50], [1.0]),
    }
    assert list(west.latencies(NOW - HOUR)[("g", "a")][1]) == [500.0]
    east.close()
    west.close()


def test_health_survives_a_reopen(store: Store, db_url: str) -> None:
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    down = HealthState(Health.DOWN, 0, 5, since=NOW - 10, last_probe_at=NOW)
    store.save([(ids[KEY], result(NOW, ok=False))], {ids[KEY]: down})
    store.close()
    reopened = Store(db_url)
    assert reopened.health()[KEY] == down
    # Same endpoint, same id; a changed URL starts its health afresh.
    assert reopened.sync_endpoints([("g", "a", "http://x/v1")]) == ids
    reopened.sync_endpoints([("g", "a", "http://y/v1")])
    assert reopened.health()[KEY].health is Health.UNKNOWN
    reopened.close()


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


def test_probe_detail_with_nul_bytes_is_stored(store: Store) -> None:
    # An endpoint's error body can hold anything; PostgreSQL text cannot hold NUL.
    ids = store.sync_endpoints([("g", "a", "http://x/v1")])
    bad = ProbeResult(
        at=NOW,
        group="g",
        endpoint="a",
        outcome=Outcome.HTTP_5XX,
        latency_ms=None,
        http_status=502,
        detail="HTTP 502: bad\x00gateway",
    )
    store.save([(ids[KEY], bad)], {})
    last = store.last_probe(ids[KEY])
    assert last is not None
    assert last.detail == "HTTP 502: badgateway"


def test_instances_starting_together_migrate_once(pg_url: str) -> None:
    # Four daemons started at the same moment on one empty PostgreSQL database: without
    # the advisory lock the losers die on "relation already exists".
    stores = [Store(pg_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        start.wait()
        try:
            store.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert all(s.schema_current() for s in stores)
    with stores[0].engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert len(versions) == 1
    for s in stores:
        s.close()


def test_rollups_from_two_instances_at_once_agree(pg_url: str) -> None:
    first, second = Store(pg_url), Store(pg_url)
    first.migrate()
    ids = first.sync_endpoints([("g", "a", "http://x/v1")])
    rows = [(ids[KEY], result(NOW - 5 * HOUR + 60 * i)) for i in range(4 * 60)]
    first.save(rows, {})
    with ThreadPoolExecutor(2) as pool:
        folded = list(pool.map(lambda s: s.rollup(NOW), [first, second]))
    # One folded the hours, the other found them done (it waited for the lock).
    assert sorted(folded) == [0, 5]
    assert first.window(ids[KEY], 7 * 86400, NOW).probes == 4 * 60
    first.close()
    second.close()


def test_unreachable_postgres_is_one_line_without_the_password() -> None:
    from monitor.sim.postgres import free_port
    from monitor.store import StoreError

    store = Store(f"postgresql+psycopg://monitor:hunter2-secret@127.0.0.1:{free_port()}/db")
    with pytest.raises(StoreError) as info:
        store.migrate()
    message = str(info.value)
    assert "\n" not in message
    assert "hunter2-secret" not in message
    assert "Connection refused" in message
    assert message.startswith("database postgresql+psycopg://monitor:***@127.0.0.1:")


def begin(log: SwitchLog, fencing_token: int | None = None) -> SwitchRecord | None:
    return log.begin_switch(
        fencing_token=fencing_token,
        group="g",
        kind="failover",
        automatic=True,
        expected_active="a",
        to_endpoint="b",
        to_base_url="http://y/v1",
        reason="a is down",
        detected_at=NOW - 5,
        at=NOW,
    )


def test_switch_intent_is_compare_and_set(store: Store) -> None:
    log = SwitchLog(store)
    log.observe_registration(
        "g", registered_base_url="http://x/v1", model_name="m", monitored=True,
        active_endpoint="a", at=NOW,
    )  # fmt: skip
    first = begin(log)
    assert first is not None
    assert begin(log) is None  # one switch in flight at a time
    log.confirm_switch(first.id, transaction_id="t1", at=NOW + 1, message="a -> b")
    assert begin(log) is None  # the group is on b now, not a
    group = log.group("g")
    assert group is not None
    assert group.active_endpoint == "b"
    assert [e.kind for e in log.history("g", 0)] == ["failover"]


def test_snapshot_keeps_each_unchanged_record_and_rereads_a_changed_one(store: Store) -> None:
    # The engine tells a steady group's record unchanged by identity, every second.
    log = SwitchLog(store)
    for name in ("g", "h"):
        log.observe_registration(
            name, registered_base_url="http://x/v1", model_name="m", monitored=True,
            active_endpoint="a", at=NOW,
        )  # fmt: skip
    first, _times = log.snapshot(NOW - 3600)
    assert first["g"].monitored is True
    again, _times = log.snapshot(NOW - 3600, first)
    assert again["g"] is first["g"]
    assert again["h"] is first["h"]
    log.pin("h", "a", NOW + 60, NOW)
    changed, _times = log.snapshot(NOW - 3600, again)
    assert changed["g"] is first["g"]
    assert changed["h"] is not first["h"]
    assert changed["h"] == log.group("h")
    assert changed["h"].pinned_until == NOW + 60
    record = begin(log)
    assert record is not None
    log.confirm_switch(record.id, transaction_id="t1", at=NOW + 1, message="a -> b")
    _groups, times = log.snapshot(NOW - 3600, changed)
    assert times == {"g": (NOW + 1,)}


def test_instances_racing_for_one_switch_write_one_intent(pg_url: str) -> None:
    stores = [Store(pg_url) for _ in range(6)]
    stores[0].migrate()
    SwitchLog(stores[0]).observe_registration(
        "g", registered_base_url="http://x/v1", model_name="m", monitored=True,
        active_endpoint="a", at=NOW,
    )  # fmt: skip
    start = threading.Barrier(len(stores))

    def race(store: Store) -> SwitchRecord | None:
        start.wait()
        return begin(SwitchLog(store))

    with ThreadPoolExecutor(len(stores)) as pool:
        won = [r for r in pool.map(race, stores) if r is not None]
    assert len(won) == 1
    assert len(SwitchLog(stores[0]).open_intents("g")) == 1
    for s in stores:
        s.close()


def test_each_vantage_keeps_its_own_view(db_url: str) -> None:
    east, west, reader = Store(db_url, "east"), Store(db_url, "west"), Store(db_url)
    east.migrate()
    ids = east.sync_endpoints([("g", "a", "http://x/v1")])
    down = HealthState(Health.DOWN, 0, 3, since=NOW - 5, last_probe_at=NOW)
    up = HealthState(Health.UP, 4, 0, since=NOW - 60, last_probe_at=NOW - 1)
    east.save([(ids[KEY], result(NOW, ok=False))], {ids[KEY]: down})
    west.save([(ids[KEY], result(NOW - 1))], {ids[KEY]: up})
    assert reader.vantage_health()[KEY] == {"east": down, "west": up}
    # A restarted instance resumes from its own judgement, not the last writer's.
    assert east.own_health()[KEY] == down
    assert west.own_health()[KEY] == up
    with reader.session() as session:
        vantages = sorted(str(v) for v in session.scalars(select(ResultRow.vantage)))
    assert vantages == ["east", "west"]
    # A new URL is a new endpoint for every vantage.
    reader.sync_endpoints([("g", "a", "http://y/v1")])
    assert reader.vantage_health() == {}
    assert east.own_health()[KEY].health is Health.UNKNOWN
    for s in (east, west, reader):
        s.close()


def test_a_follower_batch_updates_its_own_health_and_leaves_the_shared_one(db_url: str) -> None:
    # The batch goes to the driver as it is (Store.save): every field must come back as
    # written, and a second batch must update the vantage's row, not add one.
    east, reader = Store(db_url, "east"), Store(db_url)
    east.migrate()
    ids = east.sync_endpoints([("g", "a", "http://x/v1"), ("g", "b", "http://y/v1")])
    down = HealthState(Health.DOWN, 0, 3, since=NOW - 5, last_probe_at=NOW)
    up = HealthState(Health.UP, 2, 0, since=NOW + 1, last_probe_at=NOW + 1)
    failed = replace(result(NOW, ok=False), detail="HTTP 500: overloaded")
    answered = replace(result(NOW + 1, latency=48.25), prompt_tokens=12, completion_tokens=1)
    east.save([(ids[KEY], failed)], {ids[KEY]: down})
    east.save([(ids[KEY], answered)], {ids[KEY]: up}, shared=False)
    assert reader.health()[KEY] == down  # only a leader's batch moves the shared health
    assert reader.vantage_health() == {KEY: {"east": up}}
    assert reader.health()[("g", "b")].health is Health.UNKNOWN
    with reader.session() as session:
        rows = session.scalars(select(ResultRow).order_by(ResultRow.at)).all()
        stored = [
            (
                r.endpoint_id,
                r.at,
                r.ok,
                r.outcome,
                r.latency_ms,
                r.http_status,
                r.detail,
                r.prompt_tokens,
                r.completion_tokens,
                r.vantage,
            )
            for r in rows
        ]
    assert stored == [
        (ids[KEY], NOW, False, "http_5xx", None, 500, "HTTP 500: overloaded", None, None, "east"),
        (ids[KEY], NOW + 1, True, "ok", 48.25, 200, None, 12, 1, "east"),
    ]
    assert all(type(row[2]) is bool for row in stored)  # `ok`
    east.close()
    reader.close()


def test_leader_lease_fences_a_paused_leader(db_url: str) -> None:
    east, west = Store(db_url), Store(db_url)
    east.migrate()
    leases_east, leases_west = Leases(east), Leases(west)
    log = SwitchLog(east)
    log.observe_registration(
        "g", registered_base_url="http://x/v1", model_name="m", monitored=True,
        active_endpoint="a", at=NOW,
    )  # fmt: skip
    first = leases_east.acquire("east", 0.5, NOW)
    assert (first.holder, first.token) == ("east", 1)
    # While east holds it, west only learns who leads.
    assert leases_west.acquire("west", 0.5, NOW).holder == "east"
    assert leases_east.acquire("east", 0.5, NOW).token == 1  # a renewal keeps the term
    time.sleep(0.6)  # east is "paused" past its lease
    second = leases_west.acquire("west", 5.0, NOW)
    assert (second.holder, second.token) == ("west", 2)
    # East wakes up and tries to switch with its old token: refused by the store.
    assert begin(log, fencing_token=1) is None
    switch = begin(SwitchLog(west), fencing_token=2)
    assert switch is not None
    lease, instances = leases_east.read()
    assert lease.live
    assert lease.holder == "west"
    assert [i.name for i in instances] == ["east", "west"]
    assert all(i.heartbeat_at > 0 for i in instances)
    # A clean shutdown hands over at once.
    assert leases_west.release("west", 2)
    assert leases_east.acquire("east", 5.0, NOW).token == 3
    east.close()
    west.close()


def test_an_isolated_leader_steps_aside_for_a_live_instance(db_url: str) -> None:
    east, west = Store(db_url), Store(db_url)
    east.migrate()
    leases_east, leases_west = Leases(east), Leases(west)
    assert leases_east.acquire("east", 5.0, NOW).holder == "east"
    # Cut off, but nobody else is alive: it keeps the lease (alone, it still pages that
    # it is isolated, and switches nothing).
    assert leases_east.acquire("east", 5.0, NOW, isolated=True).holder == "east"
    assert leases_west.acquire("west", 5.0, NOW).holder == "east"
    # Now west is alive and not cut off: east lets go, and west takes it at once.
    assert leases_east.acquire("east", 5.0, NOW, isolated=True).holder is None
    taken = leases_west.acquire("west", 5.0, NOW)
    assert (taken.holder, taken.token) == ("west", 2)
    # An isolated instance does not take a free lease either while west is alive...
    assert leases_west.release("west", 2)
    assert leases_east.acquire("east", 5.0, NOW, isolated=True).holder is None
    _, instances = leases_east.read()
    assert {i.name: i.isolated for i in instances} == {"east": True, "west": False}
    # ...and takes it again once it is back.
    assert leases_east.acquire("east", 5.0, NOW).holder == "east"
    _, instances = leases_east.read()
    assert {i.name: i.isolated for i in instances} == {"east": False, "west": False}
    east.close()
    west.close()


def test_leadership_logs_a_takeover_louder_than_a_first_election(db_url: str) -> None:
    east, west = Store(db_url), Store(db_url)
    east.migrate()

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    first = Leadership(Leases(east), "east", 0.3, call)
    second = Leadership(Leases(west), "west", 5.0, call)
    with capture_logs() as logs:
        assert asyncio.run(first.renew())
        assert not asyncio.run(second.renew())  # learns that east leads
        time.sleep(0.4)  # east stops renewing; its lease lapses
        assert asyncio.run(second.renew())
    elected = [(e["instance"], e["log_level"], e["previous"]) for e in logs
               if e["event"] == "leader_elected"]  # fmt: skip
    assert elected == [("east", "info", None), ("west", "warning", "east")]
    east.close()
    west.close()


def spent(at: float, prompt: int | None, completion: int | None) -> ProbeResult:
    return ProbeResult(at, "g", "a", Outcome.OK, 50.0, 200, None, prompt, completion)


def test_tokens_survive_the_rollup_and_the_pruning(store: Store) -> None:
    eid = store.sync_endpoints([("g", "a", "http://x/v1")])[("g", "a")]
    # Two days of a probe a minute at 12 + 2 tokens; an endpoint that reports no usage
    # now and then (None) counts as zero, not as an error.
    rows = [
        (eid, spent(NOW - 2 * 86400 + 60 * i, None if i % 50 == 0 else 12, 2))
        for i in range(2 * 24 * 60)
    ]
    store.save(rows, {})
    raw = store.usage(eid, NOW - 86400, NOW)
    in_day = [r for _, r in rows if r.at >= NOW - 86400]
    assert raw.probes == len(in_day)
    assert raw.prompt_tokens == sum(r.prompt_tokens or 0 for r in in_day)
    assert raw.completion_tokens == 2 * len(in_day)
    store.rollup(NOW)
    store.prune(NOW, retention=HOUR, rollup_retention=30 * 86400)
    after = store.usage(eid, NOW - 86400, NOW)
    # From the rollups now, at whole hours: the hour the day starts in is counted whole.
    start_hour = int((NOW - 86400) // HOUR) * HOUR
    expected = [r for _, r in rows if r.at >= start_hour]
    assert after.probes == len(expected)
    assert after.tokens == sum((r.prompt_tokens or 0) + 2 for r in expected)
    everything = store.usage(eid, 0, NOW)
    assert everything.tokens == sum((r.prompt_tokens or 0) + 2 for _, r in rows)
