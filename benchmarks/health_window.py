"""The health machine alone (monitor.domain.health), on a simulated clock: how fast a
brownout is switched and how often independent blips switch, over far more probes than
a real-time run can afford.

One primary, the active endpoint, probed at `interval` (on a grid, at a random phase)
and at `fast_interval` while the machine wants it (a failure in the window, a streak) or
while it is down and active (the engine probes a group on a down endpoint fast). When it
is down and not `recovering`, the engine's re-probe before a failover is one more probe;
still not recovering, the group switches. After a switch it fails back once the primary
is up for `failback_after` with a clean record, as `decide` does. Only the sequence of
outcomes and their times matter here; the real daemon is measured by failover.py.

Prints numbers; exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass, field

from monitor.domain.health import (
    FailureRate,
    Health,
    HealthState,
    Thresholds,
    clean,
    judge,
    recovering,
    up_for,
    wants_fast,
)
from monitor.domain.latency import percentile
from monitor.domain.outcome import Verdict

REPROBE_DELAY = 0.05  # the re-probe before a failover follows the verdict at once


@dataclass
class Run:
    first_failure: float | None = None
    switches: list[float] = field(default_factory=list)  # away and back, in turn
    probes: int = 0


def simulate(
    rng: random.Random, p: float, seconds: float, limits: Thresholds, args: argparse.Namespace
) -> Run:
    """Failures with probability `p` from t=0 on; `seconds` of it after 200 s of health."""
    state = HealthState()
    t = -200.0 + rng.uniform(0.0, args.interval)
    active = True
    run = Run()

    def probe(state: HealthState, at: float) -> HealthState:
        failed = at >= 0.0 and rng.random() < p
        if at >= 0.0:
            run.probes += 1
            if failed and run.first_failure is None:
                run.first_failure = at
        return judge(state, Verdict.FAIL if failed else Verdict.PASS, at, limits, 100.0)[0]

    while t < seconds:
        state = probe(state, t)
        if active and state.health is Health.DOWN and not recovering(state, t, limits):
            t += REPROBE_DELAY
            state = probe(state, t)
            if not recovering(state, t, limits):
                run.switches.append(t)
                active = False
        elif (
            not active
            and state.health is Health.UP
            and up_for(state, t) >= args.failback_after
            and clean(state, t, limits)
        ):
            run.switches.append(t)
            active = True
        fast = wants_fast(state, t, limits) or (active and state.health is Health.DOWN)
        t += args.fast_interval if fast else args.interval
    return run


def _pct(values: list[float], q: float) -> float:
    """Nearest rank, as the daemon's own percentiles: the p95 of 20 runs is the 19th."""
    value = percentile(sorted(values), q)
    assert value is not None, "no values"
    return value


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
    parser.add_argument("--brownout-runs", type=int, default=2000)
    parser.add_argument("--brownout-rate", type=float, default=0.5)
    parser.add_argument("--brownout-for", type=float, default=300.0)
    parser.add_argument("--blip-probes", type=int, default=1_000_000)
    parser.add_argument("--blip-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    limits = Thresholds(
        rise=args.rise,
        fall=args.fall,
        rate=FailureRate(args.window, args.min_probes, args.threshold),
        clean_window=args.failback_after,
    )
    rng = random.Random(args.seed)
    starts: list[float] = []
    detected: list[float] = []
    further = 0
    for _ in range(args.brownout_runs):
        run = simulate(rng, args.brownout_rate, args.brownout_for, limits, args)
        if run.switches and run.first_failure is not None:
            starts.append(run.switches[0])
            detected.append(run.switches[0] - run.first_failure)
            further += len(run.switches) - 1
    probes = 0
    blip_switches = 0
    while probes < args.blip_probes:
        run = simulate(rng, args.blip_rate, 20_000.0, limits, args)
        probes += run.probes
        blip_switches += (len(run.switches) + 1) // 2  # the switches away
    print(
        f"interval {args.interval:g}s, fast {args.fast_interval:g}s, fall {args.fall}, window "
        f"{args.window:g}s, min_probes {args.min_probes}, threshold {args.threshold:.0%}"
    )
    print(
        f"{args.brownout_rate:.0%} brownout for {args.brownout_for:g}s, {args.brownout_runs} "
        f"runs: {len(starts)} switched; start to switch p50 {statistics.median(starts):.1f}s "
        f"p95 {_pct(starts, 95):.1f}s; first failed probe to switch p50 "
        f"{statistics.median(detected):.1f}s p95 {_pct(detected, 95):.1f}s (max "
        f"{max(detected):.1f}s); {further} further switches"
    )
    print(
        f"{args.blip_rate:.0%} blips: {blip_switches} switches in {probes:,} probes = "
        f"{blip_switches / probes * 10_000:.3f} per 10,000"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
