"""What the learned-deadline windows cost once full: an hour of successful probes per
endpoint (monitor.domain.deadline.LatencyWindow), the daemon's largest steady store.

    .venv/bin/python benchmarks/window_memory.py --endpoints 2000 --interval 10

Fills one window per endpoint with an hour of samples at the interval, then reports the
memory they hold (tracemalloc, so only what the windows allocated), the bytes per sample,
the CPU of one probe's update (add one sample, drop the oldest, read the p99) on a full
window, and how many of the objects they keep the garbage collector tracks.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from monitor.domain.deadline import WINDOW, LatencyWindow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between probes")
    parser.add_argument("--updates", type=int, default=200_000, help="timed updates")
    args = parser.parse_args()
    per_window = int(WINDOW / args.interval)
    rng = random.Random(1)
    start = 1_000_000.0

    windows = [LatencyWindow() for _ in range(args.endpoints)]
    # The collector runs when tracked allocations outnumber frees by its threshold: a
    # sample that is such an object brings the next collection nearer while windows fill.
    gc.collect()
    gc.disable()
    tracemalloc.start()
    for i in range(per_window):
        for window in windows:
            window.add(start + i * args.interval, 50.0 + rng.random() * 10.0)
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracked = gc.get_count()[0]
    gc.enable()

    now = start + per_window * args.interval
    samples = [50.0 + rng.random() * 10.0 for _ in range(1024)]
    began = time.process_time()
    for n in range(args.updates):
        window = windows[n % args.endpoints]
        now += args.interval / args.endpoints
        window.add(now, samples[n & 1023])
        window.p99(now)
    cpu_us = (time.process_time() - began) / args.updates * 1e6

    total = args.endpoints * per_window
    print(
        f"windows              {args.endpoints} endpoints x {per_window} samples "
        f"(an hour every {args.interval:g} s)"
    )
    print(f"memory               {held / 1e6:.1f} MB, {held / total:.0f} bytes per sample")
    print(f"gc-tracked objects   {tracked / total:.2f} allocated and kept per sample")
    print(f"update on a full one {cpu_us:.2f} us of CPU (add, drop the oldest, p99)")


if __name__ == "__main__":
    main()
