"""Database growth under continuous running: bytes per probe and the steady-state size.

Writes probe results for `--endpoints` endpoints at `--interval` through the real store
(same batches, same rollups and pruning as the daemon's maintenance job), one simulated
day at a time, for `--days` days with `--retention` days of raw results. Prints the file
size (database + WAL, after a checkpoint) per day and the bytes per probe.

    .venv/bin/python benchmarks/storage.py                 # 10 endpoints, 10 s, 45 days
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from monitor.domain.health import HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.store import Store

DAY = 86400.0
BATCH_SECONDS = 300.0  # results are written in batches covering this much time
MAINTENANCE_EVERY = 300.0  # rollup + prune cadence: every 5 min, as the daemon does


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--retention", type=float, default=30.0, help="days of raw results")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "growth.db"
        store = Store(f"sqlite:///{db}")
        store.migrate()
        ids = store.sync_endpoints(
            [(f"g{i // 2}", f"e{i}", f"https://e{i}.example/v1") for i in range(args.endpoints)]
        )
        start = 1_800_000_000.0
        now = start
        written = 0
        last_maintenance = start
        began = time.perf_counter()
        print("day  raw rows   db+wal MB  bytes/raw row")
        for day in range(1, args.days + 1):
            end = start + day * DAY
            while now < end:
                batch = []
                t = now
                while t < now + BATCH_SECONDS:
                    for (group, name), endpoint_id in ids.items():
                        ok = rng.random() > 0.02
                        batch.append(
                            (
                                endpoint_id,
                                ProbeResult(
                                    at=t + rng.random(),
                                    group=group,
                                    endpoint=name,
                                    outcome=Outcome.OK if ok else Outcome.HTTP_5XX,
                                    latency_ms=rng.lognormvariate(6.0, 0.4) if ok else None,
                                    http_status=200 if ok else 503,
                                    detail=None if ok else "HTTP 503: upstream overloaded",
                                    prompt_tokens=14 if ok else None,
                                    completion_tokens=2 if ok else None,
                                ),
                            )
                        )
                    t += args.interval
                store.save(batch, {i: HealthState() for i in ids.values()})
                written += len(batch)
                now = t
                if now - last_maintenance >= MAINTENANCE_EVERY:
                    store.rollup(now)
                    store.prune(now, args.retention * DAY, 400 * DAY)
                    last_maintenance = now
            with store.engine.connect() as conn:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            if day in (1, 7, 14, 30) or day == args.days or day % 15 == 0:
                rows = store.result_count()
                total = size(db)
                print(f"{day:>3}  {rows:>9,}  {total / 1e6:9.1f}  {total / max(1, rows):13.1f}")
        rows = store.result_count()
        with store.engine.connect() as conn:
            conn.execute(text("VACUUM"))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        vacuumed = size(db)
        store.close()
    per_day = args.endpoints * DAY / args.interval
    print()
    print(
        f"{written:,} probes written in {time.perf_counter() - began:.0f}s; steady state "
        f"{rows:,} raw rows ({args.retention:g} days x {per_day:,.0f}/day) + hourly rollups"
    )
    print(
        f"steady-state size {total / 1e6:.1f} MB ({total / rows:.0f} bytes per stored probe, "
        f"indexes and rollups included); {vacuumed / 1e6:.1f} MB after VACUUM"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
