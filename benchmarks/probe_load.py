"""Probe load: what probing N endpoints costs, three ways.

    .venv/bin/python benchmarks/probe_load.py --mode side-by-side   # daemon vs blackbox_exporter
    .venv/bin/python benchmarks/probe_load.py --mode daemon --endpoints 2000 --interval 10
    .venv/bin/python benchmarks/probe_load.py --mode loop           # in-process, see below

The endpoints are paths on one OpenAI-compatible server running in a separate process, so
its CPU is not charged to the monitor: `benchmarks/responder.py` (`--server exact`, the
default), which answers after `--delay` on one event loop and records how long it really
held each request, or the tests' `monitor.sim.openai` (`--server sim`, a thread per
connection, late by milliseconds under load). Endpoint i is `http://127.0.0.1:PORT/e{i}/v1`;
endpoints are put ten to a group (`g0` holds e0..e9), the shape of a real config where a
group has a primary and a few fallbacks.

The latency error is read two ways: against the nominal delay, and against the hold the
responder recorded for the very request (matched by endpoint and time), which leaves out
the server's own timer lateness: that one is the monitor's own error, and the target is
judged on it when the responder recorded holds.

Modes:

- `daemon`: `convai-monitor run` as a process, as users run it: the probes, the failover
  engine's evaluation of every group, Convai sync (against `monitor.sim.convai` in its own
  process, the groups registered by `run --register`), the SQLite store, the HTTP server
  with `/metrics` scraped every 15 s as Prometheus would, and its info-level logs (to a
  file). Its CPU time and memory are read from /proc/PID; probes and missed runs from its
  /metrics, the scheduler lag p99 from its lag histogram (so it is known to the bucket:
  1, 5, 10, 25, 50, 100 ms ...), the latency error from the probe results it stored.
- `side-by-side`: the same, plus Prometheus' blackbox_exporter (Debian's
  `prometheus-blackbox-exporter`) probing the same endpoints at the same rate with an
  `http` module that POSTs the daemon's own request body, headers and key, follows no
  redirect and checks the reply carries `"choices"`. This script plays Prometheus for it:
  it asks `/probe` for each endpoint once per interval, spread over the interval. Both
  run at once on the same core; each is charged its own CPU from /proc, and the ratio of
  CPU per probe is printed. blackbox_exporter's figure includes answering those /probe
  requests (as it must for Prometheus), the daemon's includes everything listed above.
- `floor`: started by the two modes above, beside the sim, through the measured window:
  sequential requests from a minimal client, whose error is the sim's own under that load.
- `loop`: the scheduler, prober, health loop and recorder in this process (no failover
  engine, Convai, server or logging): the probe path alone, with exact lag and error
  percentiles.

To hold the "one core" part, the monitor (and blackbox_exporter) are pinned to one CPU and
the simulators and this script to the others when the machine has at least two
(`--no-pin` turns that off). Measurement starts after a warm-up (three intervals by
default; the startup round is spread over the first seconds, and each endpoint then moves
to its own place on the interval) and lasts `--duration` seconds. It prints numbers and
whether each target was met; it never fails on a missed target, since a benchmark is for
reading, not for gating.

`--awake` is a diagnostic: it fills the monitor's CPU with a spinner at the lowest
priority, which gives way at once to anything that wakes there, so that CPU never idles.
On a virtual machine an idle CPU halts, and the next answer waits for it to be woken; the
difference between a run with and without `--awake` is what that costs the monitor, which
is the machine's doing, not the monitor's.

`--history SECONDS` (the daemon modes) stores that much history first: an `ok` probe of
every endpoint each interval, under the daemon's own vantage. A daemon reads the last hour
of its successes into its learned deadlines when it starts, so `--history 3600` measures
what a daemon that has run an hour holds, which one a few minutes old does not show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import resource
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client.parser import text_string_to_metric_families
from responder import Hold, read_holds

from monitor.config import InstanceConfig, Policy, Target
from monitor.domain.health import HealthState, Transition
from monitor.domain.latency import percentile
from monitor.domain.outcome import Outcome, ProbeResult
from monitor.logs import setup_logging
from monitor.loop import run as run_loop
from monitor.probes import ChatProber, ProbeShape
from monitor.probes.chat import request_body, user_agent
from monitor.runtime.monitor import STARTUP_RATE, Monitor
from monitor.runtime.recorder import Recorder
from monitor.sim.convai import DEFAULT_API_KEY as CONVAI_KEY
from monitor.store import Store

MODEL = "bench-model"
GROUP_SIZE = 10
# The targets (issue 14: 2,000 endpoints at 10 s on one core, and the side-by-side run).
CPU_SHARE_TARGET = 0.40
LAG_P99_TARGET_MS = 50.0
ERROR_P99_TARGET_MS = 2.0
RSS_TARGET_MB = 150.0
# Long enough for `python -m` to import and bind on a loaded machine.
SERVER_START_TIMEOUT = 20.0


# One ok probe as its client saw it: (endpoint, wall-clock start, latency in ms).
Sample = tuple[str, float, float]
# A probe's request is the first one its endpoint read after the probe began, within this.
MATCH_WITHIN = 1.0
FLOOR_NAME = "calibrate"  # the floor's endpoint path


@dataclass
class Window:
    """What the listener saw between `start` and `end` (completion time, epoch seconds)."""

    start: float = float("inf")
    end: float = float("inf")
    outcomes: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)


# --- the server process --------------------------------------------------------------------


def start_server(
    server: str, delay: float, cpus: set[int] | None, record: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start the endpoint server (`exact`: benchmarks/responder.py, writing each request's
    hold to `record` when it stops; `sim`: the tests' `monitor.sim.openai`); return the
    process and its origin."""
    if server == "exact":
        command = [sys.executable, str(Path(__file__).with_name("responder.py"))]
        command += ["--record", str(record)] if record is not None else []
    else:
        command = [sys.executable, "-m", "monitor.sim.openai"]
    command += ["--port", "0", "--delay", str(delay), "--model", MODEL]
    # Closing stdin tells the sim to stop.
    process = spawn(command, cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        return process, first_url(process, "the sim server")
    except BaseException:
        stop_server(process)
        raise


def first_url(process: subprocess.Popen[str], what: str) -> str:
    """A simulator's first stdout line: the origin it serves on."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], SERVER_START_TIMEOUT)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        raise RuntimeError(f"{what} did not start (first line: {line!r})")
    return line


def stop_server(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def calibrate(origin: str, count: int, delay: float, pause: float = 0.0) -> list[Sample]:
    """The floor: sequential requests from a minimal client (http.client), as samples.

    Their error is what no monitor could remove: the server's own lateness (against the
    nominal delay), loopback and waking a sleeping process (against the hold too).
    `pause`: seconds between requests (the floor under load is sampled over the window).
    """
    parts = urlsplit(origin)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Reply with OK."}]}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    samples: list[Sample] = []
    try:
        for _ in range(count):
            at, started = time.time(), time.perf_counter()
            connection.request("POST", f"/{FLOOR_NAME}/v1/chat/completions", body, headers)
            response = connection.getresponse()
            response.read()
            samples.append((FLOOR_NAME, at, (time.perf_counter() - started) * 1000.0))
            if pause:
                time.sleep(pause)
    finally:
        connection.close()
    return samples


def nominal_errors(samples: Iterable[Sample], delay: float) -> list[float]:
    """Each latency minus the server's nominal delay, sorted."""
    return sorted(ms - delay * 1000.0 for _, _, ms in samples)


