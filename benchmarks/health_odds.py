"""The health rules' odds, from the pure machine: brownout verdicts and blip switches.

The daemon benchmarks (`failover.py`) measure one run of 20 groups, which says little
about an event that should happen less than once in 10,000 probes. This drives the real
`monitor.domain.health` rules with many seeded draws, probing as the daemon does (the
`interval`, `fast_interval` while a failure is in the window or the endpoint is down,
the re-probe of the active endpoint before a failover, which stays if it is
`recovering`), and counts:

- for a 50% brownout: seconds from its start, and from the first failed probe, to the
  failover decision (p50, p95);
- for 5% independent blips on a healthy endpoint: down verdicts and failovers (verdicts
  the re-probe did not veto) per 10,000 probes.

    .venv/bin/python benchmarks/health_odds.py                   # the defaults
    .venv/bin/python benchmarks/health_odds.py --min-probes 10   # compare a setting

It models no network: a probe is a draw, answered at once. Time to pre-flight and
update Convai comes on top (see `failover.py`).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace

from monitor.domain.health import (
    FailureRate,
    Health,
    HealthState,
    Thresholds,
    judge,
    recovering,
    wants_fast,
)
from monitor.domain.outcome import Verdict

REPROBE_AFTER = 0.05  # the re-probe of the active endpoint follows the verdict at once


class Endpoint:
    """One endpoint failing each probe with probability `p`, judged by the real rules."""

    def __init__(self, p: float, limits: Thresholds, interval: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.p, self.limits, self.interval = p, limits, interval
        self.t = self.rng.uniform(0.0, interval)  # a random phase of the probe schedule
        self.probes = 0
        state = HealthState()
        # Healthy history: a window's worth of passing probes at the normal cadence.
        for i in range(30):
            state, _ = judge(state, Verdict.PASS, self.t - (30 - i) * interval, limits, 50.0)
        self.state = replace(state, health=Health.UP, since=self.t - 30 * interval)

    def probe(self) -> bool:
        failed = self.rng.random() < self.p
        verdict = Verdict.FAIL if failed else Verdict.PASS
        self.state, _ = judge(self.state, verdict, self.t, self.limits, 50.0)
        self.probes += 1
        return failed

    def failover_due(self) -> bool:
        """Down and not answering; the re-probe before the failover did not save it."""
        if self.state.health is not Health.DOWN or recovering(self.state, self.t, self.limits):
            return False
        self.t += REPROBE_AFTER
        self.probe()
        return not recovering(self.state, self.t, self.limits)

    def advance(self, fast_interval: float) -> None:
        # The active endpoint that is down is probed fast too (the engine marks it urgent).
        fast = wants_fast(self.state, self.t, self.limits) or self.state.health is Health.DOWN
        self.t += fast_interval if fast else self.interval


def brownout(args: argparse.Namespace, limits: Thresholds) -> tuple[list[float], list[float]]:
    from_start, from_first = [], []
    for seed in range(args.brownouts):
        endpoint = Endpoint(args.brownout_rate, limits, args.interval, seed)
        start, first = 0.0, None
        while True:
            if endpoint.probe() and first is None:
                first = endpoint.t
            if endpoint.failover_due():
                break
            endpoint.advance(args.fast_interval)
        from_start.append(endpoint.t - start)
        from_first.append(endpoint.t - (first if first is not None else start))
    return from_start, from_first


def blips(args: argparse.Namespace, limits: Thresholds) -> tuple[int, int, int]:
    verdicts = switches = probes = 0
    for seed in range(args.blip_runs):
        endpoint = Endpoint(args.blip_rate, limits, args.interval, 100_000 + seed)
        while endpoint.probes < args.blip_probes:
            was_down = endpoint.state.health is Health.DOWN
            endpoint.probe()
            if endpoint.state.health is Health.DOWN and not was_down:
                verdicts += 1
            if endpoint.failover_due():
                switches += 1
                # The group moved away; the endpoint starts again as a healthy standby.
                endpoint.state = replace(endpoint.state, health=Health.UP, failures=0)
            endpoint.advance(args.fast_interval)
        probes += endpoint.probes
    return verdicts, switches, probes


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--fast-interval", type=float, default=1.0)
    parser.add_argument("--fall", type=int, default=3)
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--min-probes", type=int, default=FailureRate().min_probes)
    parser.add_argument("--threshold", type=float, default=FailureRate().threshold)
    parser.add_argument("--failback-after", type=float, default=60.0)
    parser.add_argument("--brownout-rate", type=float, default=0.5)
    parser.add_argument("--brownouts", type=int, default=2000)
    parser.add_argument("--blip-rate", type=float, default=0.05)
    parser.add_argument("--blip-runs", type=int, default=200)
    parser.add_argument("--blip-probes", type=int, default=10_000)
    args = parser.parse_args(argv)
    limits = Thresholds(
        rise=args.rise,
        fall=args.fall,
        rate=FailureRate(args.window, args.min_probes, args.threshold),
        clean_window=args.failback_after,
    )
    print(
        f"interval {args.interval:g}s, fast {args.fast_interval:g}s, fall {args.fall}, "
        f"failure_rate {args.window:g}s / {args.min_probes} probes / {args.threshold:.0%}"
    )
    from_start, from_first = brownout(args, limits)
    print(
        f"{args.brownout_rate:.0%} brownout, {args.brownouts} runs: failover decided "
        f"p50 {_pct(from_start, 50):.1f}s p95 {_pct(from_start, 95):.1f}s from its start; "
        f"p50 {_pct(from_first, 50):.1f}s p95 {_pct(from_first, 95):.1f}s from the first "
        "failed probe"
    )
    verdicts, switches, probes = blips(args, limits)
    per = 10_000 / probes
    print(
        f"{args.blip_rate:.0%} blips, {args.blip_runs} x {args.blip_probes:,} probes: "
        f"{verdicts * per:.2f} down verdicts and {switches * per:.3f} failovers per 10,000 "
        f"probes ({switches} in {probes:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
