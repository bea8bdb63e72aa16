"""What probing costs: tokens read from every probe's `usage`, kept per endpoint per hour in
the rollups, shown by `status` and exported on /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.events import EVENT_JOB_MODIFIED, EVENT_JOB_SUBMITTED
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import open_store
from monitor.cli import main
from monitor.config import load_config
from monitor.domain.health import HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.runtime.monitor import PROBE_SLOT
from monitor.runtime.recorder import Recorder
from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import Behaviour, EndpointSim
from monitor.store import Store
from tests.harness import GROUP, World, cli_json, make_world, running, wait_for

Factory = Callable[..., EndpointSim]
NOW = 1_800_000_000.0
HOUR = 3600


@pytest.fixture
def world(tmp_path: Path, convai: ConvaiSim, endpoints: Factory) -> World:
    return make_world(tmp_path, convai, endpoints, names=("a", "b"))


def stored_tokens(world: World, config: Any, name: str) -> int:
    store = open_store(config, migrate=False)
    try:
        eid = store.endpoint_ids()[(GROUP, name)]
        return store.usage(eid, 0, 2e9).tokens
    finally:
        store.close()


async def test_status_and_metrics_show_what_probes_cost(world: World) -> None:
    path = world.config_path()
    data = yaml.safe_load(path.read_text())
    data["groups"][0]["endpoints"][0]["price_per_1k_tokens"] = 0.5
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    async with running(config) as daemon:
        await wait_for(lambda: world.sims["a"].requests >= 6, what="probes of a")
        counted = daemon.monitor.counters.probes if daemon.monitor else 0
        assert counted > 0
    # Read once the daemon has stopped: every probe it counted is in the store by then.
    metrics = daemon.metrics.render().decode()
    exported = {
        (s.labels["endpoint"], s.labels["kind"]): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "convai_monitor_probe_tokens_total" and s.labels["group"] == GROUP
    }
    # Exit 1: the daemon has stopped (status says so); the report is whole.
    status: dict[str, Any] = await asyncio.to_thread(
        lambda: cli_json("status", "-c", str(path), codes=(0, 1))
    )
    endpoints = {e["name"]: e for e in status["groups"][0]["endpoints"]}
    for name in ("a", "b"):
        usage = endpoints[name]["usage_24h"]
        tokens = stored_tokens(world, config, name)
        assert tokens > 0
        assert usage["tokens"] == tokens
        assert usage["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["probes"] >= 2
        assert usage["tokens_per_month"] == 30 * tokens
        # The counter and the store saw the same probes, to the token.
        assert exported[(name, "prompt")] == usage["prompt_tokens"]
        assert exported[(name, "completion")] == usage["completion_tokens"]
    a, b = endpoints["a"]["usage_24h"], endpoints["b"]["usage_24h"]
    assert a["cost_per_month"] == round(a["tokens_per_month"] / 1000 * 0.5, 2)
    assert a["cost"] == round(a["tokens"] / 1000 * 0.5, 4)
    assert b["cost"] is None
    assert b["cost_per_month"] is None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # 1: the daemon has stopped; the table is printed all the same.
        assert await asyncio.to_thread(main, ["status", "-c", str(path)]) == 1
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "TOKENS/MONTH" in line)
    assert "COST/MONTH" in header
    row_a = next(line for line in lines[lines.index(header) :] if line.split()[1:2] == ["a"])
    assert f"{a['tokens_per_month']:,}" in row_a
    assert f"{a['cost_per_month']:,.2f}" in row_a


async def test_a_batch_being_written_at_shutdown_is_kept(tmp_path: Path) -> None:
    # The counter on /metrics once said 84 tokens where the store said 70: closing the
    # recorder cancelled its flush while that flush's batch (already taken from the
    # buffer) waited behind other work on the writer thread, and the batch was dropped.
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    eid = store.sync_endpoints([(GROUP, "a", "http://127.0.0.1:1/v1")])[(GROUP, "a")]
    recorder = Recorder(store, flush_interval=0.01)
    busy = threading.Event()
    blocker = asyncio.ensure_future(recorder.call(busy.wait, 5))  # the writer is busy
    recorder.start()
    probe = ProbeResult(
        at=time.time(),
        group=GROUP,
        endpoint="a",
        outcome=Outcome.OK,
        latency_ms=5.0,
        http_status=200,
        prompt_tokens=12,
        completion_tokens=2,
    )
    recorder.add(eid, probe, HealthState())
    await asyncio.sleep(0.1)  # the flush took the batch and waits for the writer thread
    closing = asyncio.ensure_future(recorder.close())
    await asyncio.sleep(0.05)
    busy.set()
    await asyncio.gather(blocker, closing)
    try:
        assert store.usage(eid, 0, 2e9).tokens == 14
        assert recorder.written == 1
    finally:
        store.close()


async def test_on_time_probes_keep_their_grid_without_rescheduling(world: World) -> None:
    # Each run the daemon decides the next one itself (fast re-probes, the grid); when
    # that is what APScheduler already holds, nothing is modified: a modification is a
    # job-store update and an extra scheduler pass over every job, once per probe.
    # A deadline of the whole second: under a loaded CI machine, a probe failed at a
    # short learned deadline would (rightly) put the endpoint on the fast cadence.
    config = world.config(interval=1.0, fast_interval=0.05, timeout=0.9, deadline_floor=0.9)
    runs: dict[str, list[float]] = {}
    modified: list[str] = []

    def seen(event: Any) -> None:
        if event.code == EVENT_JOB_MODIFIED:
            modified.append(event.job_id)
        elif event.job_id.startswith("probe:"):
            runs.setdefault(event.job_id, []).append(event.scheduled_run_times[-1].timestamp())

    async with running(config) as daemon:
        await wait_for(lambda: world.sims["b"].requests >= 4, what="both endpoints judged")
        await asyncio.sleep(0.5)  # past the start-up round and its rise confirmations
        daemon.scheduler.add_listener(seen, EVENT_JOB_MODIFIED | EVENT_JOB_SUBMITTED)
        await asyncio.sleep(3.5)
        daemon.scheduler.remove_listener(seen)
    assert modified == []
    assert set(runs) == {f"probe:{GROUP}/a", f"probe:{GROUP}/b"}
    for times in runs.values():
        assert len(times) >= 3
        gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]
        assert set(gaps) == {1.0}, gaps


async def test_probe_grids_lie_on_slots(world: World) -> None:
    # APScheduler's cost is per wake-up more than per job: endpoints placed on common
    # slots share wake-ups (at 2,000 endpoints, half the daemon's CPU per probe). With
    # two endpoints no slot is shared; what is checked is that each grid is on one.
    config = world.config(interval=1.0, timeout=0.9, deadline_floor=0.9)
    async with running(config) as daemon:
        grids = [
            job.trigger.start_date.timestamp()
            for job in daemon.scheduler.get_jobs()
            if job.id.startswith("probe:")
        ]
    assert len(grids) == 2
    for at in grids:
        slots = at / PROBE_SLOT
        assert abs(slots - round(slots)) < 1e-3, at


async def test_a_steady_group_is_not_re_decided_every_tick_but_any_change_is(
    world: World,
) -> None:
    """A group on its healthy primary with nothing pending is evaluated once, then left
    alone by the tick; a health change, an operator's write or a reload brings it back."""
    config = world.config()
    async with running(config) as daemon:
        assert daemon.engine is not None
        evaluator = daemon.engine.evaluator
        runs: list[float] = []
        evaluate = evaluator._evaluate

        async def counted(group: Any) -> None:
            runs.append(time.monotonic())
            await evaluate(group)

        evaluator._evaluate = counted  # type: ignore[method-assign]
        await wait_for(lambda: GROUP in evaluator.steady, what="steady")
        # Its first evaluations write its record (state, key digest): one more look then.
        await asyncio.sleep(1.0)
        assert GROUP in evaluator.steady
        quiet_from = len(runs)
        await asyncio.sleep(2.0)  # several decide ticks (at most 1 s apart)
        assert len(runs) == quiet_from, "a steady group was re-evaluated with nothing new"
        # Its standby goes down: a transition, evaluated at once, and the group stays.
        world.sims["b"].set(Behaviour.REFUSE)
        await wait_for(lambda: len(runs) > quiet_from, what="evaluated on b's change")
        # Its primary goes down: the usual failover, nothing skipped.
        world.sims["a"].set(Behaviour.REFUSE)
        world.sims["b"].set(Behaviour.OK)
        await wait_for(
            lambda: world.registered()["base_url"] == world.sims["b"].base_url, what="failover"
        )
        assert GROUP not in evaluator.steady  # failed over: timers (failback) matter now
