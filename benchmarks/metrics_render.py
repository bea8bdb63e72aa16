"""What a /metrics scrape costs the event loop.

    .venv/bin/python benchmarks/metrics_render.py --endpoints 2000

Fills the daemon's own metrics (`monitor.metrics.Metrics`) as N endpoints ten to a group
would, times the first render, and a render after every endpoint was probed again (from
the first scrape on, each probe writes its own endpoint's lines). Then it runs an event
loop doing socket I/O (a 1 ms sleep and a socketpair round trip per iteration, like a
probe loop's wake-ups) while another thread renders /metrics every 0.5 s, as the HTTP
server thread does on a scrape. It prints the loop's iteration delay p50/p99/max and its
iteration count, once with Python's default GIL switch interval (5 ms) and once with the
daemon's (`monitor.loop`). Numbers only; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import threading
import time

from monitor.domain.health import Health
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.loop import SWITCH_INTERVAL
from monitor.metrics import Metrics


def probe_all(metrics: Metrics, endpoints: int) -> float:
    """One probe of every endpoint into the metrics; microseconds per probe."""
    results = [
        ProbeResult(0.0, f"g{i // 10}", f"e{i}", Outcome.OK, 50.0, 200, None, 12, 1)
        for i in range(endpoints)
    ]
    started = time.perf_counter()
    for result in results:
        metrics.probe(result, Health.UP)
    return (time.perf_counter() - started) / endpoints * 1e6


def filled(endpoints: int) -> Metrics:
    metrics = Metrics()
    probe_all(metrics, endpoints)
    for g in range(0, endpoints, 10):
        metrics.set_active(f"g{g // 10}", [f"e{i}" for i in range(g, g + 10)], f"e{g}")
    return metrics


def timed_render(metrics: Metrics) -> tuple[float, bytes]:
    started = time.perf_counter()
    text = metrics.render()
    return (time.perf_counter() - started) * 1000.0, text


async def loop_delays(metrics: Metrics, seconds: float) -> list[float]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    loop = asyncio.get_running_loop()
    stop = time.perf_counter() + seconds

    def scrape() -> None:
        while time.perf_counter() < stop:
            metrics.render()
            time.sleep(0.5)

    thread = threading.Thread(target=scrape)
    thread.start()
    delays: list[float] = []
    while time.perf_counter() < stop:
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        b.send(b"x")
        await loop.sock_recv(a, 1)
        delays.append(time.perf_counter() - started - 0.001)
    thread.join()
    a.close()
    b.close()
    return sorted(delays)


def one(endpoints: int, seconds: float, switch: float) -> None:
    sys.setswitchinterval(switch)
    metrics = filled(endpoints)
    unscraped_us = probe_all(metrics, endpoints)
    first_ms, _text = timed_render(metrics)
    # From the first scrape on, each probe writes its endpoint's lines (EndpointSeries):
    # a render after every endpoint was probed again only joins them.
    scraped_us = probe_all(metrics, endpoints)
    render_ms, text = timed_render(metrics)
    lines = text.count(b"\n")
    print(
        f"metrics per probe {unscraped_us:.1f} us before the first scrape, "
        f"{scraped_us:.1f} us after; first render {first_ms:.0f} ms"
    )
    try:
        import uvloop

        delays = uvloop.run(loop_delays(metrics, seconds))
    except ImportError:  # pragma: no cover - a build without uvloop
        delays = asyncio.run(loop_delays(metrics, seconds))

    def ms(q: float) -> float:
        return delays[min(len(delays) - 1, int(len(delays) * q))] * 1000.0

    print(
        f"switch {switch * 1000:g} ms: render {render_ms:.0f} ms ({lines} lines); "
        f"loop iterations {len(delays)}, delay p50 {ms(0.5):.2f} ms, p99 {ms(0.99):.1f} ms, "
        f"max {delays[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=2000, help="endpoints (2000)")
    parser.add_argument("--seconds", type=float, default=6.0, help="loop run per setting (6)")
    parser.add_argument("--switch", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.switch is not None:
        one(args.endpoints, args.seconds, args.switch)
        return
    # Each setting in a fresh process: the interval is process-wide.
    for switch in (0.005, SWITCH_INTERVAL):
        subprocess.run(
            [
                *(sys.executable, __file__, "--endpoints", str(args.endpoints)),
                *("--seconds", str(args.seconds), "--switch", str(switch)),
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