def start_floor(origin: str, delay: float, seconds: float, cpus: set[int] | None) -> Any:
    """The same floor, sampled while the monitor is under load: a process of its own on the
    sim's CPU (in this script its requests would wait on this script's own work), so it
    meets the sim exactly as busy as the monitor's probes do."""
    count = max(1, int(seconds / (FLOOR_PAUSE + delay)))
    command = [sys.executable, __file__, "--mode", "floor", "--origin", origin]
    command += ["--delay", str(delay), "--calibrate", str(count)]
    return spawn(command, cpus, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)


def floor_result(process: Any) -> list[Sample]:
    out, _ = process.communicate(timeout=60)
    return [(str(name), float(at), float(ms)) for name, at, ms in json.loads(out or "[]")]


def hold_errors(samples: Iterable[Sample], holds: list[Hold], client: str) -> list[float]:
    """Each probe's latency minus the time the server really held its request: the
    client's own measurement error, without the server timer's lateness (the error
    against the nominal delay keeps it). Probes whose request is not found are left out."""
    reads: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for hold in holds:
        if hold.client == client:
            reads[hold.name].append((hold.read_at, hold.hold_ms))
    for series in reads.values():
        series.sort()
    errors = []
    for name, at, latency_ms in samples:
        series = reads.get(name, [])
        index = bisect_left(series, (at,))
        if index < len(series) and series[index][0] - at < MATCH_WITHIN:
            errors.append(latency_ms - series[index][1])
    return sorted(errors)


def floor_summary(
    key: str, samples: list[Sample], holds: list[Hold], delay: float
) -> dict[str, Any]:
    """The floor's error against the nominal delay and against the hold, as summary keys."""
    nominal, held = nominal_errors(samples, delay), hold_errors(samples, holds, "daemon")
    return {
        f"{key}_samples": len(samples),
        f"{key}_p50_ms": percentile(nominal, 50),
        f"{key}_p99_ms": percentile(nominal, 99),
        f"{key}_hold_p50_ms": percentile(held, 50),
        f"{key}_hold_p99_ms": percentile(held, 99),
    }


def holds_file() -> Path:
    """A file for the responder's record (it writes it when it stops)."""
    handle, name = tempfile.mkstemp(prefix="probe-load-holds-", suffix=".tsv")
    os.close(handle)
    return Path(name)


def holds_of(path: Path) -> list[Hold]:
    """The responder's record; none from `--server sim`, which keeps none."""
    try:
        return read_holds(path) if path.stat().st_size else []
    finally:
        path.unlink(missing_ok=True)


# --- the run -------------------------------------------------------------------------------


def build_targets(origin: str, count: int, interval: float) -> list[Target]:
    policy = Policy.model_validate(
        {
            "interval": interval,
            "fast_interval": min(2.0, interval),
            # Well above the server's delay, and below the interval as the policy requires.
            "timeout": min(5.0, interval / 2),
        }
    )
    return [
        Target(
            group=f"g{i // GROUP_SIZE}",
            endpoint=f"e{i}",
            base_url=f"{origin}/e{i}/v1",
            api_key="sk-bench",
            model=MODEL,
            policy=policy,
            priority=i % GROUP_SIZE,
        )
        for i in range(count)
    ]


