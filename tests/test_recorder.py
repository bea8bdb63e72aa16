"""The recorder keeps results while the database is away (bounded) and writes them later."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from monitor.domain.health import Health, HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.runtime import recorder as recorder_module
from monitor.runtime.recorder import Recorder
from monitor.sim.postgres import LocalPostgres, PostgresUnavailable
from monitor.store import Store
from monitor.store.tables import ResultRow


def result(at: float) -> ProbeResult:
    return ProbeResult(at, "g", "a", Outcome.OK, 40.0, 200)


async def test_results_wait_for_the_database_and_the_oldest_go_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        server = LocalPostgres().start()  # its own server: this test stops it
    except PostgresUnavailable as exc:
        pytest.fail(f"this test needs PostgreSQL: {exc}", pytrace=False)
    try:
        url = server.create_database("recorder")
        store = Store(url, "east")
        store.migrate()
        eid = store.sync_endpoints([("g", "a", "http://x/v1")])[("g", "a")]
        monkeypatch.setattr(recorder_module, "MAX_PENDING", 50)
        recorder = Recorder(store)
        server.halt()
        state = HealthState(Health.UP, 2, 0, 1.0, 1.0)
        for i in range(40):
            recorder.add(eid, result(1000.0 + i), state)
        await recorder.flush()  # fails: kept
        for i in range(40, 70):
            recorder.add(eid, result(1000.0 + i), state)
        await recorder.flush()  # fails again: 70 pending, the 20 oldest given up
        assert (recorder.failed_flushes, recorder.dropped) == (2, 20)
        server.resume()
        await recorder.flush()
        with store.session() as session:
            ats = sorted(session.scalars(select(ResultRow.at)))
            vantages = set(session.scalars(select(ResultRow.vantage)))
            count = session.execute(select(func.count()).select_from(ResultRow)).scalar_one()
        assert count == 50
        assert ats == [1000.0 + i for i in range(20, 70)]
        assert vantages == {"east"}
        assert recorder.written == 50
        await recorder.close()
        store.close()
    finally:
        server.stop()
