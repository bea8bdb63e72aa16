"""Several copies on one PostgreSQL: what three instances cost the database, and how fast a
new leader acts after `kill -9` of the old one.

    .venv/bin/python benchmarks/ha.py                     # the issue's setup, ~3 minutes
    .venv/bin/python benchmarks/ha.py --endpoints 100 --duration 20 --lease-ttl 3

Three `convai-monitor run` processes (instances east, west, north) share one PostgreSQL
that this script starts from the machine's server binaries (monitor.sim.postgres). They
probe `--endpoints` endpoints (ten to a group) at `--interval`: every instance probes every
endpoint, so the endpoints see three times the probes. The endpoints are paths on one
simulated server in its own process; the primary of the first group is a second sim, so
that it alone can die. Convai is a local simulated API.

After a warm-up of three intervals it measures for `--duration` seconds:
- writes: probe results stored per second (all instances), and PostgreSQL's own count of
  committed transactions and rows written per second (pg_stat_database);
- database CPU: the CPU time of the PostgreSQL server and its backends over the window,
  as a share of one core;
- scheduler lag: how late probes started against their schedule, per instance, from each
  instance's /metrics histogram (the share later than 100 ms, and the bucket holding p99).

Then it kills the leader with SIGKILL at the moment the first group's primary dies, and
times (a) until another instance holds the lease and (b) until Convai's update for that
group lands: a takeover within `lease_ttl`, then the usual detection (fall probes at
fast_interval) and the switch.

Prints numbers; exits 0 whatever they are (a benchmark is for reading, not for gating).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy import text as sql_text

from monitor.sim.convai import ConvaiSim
from monitor.sim.openai import command, spawn
from monitor.sim.postgres import LocalPostgres, free_port
from monitor.store import Store
from monitor.store.lease import Leases
from monitor.store.tables import ResultRow

CONVAI_KEY = "bench-convai-key"
MODEL = "bench-model"
GROUP_SIZE = 10
NAMES = ("east", "west", "north")
LAG_TARGET_S = 0.1


def spawn_sim(*extra: str) -> tuple[subprocess.Popen[str], str]:
    """An endpoint sim in its own process (its CPU is not the monitors')."""
    return spawn("--model", MODEL, *extra)


def groups(count: int, origin: str, first_primary: str, convai: ConvaiSim) -> list[Any]:
    out = []
    for g in range(max(1, count // GROUP_SIZE)):
        name = f"group-{g:03d}"
        endpoints = []
        for e in range(GROUP_SIZE):
            i = g * GROUP_SIZE + e
            url = f"{first_primary}/v1" if i == 0 else f"{origin}/e{i}/v1"
            endpoints.append({"name": f"e{e}", "base_url": url, "api_key": "key"})
        convai.seed(name, MODEL, "key", base_url=endpoints[0]["base_url"])
        out.append({"model_group_name": name, "model_name": MODEL, "endpoints": endpoints})
    return out


def postgres_cpu(server: LocalPostgres) -> float:
    """CPU seconds used so far by the server and every backend it forked."""
    assert server.root is not None
    postmaster = int((server.root / "data" / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def db_counters(url: str) -> tuple[int, int]:
    """PostgreSQL's committed transactions and rows written (inserted + updated) so far."""
    store = Store(url)
    try:
        with store.session() as session:
            row = session.execute(
                sql_text(
                    "SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).one()
            return int(row[0]), int(row[1])
    finally:
        store.close()


def results_between(url: str, start: float, end: float) -> int:
    store = Store(url)
    try:
        with store.session() as session:
            query = select(func.count()).where(ResultRow.at >= start, ResultRow.at < end)
            return int(session.execute(query).scalar_one())
    finally:
        store.close()


_BUCKET = re.compile(r'convai_monitor_scheduler_lag_seconds_bucket\{le="([^"]+)"\} (\S+)')


def lag_buckets(listen: str) -> dict[float, float]:
    """Cumulative scheduler-lag histogram of one instance: upper bound -> count."""
    text = httpx.get(f"http://{listen}/metrics", timeout=10, trust_env=False).text
    return {float(le): float(n) for le, n in _BUCKET.findall(text)}


def lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return {"probes": 0, "late_share": None, "p99_within_s": None}
    within = delta.get(LAG_TARGET_S, 0.0)
    p99 = next((le for le in sorted(delta) if delta[le] >= 0.99 * total), float("inf"))
    return {"probes": int(total), "late_share": 1.0 - within / total, "p99_within_s": p99}


def lease_holder(url: str) -> str | None:
    store = Store(url)
    try:
        lease, _ = Leases(store).read()
    finally:
        store.close()
    return lease.holder if lease.live else None


def wait(condition: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting for {what}")
        time.sleep(0.05)


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    server = LocalPostgres().start()
    sim, origin = spawn_sim("--delay", "0.05")
    victim, victim_origin = spawn_sim("--delay", "0.05")
    convai = ConvaiSim(api_keys=[CONVAI_KEY])
    convai.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        url = server.create_database("bench")
        Store(url).migrate()
        config: dict[str, Any] = {
            "convai": {"api_key": CONVAI_KEY, "base_url": convai.base_url},
            "storage": {"url": url},
            "ha": {"lease_ttl": args.lease_ttl},
            "probes": {"max_in_flight": 200},
            "defaults": {
                "interval": args.interval,
                "fast_interval": 1.0,
                "timeout": min(8.0, args.interval * 0.8),
                "fall": 3,
                "rise": 2,
                "failback": "manual",
            },
            "groups": groups(args.endpoints, origin, victim_origin, convai),
        }
        listen: dict[str, str] = {}
        for name in NAMES:
            listen[name] = f"127.0.0.1:{free_port()}"
            data = {**config, "instance": {"name": name}, "server": {"listen": listen[name]}}
            path = folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            log = (folder / f"{name}.log").open("ab")
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "-c", str(path), "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait(lambda: lease_holder(url) is not None, 60, "a leader")
        print(f"warming up for {3 * args.interval:.0f} s ...", file=sys.stderr)
        time.sleep(3 * args.interval)

        lags = {n: lag_buckets(listen[n]) for n in NAMES}
        commits, rows = db_counters(url)
        cpu = postgres_cpu(server)
        start = time.time()
        time.sleep(args.duration)
        end = time.time()
        cpu = postgres_cpu(server) - cpu
        commits_after, rows_after = db_counters(url)
        lag_after = {n: lag_buckets(listen[n]) for n in NAMES}
        span = end - start
        stored = results_between(url, start, end)

        leader = lease_holder(url)
        assert leader is not None
        updates = len(convai.calls_of("update"))
        killed = time.monotonic()
        procs[leader].send_signal(signal.SIGKILL)
        command(victim, "set refuse")
        wait(lambda: lease_holder(url) not in (None, leader), 10 * args.lease_ttl, "a new leader")
        elected = time.monotonic() - killed
        wait(lambda: len(convai.calls_of("update")) > updates, 120, "the failover")
        switched = time.monotonic() - killed
        return {
            "instances": len(NAMES),
            "endpoints": args.endpoints,
            "interval_s": args.interval,
            "lease_ttl_s": args.lease_ttl,
            "window_s": round(span, 1),
            "results_per_s": round(stored / span, 1),
            "expected_results_per_s": round(len(NAMES) * args.endpoints / args.interval, 1),
            "db_commits_per_s": round((commits_after - commits) / span, 1),
            "db_rows_written_per_s": round((rows_after - rows) / span, 1),
            "db_cpu_share_of_one_core": round(cpu / span, 3),
            "scheduler_lag": {n: lag_summary(lags[n], lag_after[n]) for n in NAMES},
            "killed": leader,
            "new_leader_after_kill_9_s": round(elected, 2),
            "failover_after_kill_9_s": round(switched, 2),
        }
    finally:
        for daemon in procs.values():
            if daemon.poll() is None:
                daemon.terminate()
        for daemon in procs.values():
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for proc in (sim, victim):
            proc.terminate()
            proc.wait(timeout=10)
        convai.stop()
        server.stop()


def report(r: dict[str, Any]) -> None:
    print(
        f"{r['instances']} instances, {r['endpoints']} endpoints at {r['interval_s']:g} s, "
        f"one PostgreSQL on this machine, measured over {r['window_s']} s"
    )
    print(
        f"  probe results stored: {r['results_per_s']}/s (expected {r['expected_results_per_s']}/s)"
    )
    print(
        f"  PostgreSQL: {r['db_commits_per_s']} commits/s, "
        f"{r['db_rows_written_per_s']} rows written/s, "
        f"CPU {100 * r['db_cpu_share_of_one_core']:.1f}% of one core"
    )
    for name, lag in r["scheduler_lag"].items():
        late = lag["late_share"]
        share = f"{100 * late:.2f}%" if late is not None else "n/a"
        print(
            f"  scheduler lag {name}: {lag['probes']} probes, {share} later than "
            f"{LAG_TARGET_S * 1000:.0f} ms, p99 within {lag['p99_within_s']} s"
        )
    print(
        f"  kill -9 of the leader ({r['killed']}, lease_ttl {r['lease_ttl_s']:g} s): new "
        f"leader after {r['new_leader_after_kill_9_s']} s, failover of the group whose "
        f"primary died at that moment after {r['failover_after_kill_9_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="convai-monitor-ha-") as folder:
        result = run(args, Path(folder))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
