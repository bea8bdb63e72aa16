"""What one load of the status page costs on a database that has run for months.

Builds `--endpoints` endpoints (two per group) with `--days` days of hourly rollups and
the last hour of raw results at `--interval`, as the daemon leaves them, then times
`State.page()` (every query the page makes) and the HTML rendering, and `State.status()`
(`status --json`, `/api/status`) for comparison. Prints the median and worst of `--runs`.

    .venv/bin/python benchmarks/status_page.py                  # 10 endpoints, 90 days
    .venv/bin/python benchmarks/status_page.py --endpoints 100
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import insert

from monitor.config import load_config
from monitor.domain.latency import histogram
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.page import render
from monitor.state import State
from monitor.store import Store
from monitor.store.tables import MetaRow, RollupRow

HOUR = 3600


def build(folder: Path, endpoints: int, days: int, interval: float, now: float) -> Path:
    rng = random.Random(7)
    db = folder / "page.db"
    groups: list[dict[str, Any]] = [
        {
            "model_group_name": f"group-{g}",
            "model_name": "m",
            "endpoints": [
                {"name": f"e{i}", "base_url": f"https://e{i}.example/v1", "api_key": f"key-{i}xx"}
                for i in range(g * 2, min(endpoints, g * 2 + 2))
            ],
        }
        for g in range((endpoints + 1) // 2)
    ]
    config = {
        "convai": {"api_key": "bench-convai-key"},
        "storage": {"url": f"sqlite:///{db}"},
        "groups": groups,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    store = Store(f"sqlite:///{db}")
    store.migrate()
    ids = store.sync_endpoints(
        [(g["model_group_name"], e["name"], e["base_url"]) for g in groups for e in g["endpoints"]]
    )
    current = int(now // HOUR) * HOUR
    per_hour = int(HOUR / interval)
    with store.session() as session, session.begin():
        rows = []
        for endpoint_id in ids.values():
            for h in range(days * 24):
                hour = current - (days * 24 - h) * HOUR
                values = [rng.lognormvariate(5.5, 0.4) for _ in range(per_hour)]
                failures = 0 if rng.random() > 0.02 else rng.randint(1, per_hour)
                rows.append(
                    {
                        "endpoint_id": endpoint_id,
                        "hour": hour,
                        "probes": per_hour,
                        "successes": per_hour - failures,
                        "histogram": json.dumps(histogram(values[failures:])),
                    }
                )
        session.execute(insert(RollupRow), rows)
        session.merge(MetaRow(key="rolled_until", value=str(current)))
    raw = [
        (
            endpoint_id,
            ProbeResult(
                at=current + i * interval,
                group="g",
                endpoint="e",
                outcome=Outcome.OK,
                latency_ms=rng.lognormvariate(5.5, 0.4),
                http_status=200,
            ),
        )
        for endpoint_id in ids.values()
        for i in range(int((now - current) / interval))
    ]
    store.save(raw, {})
    store.close()
    return path


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    now = 1_800_000_000.0 + 40 * 60  # 40 minutes into an hour: a full raw tail
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(build(Path(tmp), args.endpoints, args.days, args.interval, now))
        store = Store(config.storage.url)
        state = State(config, store)
        page = timed(lambda: render(state.page(now), now), args.runs)
        status = timed(lambda: state.status(now), args.runs)
        size = len(render(state.page(now), now).encode())
        store.close()
    print(
        f"{args.endpoints} endpoints, {args.days} days of hourly rollups, "
        f"last hour raw at {args.interval:g}s"
    )
    for name, times in (("page (queries + HTML)", page), ("status --json", status)):
        print(f"{name:<22} median {statistics.median(times):.0f} ms, max {max(times):.0f} ms")
    print(f"page size: {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
