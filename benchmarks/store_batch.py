"""CPU per write of one probe batch: what the recorder's thread spends every flush.

The daemon writes its buffered results and health every 0.2 s in one transaction
(`Store.save`), on a thread that shares the GIL, and on one core the CPU, with the probes:
each millisecond it spends is a millisecond answers can wait to be read. This writes
`--batches` batches of `--batch` results (200 probes/s gives 40) to a fresh SQLite file,
or to `--url`, and prints the CPU time per batch (best and median of `--rounds`).

    .venv/bin/python benchmarks/store_batch.py
    .venv/bin/python benchmarks/store_batch.py --url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from monitor.domain.health import Health, HealthState
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=40, help="results per batch")
    parser.add_argument("--batches", type=int, default=200, help="batches per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--url", help="a database URL (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="store-batch-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(url, vantage="bench")
        try:
            store.migrate()
            ids = list(
                store.sync_endpoints(
                    (f"g{i // 10}", f"e{i}", "http://127.0.0.1/v1") for i in range(args.endpoints)
                ).values()
            )
            rounds = [measure(store, ids, args, n) for n in range(args.rounds + 1)][1:]
        finally:
            store.close()
    best, median = min(rounds), statistics.median(rounds)
    print(f"database      {'sqlite (fresh file)' if args.url is None else store.where}")
    print(f"batch         {args.batch} results and their health, {args.batches} per round")
    print(f"cpu per batch best {best:.3f} ms, median {median:.3f} ms ({args.rounds} rounds)")
    print(f"cpu per probe best {best / args.batch * 1000:.1f} us")
    return 0


def measure(store: Store, ids: list[int], args: argparse.Namespace, round_: int) -> float:
    """Milliseconds of CPU per batch over one round (the first round only warms up)."""
    now = time.time()
    batches = []
    for b in range(args.batches):
        start = (round_ * args.batches + b) * args.batch
        chosen = [ids[(start + i) % len(ids)] for i in range(args.batch)]
        results = [
            (i, ProbeResult(now, "g", "e", Outcome.OK, 50.3, 200, None, 12, 1)) for i in chosen
        ]
        states = {i: HealthState(Health.UP, 3, 0, now - 60.0, now) for i in chosen}
        batches.append((results, states))
    started = time.process_time()
    for results, states in batches:
        store.save(results, states)
    seconds: float = time.process_time() - started
    return seconds / len(batches) * 1000.0


if __name__ == "__main__":
    sys.exit(main())