async def measure(args: argparse.Namespace, origin: str, store: Store) -> dict[str, Any]:
    targets = build_targets(origin, args.endpoints, args.interval)
    ids = store.sync_endpoints((t.group, t.endpoint, t.base_url) for t in targets)
    states: dict[tuple[str, str], HealthState] = store.health()

    prober = ChatProber(max_in_flight=args.max_in_flight, max_body_bytes=1 << 20)
    recorder = Recorder(store)
    scheduler = AsyncIOScheduler(timezone="UTC")
    monitor = Monitor(scheduler, prober, recorder, ids, states)
    window = Window()
    delay_ms = args.delay * 1000.0

    async def listener(
        target: Target, result: ProbeResult, state: HealthState, transition: Transition | None
    ) -> None:
        now = time.time()
        if not window.start <= now < window.end:
            return
        window.outcomes[result.outcome.value] += 1
        if result.latency_ms is not None:
            window.samples.append((target.endpoint, result.at, result.latency_ms))

    monitor.listeners.append(listener)
    counters = monitor.counters
    recorder.start()
    try:
        monitor.add_targets(targets)
        scheduler.start()
        # Warm-up: the first round, each endpoint's rise confirmation and one round on
        # its grid place, so that what is measured is the steady state.
        await asyncio.sleep(args.warmup if args.warmup is not None else 3 * args.interval)

        counters.lags.clear()
        missed0, errors0 = counters.missed, counters.errors
        cpu0, wall0 = time.process_time(), time.time()
        window.start, window.end = wall0, wall0 + args.duration
        await asyncio.sleep(args.duration)
        cpu1, wall1 = time.process_time(), time.time()
        window.end = wall1
        lags_ms = sorted(lag * 1000.0 for lag in counters.lags)
        # The deque keeps the newest samples only; a full one means the window was cut.
        truncated = len(counters.lags) == counters.lags.maxlen
        missed, job_errors = counters.missed - missed0, counters.errors - errors0
    finally:
        # Pause first: AsyncIOScheduler.shutdown cancels the probes still running (its
        # executor cancels pending futures whatever `wait` says), so drain before it.
        if scheduler.running:
            scheduler.pause()
        await monitor.drain(3)
        if scheduler.running:
            scheduler.shutdown(wait=False)
        await recorder.close()
        await prober.aclose()

    probes = sum(window.outcomes.values())
    elapsed = wall1 - wall0
    errors = nominal_errors(window.samples, args.delay)
    latencies = sorted(ms for _, _, ms in window.samples)
    cpu = cpu1 - cpu0
    return {
        "endpoints": args.endpoints,
        "interval_s": args.interval,
        "warmup_s": args.warmup if args.warmup is not None else 3 * args.interval,
        "duration_s": round(elapsed, 3),
        "delay_ms": delay_ms,
        "max_in_flight": args.max_in_flight,
        "probes": probes,
        "probes_per_s": probes / elapsed if elapsed > 0 else 0.0,
        "expected_probes_per_s": args.endpoints / args.interval,
        "cpu_s": cpu,
        "cpu_s_per_1000_probes": cpu / probes * 1000.0 if probes else None,
        "cpu_utilisation": cpu / elapsed if elapsed > 0 else None,
        "lag_samples": len(lags_ms),
        "lag_samples_truncated": truncated,
        "lag_p50_ms": percentile(lags_ms, 50),
        "lag_p99_ms": percentile(lags_ms, 99),
        "lag_max_ms": lags_ms[-1] if lags_ms else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "error_p50_ms": percentile(errors, 50),
        "error_p99_ms": percentile(errors, 99),
        "error_min_ms": errors[0] if errors else None,
        "samples": window.samples,
        "missed": missed,
        "job_errors": job_errors,
        "outcomes": dict(window.outcomes),
        "recorder_failed_flushes": recorder.failed_flushes,
    }


def database_size(store: Store, path: Path) -> tuple[int, int]:
    """Checkpoint the WAL into the main file; return (bytes of db + wal, result rows)."""
    with store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = store.result_count()
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return size, rows


# --- output --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def judged_error(summary: dict[str, Any]) -> tuple[float | None, str]:
    """The error p99 the target is judged on: against each request's real hold where the
    responder recorded it (the monitor's own error), else against the nominal delay."""
    if summary["hold_matched"]:
        return summary["hold_error_p99_ms"], "against the hold"
    return summary["error_p99_ms"], "against the nominal delay"


def report(summary: dict[str, Any]) -> None:
    lag_p99 = summary["lag_p99_ms"]
    error_p99, judged = judged_error(summary)
    outcomes = summary["outcomes"]
    all_ok = summary["probes"] > 0 and set(outcomes) == {"ok"}
    per_1000 = summary["cpu_s_per_1000_probes"]
    lines = [
        f"endpoints            {summary['endpoints']} every {summary['interval_s']:g} s "
        f"(server {summary['server']}, delay {summary['delay_ms']:g} ms, "
        f"max in flight {summary['max_in_flight']}, cpu pinned: {summary['pinned']})",
        f"measured             {summary['duration_s']:.1f} s after a warm-up of "
        f"{summary['warmup_s']:g} s",
        f"probes/s             {summary['probes_per_s']:.1f} "
        f"(expected {summary['expected_probes_per_s']:.1f}; {summary['probes']} probes)",
        "cpu per 1000 probes  "
        + ("n/a" if per_1000 is None else f"{per_1000:.3f} s")
        + f" ({summary['cpu_s']:.2f} s cpu, {summary['cpu_utilisation'] or 0:.1%} of one core)",
        f"scheduler lag        p50 {_ms(summary['lag_p50_ms'])}, p99 {_ms(lag_p99)}, "
        f"max {_ms(summary['lag_max_ms'])} ({summary['lag_samples']} samples"
        + (", deque-truncated" if summary["lag_samples_truncated"] else "")
        + ")",
        f"latency              p50 {_ms(summary['latency_p50_ms'])}, "
        f"p99 {_ms(summary['latency_p99_ms'])}",
        f"latency error        p50 {_ms(summary['error_p50_ms'])}, "
        f"p99 {_ms(summary['error_p99_ms'])}, "
        f"min {_ms(summary['error_min_ms'])} (measured minus server delay)",
        f"  against the hold   p50 {_ms(summary['hold_error_p50_ms'])}, "
        f"p99 {_ms(summary['hold_error_p99_ms'])} (measured minus the time the server held "
        f"each request: the prober's own error; {summary['hold_matched']} probes matched)",
        f"sim floor            p50 {_ms(summary['floor_p50_ms'])}, "
        f"p99 {_ms(summary['floor_p99_ms'])}; against the hold "
        f"p50 {_ms(summary['floor_hold_p50_ms'])}, p99 {_ms(summary['floor_hold_p99_ms'])} "
        f"({summary['floor_samples']} sequential requests from http.client)",
        f"peak rss             {summary['peak_rss_mb']:.1f} MB",
        f"database             {summary['db_bytes']} bytes, {summary['db_rows']} rows, "
        + (
            f"{summary['db_bytes_per_probe']:.1f} bytes/probe"
            if summary["db_bytes_per_probe"] is not None
            else "n/a bytes/probe"
        ),
        f"missed runs          {summary['missed']} (job errors {summary['job_errors']}, "
        f"failed flushes {summary['recorder_failed_flushes']})",
        f"outcomes             {json.dumps(outcomes, sort_keys=True)}",
        "targets:",
        f"  lag p99 < {LAG_P99_TARGET_MS:g} ms         "
        + _met(lag_p99 is not None and lag_p99 < LAG_P99_TARGET_MS),
        f"  latency error p99 < {ERROR_P99_TARGET_MS:g} ms  "
        + _met(error_p99 is not None and error_p99 < ERROR_P99_TARGET_MS)
        + f" ({judged})",
        f"  rss < {RSS_TARGET_MB:g} MB               "
        + _met(summary["peak_rss_mb"] < RSS_TARGET_MB),
        f"  no missed runs             {_met(summary['missed'] == 0)}",
        f"  every outcome ok           {_met(all_ok)}",
    ]
    print("\n".join(lines), flush=True)


