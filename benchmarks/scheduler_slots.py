"""What APScheduler costs per probe run, with the runs spread or gathered in slots.

    .venv/bin/python benchmarks/scheduler_slots.py --jobs 500 --interval 5 --seconds 30

N interval jobs (one per endpoint, as the daemon holds them), each a coroutine that
sleeps 50 ms like a probe waiting for its answer, on uvloop, in a fresh process per
slot size so that one measurement does not warm the next. Each job's grid is placed at
its share of the interval, rounded to the slot (0: not rounded, every run its own
wake-up). Prints the process's CPU per run over the measured seconds, after one
interval of warm-up. Numbers only; it never fails. The daemon's slot is
`monitor.runtime.monitor.PROBE_SLOT`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.loop import run
from monitor.runtime.monitor import PROBE_SLOT

WAIT = 0.05  # the "answer" each run waits for


async def measure(jobs: int, interval: float, seconds: float, slot: float) -> tuple[float, int]:
    """(CPU seconds per run, runs) over `seconds` after one interval of warm-up."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    runs = 0

    async def probe() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(WAIT)

    now = time.time() + 0.5
    for index in range(jobs):
        at = now + index * interval / jobs
        if slot > 0:
            at = round(at / slot) * slot
        scheduler.add_job(
            probe,
            trigger=IntervalTrigger(
                seconds=interval, start_date=datetime.fromtimestamp(at, UTC), timezone=UTC
            ),
            id=f"probe:{index}",
            misfire_grace_time=None,
            coalesce=True,
            max_instances=1,
        )
    scheduler.start()
    try:
        await asyncio.sleep(interval + 0.5)
        runs0, cpu0 = runs, time.process_time()
        await asyncio.sleep(seconds)
        runs1, cpu1 = runs, time.process_time()
    finally:
        scheduler.shutdown(wait=False)
    done = runs1 - runs0
    return ((cpu1 - cpu0) / done if done else float("nan")), done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=500, help="interval jobs (500)")
    parser.add_argument("--interval", type=float, default=5.0, help="each job's interval, s (5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time, s (30)")
    parser.add_argument(
        "--slots",
        default=f"0,0.01,0.02,{PROBE_SLOT:g},0.05",
        help="slot sizes in seconds, comma-separated; 0 spreads every run (default: "
        f"0,0.01,0.02,{PROBE_SLOT:g},0.05)",
    )
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.interval <= 0 or args.seconds <= 0:
        parser.error("--jobs, --interval and --seconds must be positive")
    if args.one is not None:
        per_run, done = run(measure(args.jobs, args.interval, args.seconds, args.one))
        print(f"{per_run * 1e6:.0f} {done}")
        return 0
    try:
        slots = [float(part) for part in args.slots.split(",")]
    except ValueError:
        parser.error(f"--slots must be numbers, not {args.slots!r}")
    if any(size < 0 for size in slots):
        parser.error("--slots must not be negative")
    rate = args.jobs / args.interval
    print(f"{args.jobs} jobs every {args.interval:g} s ({rate:g} runs/s), {args.seconds:g} s each")
    # Pinned to one CPU when the machine has several, like the daemon in probe_load.py.
    cpus = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cpus[0])] if len(cpus) > 1 and shutil.which("taskset") else []
    for size in slots:
        command = [*pin, sys.executable, __file__, "--one", str(size)]
        command += ["--jobs", str(args.jobs), "--interval", str(args.interval)]
        command += ["--seconds", str(args.seconds)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        label = "spread (no slots)" if size == 0 else f"{size * 1000:g} ms slots"
        print(
            f"{label:<20} {out[0]:>5} us of CPU per run ({out[1]} runs, "
            f"{rate * size if size else 1:.1f} per wake-up)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