# --- the daemon as a process, and blackbox_exporter beside it ----------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BLACKBOX = "prometheus-blackbox-exporter"
SCRAPE_EVERY = 15.0  # Prometheus' default scrape interval
FLOOR_PAUSE = 0.05  # between the loaded floor's requests: a light load of its own
FLOOR_LEAD = 3.0  # seconds the loaded floor starts before the window (see measure_processes)
# blackbox_exporter's phases from the request written to the body read: the span the
# daemon's latency covers (its own connect is left out: the daemon reuses connections).
EXCHANGE_PHASES = ("processing", "transfer")
READY_TIMEOUT = 120.0  # plus the start-up round (spread at STARTUP_RATE probes/s)


def spawn(command: list[str], cpus: set[int] | None, **popen: Any) -> subprocess.Popen[str]:
    """Start a process on `cpus` (a child inherits the affinity of the thread that forks
    it, and so do the threads it starts later; setting it on the pid afterwards would miss
    those)."""
    mine = os.sched_getaffinity(0) if cpus is not None else None
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        return subprocess.Popen(command, text=True, **popen)
    finally:
        if mine is not None:
            os.sched_setaffinity(0, mine)


def start_spinner(cpus: set[int]) -> subprocess.Popen[str]:
    """A process that spins on `cpus` at the lowest priority there is (SCHED_IDLE): any
    other thread that wakes there takes the CPU from it at once, so it only fills what
    would be idle time, and the CPU never halts. Each process's CPU is read from its own
    /proc entry, so the spinner's is charged to no one."""
    process = spawn([sys.executable, "-c", "while True: pass"], cpus)
    try:
        os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        stop_process(process)  # at normal priority it would take the core from the monitor
        raise
    return process


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid`, from /proc/PID/stat (fields 14, 15)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of `pid` in MB, from /proc/PID/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_convai(cpus: set[int] | None) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "monitor.sim.convai", "--port", "0"]
    process = spawn(command, cpus, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        return process, first_url(process, "the Convai sim")
    except BaseException:
        stop_process(process)
        raise


def daemon_config(
    args: argparse.Namespace, tmp: Path, origin: str, convai: str, listen: str
) -> Path:
    targets = build_targets(origin, args.endpoints, args.interval)
    groups: dict[str, list[dict[str, str]]] = {}
    for t in targets:
        groups.setdefault(t.group, []).append(
            {"name": t.endpoint, "base_url": t.base_url, "api_key": t.api_key}
        )
    policy = targets[0].policy
    data = {
        "convai": {"api_key": CONVAI_KEY, "base_url": convai},
        "storage": {"url": f"sqlite:///{tmp / 'daemon.db'}"},
        "server": {"listen": listen},
        "probes": {"max_in_flight": args.max_in_flight},
        "defaults": {
            "interval": policy.interval,
            "fast_interval": policy.fast_interval,
            "timeout": policy.timeout,
        },
        "groups": [
            {"model_group_name": name, "model_name": MODEL, "endpoints": endpoints}
            for name, endpoints in groups.items()
        ],
    }
    path = tmp / "daemon.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def blackbox_config(tmp: Path, target: Target) -> Path:
    """An `http` module sending what the daemon sends: the same body, key and agent."""
    module = {
        "prober": "http",
        "timeout": f"{target.policy.timeout:g}s",
        "http": {
            "method": "POST",
            "headers": {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {target.api_key}",
                "User-Agent": user_agent("blackbox"),
            },
            "body": request_body(target, ProbeShape()).decode(),
            "valid_status_codes": [200],
            "no_follow_redirects": True,
            "preferred_ip_protocol": "ip4",
            "fail_if_body_not_matches_regexp": ['"choices"'],
        },
    }
    path = tmp / "blackbox.yml"
    path.write_text(yaml.safe_dump({"modules": {"chat": module}}, sort_keys=False))
    return path


def start_blackbox(tmp: Path, target: Target, cpus: set[int] | None) -> tuple[Any, str]:
    binary = shutil.which(BLACKBOX) or shutil.which("blackbox_exporter")
    if binary is None:
        raise SystemExit(f"error: {BLACKBOX} is not installed (Debian: apt-get install {BLACKBOX})")
    listen = f"127.0.0.1:{free_port()}"
    command = [
        binary,
        f"--config.file={blackbox_config(tmp, target)}",
        f"--web.listen-address={listen}",
        "--log.level=warn",
    ]
    sink = (tmp / "blackbox.log").open("w")
    process = spawn(command, cpus, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    return process, f"http://{listen}"


@dataclass
class Scrape:
    """What one /metrics scrape said, summed over every endpoint."""

    probes: float = 0.0
    missed: float = 0.0
    lag_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


def parse_metrics(text: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "convai_monitor_probes_total":
                scrape.probes += sample.value
            elif sample.name == "convai_monitor_missed_runs_total":
                scrape.missed += sample.value
            elif sample.name == "convai_monitor_scheduler_lag_seconds_bucket":
                scrape.lag_buckets[float(sample.labels["le"])] = sample.value
    return scrape


def lag_p99_bound(before: Scrape, after: Scrape) -> float | None:
    """The smallest histogram bound (ms) under which 99% of the window's lags fall."""
    counts = sorted(
        (le, after.lag_buckets[le] - before.lag_buckets.get(le, 0.0)) for le in after.lag_buckets
    )
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    return next(le * 1000.0 for le, count in counts if count >= 0.99 * total)


@dataclass
class Driver:
    """Plays Prometheus for blackbox_exporter: one /probe per endpoint per interval."""

    completed: list[tuple[float, bool]] = field(default_factory=list)  # (done at, success)
    failures: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)  # by the time each /probe began

    async def run(
        self, session: aiohttp.ClientSession, exporter: str, urls: list[str], interval: float
    ) -> None:
        loop = asyncio.get_running_loop()
        start, step = loop.time(), interval / len(urls)
        timeout = str(interval)
        tasks: set[asyncio.Task[None]] = set()
        for index in itertools.count():
            delay = start + index * step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            url = urls[index % len(urls)]
            task = asyncio.create_task(self._probe(session, exporter, url, timeout))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _probe(
        self, session: aiohttp.ClientSession, exporter: str, url: str, scrape_timeout: str
    ) -> None:
        params = {"module": "chat", "target": url}
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": scrape_timeout}
        started = time.time()
        try:
            async with session.get(f"{exporter}/probe", params=params, headers=headers) as reply:
                text = await reply.text()
        except aiohttp.ClientError as exc:
            self.failures[type(exc).__name__] += 1
            return
        done = time.time()
        self.completed.append((done, "\nprobe_success 1" in text))
        phases = exchange_seconds(text)
        if phases is not None:
            self.samples.append((urlsplit(url).path.split("/", 2)[1], started, phases * 1000.0))


def exchange_seconds(text: str) -> float | None:
    """blackbox_exporter's own measure of one probe's exchange, from its /probe reply."""
    total, seen = 0.0, 0
    for line in text.splitlines():
        for phase in EXCHANGE_PHASES:
            if line.startswith(f'probe_http_duration_seconds{{phase="{phase}"}} '):
                total += float(line.rsplit(" ", 1)[1])
                seen += 1
    return total if seen == len(EXCHANGE_PHASES) else None


async def get_text(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as reply:
        return reply.status, await reply.text()


async def wait_ready(
    session: aiohttp.ClientSession, base: str, daemon: Any, endpoints: int
) -> float:
    """Seconds until /readyz says every endpoint was probed once."""
    started = time.monotonic()
    limit = READY_TIMEOUT + endpoints / STARTUP_RATE
    while time.monotonic() - started < limit:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} (see its log)")
        with contextlib.suppress(aiohttp.ClientError):
            status, _ = await get_text(session, f"{base}/readyz")
            if status == 200:
                return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the daemon was not ready within {limit:g} s")


@dataclass
class Usage:
    """A process's CPU over the measured window and its memory at the end."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


async def measure_processes(
    args: argparse.Namespace,
    daemon: Any,
    base: str,
    blackbox: tuple[Any, str] | None,
    urls: list[str],
    origin: str,
    sim_cpus: set[int] | None,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ready_s = await wait_ready(session, base, daemon, args.endpoints)
        driver = Driver()
        driving = (
            asyncio.create_task(driver.run(session, blackbox[1], urls, args.interval))
            if blackbox is not None
            else None
        )
        floor: Any = None
        try:
            warmup = args.warmup if args.warmup is not None else 3 * args.interval
            await asyncio.sleep(max(0.0, warmup - FLOOR_LEAD))
            # The floor is a new Python process on the server's CPU: started as the window
            # opened, its start-up delayed the server's reads of the daemon's requests, and
            # that counted as the daemon's error (in three traced runs, 14-24% of the
            # probes over 2 ms were answered in the window's first second). It starts
            # before the window.
            floor = start_floor(origin, args.delay, args.duration + FLOOR_LEAD, sim_cpus)
            await asyncio.sleep(FLOOR_LEAD)
            pids = {"daemon": daemon.pid} | ({"blackbox": blackbox[0].pid} if blackbox else {})
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            wall0 = time.time()
            first_text = (await get_text(session, f"{base}/metrics"))[1]
            bb0 = len(driver.completed)
            last_text = first_text
            # /metrics every 15 s through the window, as Prometheus would scrape it. Parsed
            # after the window: at 10,000 endpoints parsing a scrape takes seconds, which
            # counted in the window's length but not in its probes (a rate 6% too low).
            end = wall0 + args.duration
            while (left := end - time.time()) > 0:
                await asyncio.sleep(min(SCRAPE_EVERY, left))
                last_text = (await get_text(session, f"{base}/metrics"))[1]
            wall1 = time.time()
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            bb1 = len(driver.completed)
            loaded = await asyncio.to_thread(floor_result, floor)
            usage = {
                name: Usage(cpu1[name] - cpu0[name], *memory_mb(pid)) for name, pid in pids.items()
            }
        finally:
            if floor is not None and floor.poll() is None:
                floor.kill()  # a run cut short: the floor's sampler must not outlive it
                floor.wait()
            if driving is not None:
                driving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driving
    window = driver.completed[bb0:bb1]
    their_samples = [sample for sample in driver.samples if wall0 <= sample[1] < wall1]
    theirs = nominal_errors(their_samples, args.delay)
    first, last = parse_metrics(first_text), parse_metrics(last_text)
    return {
        "ready_s": ready_s,
        "wall0": wall0,
        "wall1": wall1,
        "usage": usage,
        "daemon_probes": last.probes - first.probes,
        "missed": last.missed - first.missed,
        "lag_p99_bound_ms": lag_p99_bound(first, last),
        "blackbox_probes": len(window),
        "blackbox_success": sum(ok for _, ok in window),
        "blackbox_failures": dict(driver.failures),
        "blackbox_error_p50_ms": percentile(theirs, 50),
        "blackbox_error_p99_ms": percentile(theirs, 99),
        "blackbox_samples": their_samples,
        "loaded_floor": loaded,
    }


def seed_history(db: Path, args: argparse.Namespace, origin: str) -> None:
    """`--history` seconds of ok probes of every endpoint, one per interval, stored as the
    daemon stores them: it reads the last hour of them at start-up into its learned
    deadlines, so it starts holding what a daemon that has run that long holds (and its
    maintenance rolls them up during the warm-up, before the window)."""
    targets = build_targets(origin, args.endpoints, args.interval)
    # Under the vantage the daemon will probe as: it learns from its own results only.
    store = Store(f"sqlite:///{db}", InstanceConfig().name)
    try:
        store.migrate()
        ids = store.sync_endpoints((t.group, t.endpoint, t.base_url) for t in targets)
        now, delay_ms, steps = time.time(), args.delay * 1000.0, int(args.history / args.interval)
        batch: list[tuple[int, ProbeResult]] = []
        for step in range(steps, 0, -1):
            for n, t in enumerate(targets):
                # Spread over the interval and around the delay, as real probes are.
                at = now - step * args.interval + n * args.interval / len(targets)
                latency = delay_ms + 0.5 + (n * 7 + step) % 13 / 10.0
                result = ProbeResult(at, t.group, t.endpoint, Outcome.OK, latency, 200, None, 12, 2)
                batch.append((ids[(t.group, t.endpoint)], result))
            if len(batch) >= 20_000:
                store.save(batch, {})
                batch = []
        store.save(batch, {})
    finally:
        store.close()


def stored_results(db: Path, wall0: float, wall1: float) -> tuple[Counter[str], list[Sample]]:
    """The daemon's stored outcomes and ok probes for probes started in the window."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT r.outcome, e.name, r.at, r.latency_ms FROM probe_results r "
            "JOIN endpoints e ON e.id = r.endpoint_id WHERE r.at >= ? AND r.at < ?",
            (wall0, wall1),
        ).fetchall()
    outcomes = Counter(outcome for outcome, *_ in rows)
    samples = [
        (name, at, ms) for outcome, name, at, ms in rows if outcome == "ok" and ms is not None
    ]
    return outcomes, samples


def run_processes(args: argparse.Namespace, cpus: list[int], pinned: bool) -> dict[str, Any]:
    monitor_cpus = {cpus[0]} if pinned else None
    others = set(cpus[1:]) if pinned else None
    if pinned:
        os.sched_setaffinity(0, others or set(cpus))  # this script plays Prometheus: off the core
    started: list[Any] = []
    record = holds_file()
    try:
        sim, origin = start_server(args.server, args.delay, others, record)
        started.append(sim)
        floor = calibrate(origin, args.calibrate, args.delay)
        convai, convai_url = start_convai(others)
        started.append(convai)
        if args.awake and monitor_cpus is not None:
            started.append(start_spinner(monitor_cpus))
        with tempfile.TemporaryDirectory(prefix="probe-load-") as tmp_name:
            tmp = Path(tmp_name)
            listen = f"127.0.0.1:{free_port()}"
            config = daemon_config(args, tmp, origin, convai_url, listen)
            if args.history:
                seed_history(tmp / "daemon.db", args, origin)
            log_file = (tmp / "daemon.log").open("w")
            command = [sys.executable, "-m", "monitor", "run", "-c", str(config), "--register"]
            daemon = spawn(
                command, monitor_cpus, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
            started.append(daemon)
            blackbox = None
            if args.mode == "side-by-side":
                blackbox = start_blackbox(
                    tmp, build_targets(origin, 1, args.interval)[0], monitor_cpus
                )
                started.append(blackbox[0])
            urls = [
                t.base_url + "/chat/completions"
                for t in build_targets(origin, args.endpoints, args.interval)
            ]
            try:
                summary = run_loop(
                    measure_processes(
                        args, daemon, f"http://{listen}", blackbox, urls, origin, others
                    )
                )
            finally:
                stop_process(daemon)
                log_file.close()
            outcomes, samples = stored_results(
                tmp / "daemon.db", summary["wall0"], summary["wall1"]
            )
            log_lines = (tmp / "daemon.log").read_text().splitlines()
    finally:
        for process in reversed(started):
            if process is sim:
                stop_server(process)
            else:
                stop_process(process)
        holds = holds_of(record)  # written as the responder stopped
    ours, theirs = (
        hold_errors(samples, holds, "daemon"),
        hold_errors(summary.pop("blackbox_samples"), holds, "blackbox"),
    )
    delay_ms = args.delay * 1000.0
    latencies = sorted(ms for _, _, ms in samples)
    errors = nominal_errors(samples, args.delay)
    logged, first_logged = warnings(log_lines)
    summary.update(
        endpoints=args.endpoints,
        interval_s=args.interval,
        delay_ms=delay_ms,
        max_in_flight=args.max_in_flight,
        pinned=pinned,
        awake=args.awake,
        history_s=args.history,
        server=args.server,
        outcomes=dict(outcomes),
        stored_probes=sum(outcomes.values()),
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        error_p50_ms=percentile(errors, 50),
        error_p99_ms=percentile(errors, 99),
        hold_matched=len(ours),
        hold_error_p50_ms=percentile(ours, 50),
        hold_error_p99_ms=percentile(ours, 99),
        blackbox_hold_matched=len(theirs),
        blackbox_hold_error_p50_ms=percentile(theirs, 50),
        blackbox_hold_error_p99_ms=percentile(theirs, 99),
        **floor_summary("loaded_floor", summary.pop("loaded_floor"), holds, args.delay),
        **floor_summary("floor", floor, holds, args.delay),
        log_lines=len(log_lines),
        log_warnings=dict(logged),
        log_first_warnings=first_logged,
    )
    return summary


def warnings(lines: list[str]) -> tuple[Counter[str], dict[str, str]]:
    """The daemon's warning and error events by name, and the first of each as logged
    (without its timestamp): a count alone does not say what happened."""
    events: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("level") in ("warning", "error"):
                name = str(event.get("event"))
                events[name] += 1
                event.pop("timestamp", None)
                first.setdefault(name, json.dumps(event, sort_keys=True))
    return events, first


def report_processes(summary: dict[str, Any]) -> None:
    elapsed = summary["wall1"] - summary["wall0"]
    usage: dict[str, Usage] = summary["usage"]
    ours = usage["daemon"]
    probes = summary["daemon_probes"]
    per_probe = ours.cpu_s / probes * 1000.0 if probes else None
    lag = summary["lag_p99_bound_ms"]
    error_p99, judged = judged_error(summary)
    share = ours.cpu_s / elapsed if elapsed > 0 else 0.0
    lines = [
        f"endpoints            {summary['endpoints']} every {summary['interval_s']:g} s "
        f"(server {summary['server']}, delay {summary['delay_ms']:g} ms, "
        f"max in flight {summary['max_in_flight']}, cpu pinned: {summary['pinned']}"
        + (", kept awake)" if summary["awake"] else ")"),
        f"measured             {elapsed:.1f} s, {summary['ready_s']:.1f} s to ready"
        + (f", {summary['history_s']:g} s of history stored first" if summary["history_s"] else ""),
        f"daemon               {probes:.0f} probes ({probes / elapsed:.1f}/s), "
        f"{ours.cpu_s:.2f} s cpu = {share:.1%} of one core, "
        + ("n/a" if per_probe is None else f"{per_probe:.3f} ms cpu/probe")
        + f", rss {ours.rss_mb:.0f} MB (peak {ours.peak_rss_mb:.0f} MB)",
        f"scheduler lag        p99 <= {'n/a' if lag is None else f'{lag:g} ms'} "
        "(the daemon's lag histogram, to the bucket)",
        f"latency              p50 {_ms(summary['latency_p50_ms'])}, "
        f"p99 {_ms(summary['latency_p99_ms'])} (stored ok probes)",
        f"latency error        p50 {_ms(summary['error_p50_ms'])}, "
        f"p99 {_ms(summary['error_p99_ms'])} (measured minus server delay)",
        f"  against the hold   p50 {_ms(summary['hold_error_p50_ms'])}, "
        f"p99 {_ms(summary['hold_error_p99_ms'])} (measured minus the time the server held "
        f"each request: the daemon's own error; {summary['hold_matched']} probes matched)",
        f"sim floor            p50 {_ms(summary['floor_p50_ms'])}, "
        f"p99 {_ms(summary['floor_p99_ms'])}; against the hold "
        f"p50 {_ms(summary['floor_hold_p50_ms'])}, p99 {_ms(summary['floor_hold_p99_ms'])} "
        f"({summary['floor_samples']} sequential requests from http.client, before)",
        f"sim floor, loaded    p50 {_ms(summary['loaded_floor_p50_ms'])}, "
        f"p99 {_ms(summary['loaded_floor_p99_ms'])}; against the hold "
        f"p50 {_ms(summary['loaded_floor_hold_p50_ms'])}, "
        f"p99 {_ms(summary['loaded_floor_hold_p99_ms'])} ({summary['loaded_floor_samples']} "
        "requests through the window, from a process beside the sim)",
        f"missed runs          {summary['missed']:.0f}",
        f"outcomes             {json.dumps(summary['outcomes'], sort_keys=True)} (stored)",
        f"daemon log           {summary['log_lines']} lines, warnings and errors: "
        f"{json.dumps(summary['log_warnings'], sort_keys=True)}",
        *(f"  first {line}" for line in summary["log_first_warnings"].values()),
    ]
    ratio = None
    if "blackbox" in usage:
        theirs = usage["blackbox"]
        count = summary["blackbox_probes"]
        their_per = theirs.cpu_s / count * 1000.0 if count else None
        if per_probe is not None and their_per:
            ratio = per_probe / their_per
        lines += [
            f"blackbox_exporter    {count} probes ({count / elapsed:.1f}/s, "
            f"{summary['blackbox_success']} successful"
            + (
                f", driver errors {summary['blackbox_failures']}"
                if summary["blackbox_failures"]
                else ""
            )
            + f"), {theirs.cpu_s:.2f} s cpu = {theirs.cpu_s / elapsed:.1%} of one core, "
            + ("n/a" if their_per is None else f"{their_per:.3f} ms cpu/probe")
            + f", rss {theirs.rss_mb:.0f} MB (peak {theirs.peak_rss_mb:.0f} MB)",
            f"blackbox latency err p50 {_ms(summary['blackbox_error_p50_ms'])}, "
            f"p99 {_ms(summary['blackbox_error_p99_ms'])} (its processing + transfer phases "
            "minus server delay)",
            f"  against the hold   p50 {_ms(summary['blackbox_hold_error_p50_ms'])}, "
            f"p99 {_ms(summary['blackbox_hold_error_p99_ms'])} "
            f"({summary['blackbox_hold_matched']} probes matched)",
            "ratio                "
            + ("n/a" if ratio is None else f"{ratio:.2f}")
            + " (daemon cpu/probe over blackbox_exporter's)",
        ]
    lines += [
        "targets:",
        f"  cpu <= {CPU_SHARE_TARGET:.0%} of one core     {_met(share <= CPU_SHARE_TARGET)}",
        f"  lag p99 <= {LAG_P99_TARGET_MS:g} ms        "
        + _met(lag is not None and lag <= LAG_P99_TARGET_MS),
        f"  latency error p99 <= {ERROR_P99_TARGET_MS:g} ms "
        + _met(error_p99 is not None and error_p99 <= ERROR_P99_TARGET_MS)
        + f" ({judged})",
        f"  rss <= {RSS_TARGET_MB:g} MB             {_met(ours.peak_rss_mb <= RSS_TARGET_MB)}",
        f"  no missed runs             {_met(summary['missed'] == 0)}",
        f"  every outcome ok           {_met(set(summary['outcomes']) == {'ok'})}",
    ]
    if ratio is not None:
        lines.append(f"  ratio <= 1.0               {_met(ratio <= 1.0)}")
    print("\n".join(lines), flush=True)


# --- entry ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--mode",
        choices=["daemon", "side-by-side", "loop", "floor"],
        default="side-by-side",
        help="what is measured (see the module doc; default side-by-side)",
    )
    parser.add_argument("--endpoints", type=int, default=500, help="endpoints (default 500)")
    parser.add_argument("--interval", type=float, default=5.0, help="probe interval, s (5)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured time, s (60)")
    parser.add_argument("--delay", type=float, default=0.05, help="server-side delay, s (0.05)")
    parser.add_argument(
        "--server",
        choices=["exact", "sim"],
        default="exact",
        help="the endpoints: benchmarks/responder.py (exact, default) or monitor.sim.openai",
    )
    parser.add_argument("--max-in-flight", type=int, default=100, help="probe bound (100)")
    parser.add_argument(
        "--calibrate", type=int, default=100, help="sequential sim requests first (100; 0 skips)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before measuring (3 intervals)"
    )
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument(
        "--history",
        type=float,
        default=0.0,
        help="seconds of stored ok probes the daemon starts with (0; 3600 fills its windows)",
    )
    parser.add_argument(
        "--awake",
        action="store_true",
        help="keep the monitor's CPU from idling (a diagnostic: see the module doc)",
    )
    parser.add_argument(
        "--origin", default=None, help="the sim to sample (--mode floor, which the others start)"
    )
    args = parser.parse_args(argv)
    if args.mode == "floor" and not args.origin:
        parser.error("--mode floor needs --origin")
    if args.endpoints < 1 or args.interval <= 0 or args.duration <= 0 or args.delay < 0:
        parser.error("--endpoints, --interval and --duration must be positive, --delay >= 0")
    if args.calibrate < 0:
        parser.error("--calibrate must not be negative")
    if args.history < 0:
        parser.error("--history must not be negative")
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")
    if args.awake and (args.no_pin or args.mode not in ("daemon", "side-by-side")):
        parser.error("--awake needs the monitor pinned, in --mode daemon or side-by-side")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Warnings only: the daemon's per-probe debug events would otherwise be printed (and
    # paid for) as structlog's unconfigured default prints everything.
    setup_logging("warning")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    if args.mode == "floor":
        # Started by the other modes: the sim's floor under load, as JSON on stdout.
        print(json.dumps(calibrate(args.origin, args.calibrate, args.delay, FLOOR_PAUSE)))
        return 0
    if args.mode != "loop":
        summary = run_processes(args, cpus, pinned)
        report_processes(summary)
        if args.json:
            summary["usage"] = {name: asdict(u) for name, u in summary["usage"].items()}
            print(json.dumps(summary, sort_keys=True))
        return 0
    if pinned:
        os.sched_setaffinity(0, {cpus[0]})
    record = holds_file()
    process, origin = start_server(
        args.server, args.delay, set(cpus[1:]) if pinned else None, record
    )
    try:
        floor = calibrate(origin, args.calibrate, args.delay)
        with tempfile.TemporaryDirectory(prefix="probe-load-") as tmp:
            path = Path(tmp) / "bench.db"
            store = Store(f"sqlite:///{path}")
            try:
                store.migrate()
                summary = run_loop(measure(args, origin, store))
                size, rows = database_size(store, path)
            finally:
                store.close()
    finally:
        stop_server(process)
        holds = holds_of(record)  # written as the responder stopped
    held = hold_errors(summary.pop("samples"), holds, "daemon")
    summary.update(
        pinned=pinned,
        server=args.server,
        hold_matched=len(held),
        hold_error_p50_ms=percentile(held, 50),
        hold_error_p99_ms=percentile(held, 99),
        # ru_maxrss is in KB on Linux.
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        **floor_summary("floor", floor, holds, args.delay),
        db_bytes=size,
        db_rows=rows,
        db_bytes_per_probe=size / rows if rows else None,
    )
    report(summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
