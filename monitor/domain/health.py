"""Health state machine for one endpoint: a streak rule and a window rule. Pure.

HAProxy's rule: `fall` consecutive failures mark an endpoint down, `rise` consecutive
successes mark it up, and while a streak runs it is re-probed at the fast cadence.

A streak misses partial outages: an endpoint failing half of all requests rarely fails
`fall` times in a row, and reaches `rise` between failures, so the group flaps (Envoy's
and LiteLLM's lesson). So the machine also keeps a window of recent probes:
- down when the failure rate over `failure_rate.window` reaches `threshold` (with at
  least `min_probes` probes in the window), or, when latency counts, when the window's
  p95 latency is over `latency_threshold`;
- up (rise) only when the recent past is clean: no more than half the threshold of
  failures over `clean_window` (the group's failback_after), looking back over at least
  `min_probes` probes;
- nothing stays inconclusive forever: `fall` inconclusive probes in a row (a 400 about
  the probe that adapting did not cure) mark it down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from monitor.domain.latency import percentile
from monitor.domain.outcome import Verdict

# Samples kept per endpoint, whatever the windows: at a 0.1 s cadence a 5-minute window
# would be 3,000 samples, and each probe copies the tuple.
MAX_SAMPLES = 2048


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Cause(StrEnum):
    """Why an endpoint is down: it decides what counts as recovering."""

    STREAK = "streak"  # `fall` failures in a row
    RATE = "rate"  # failure rate over the window
    SLOW = "slow"  # p95 latency over the window
    INCONCLUSIVE = "inconclusive"  # `fall` probes in a row that proved nothing


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    failed: bool
    latency_ms: float | None  # passing probes only


@dataclass(frozen=True, slots=True)
class FailureRate:
    window: float = 60.0
    min_probes: int = 20
    threshold: float = 0.30


@dataclass(frozen=True, slots=True)
class Thresholds:
    rise: int
    fall: int
    rate: FailureRate = FailureRate()
    clean_window: float = 300.0  # the group's failback_after
    latency_threshold: float | None = None  # seconds, on the window's p95
    latency_counts: bool = False  # failover_on includes latency


@dataclass(frozen=True, slots=True)
class HealthState:
    health: Health = Health.UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    since: float | None = None  # when `health` last changed (None: never judged)
    last_probe_at: float | None = None
    inconclusive: int = 0  # consecutive
    cause: Cause | None = None  # why it is down (None unless down)
    samples: tuple[Sample, ...] = ()  # recent pass/fail probes, oldest first
    # When the newest failed sample was taken (-inf: none kept); None when not known (a
    # state built by hand), and then the samples are scanned. It lets a healthy endpoint's
    # probe skip scanning its window twice (rate and cadence), most probes' whole cost here.
    last_failure_at: float | None = None


# The state of an endpoint never probed. Shared (the state is immutable): a lookup's
# default built anew, `states.get(key, HealthState())`, cost the once-a-second tick
# 2,000 constructions at 2,000 endpoints, a stall of the loop of about 13 ms (estimated
# from a profile) every second.
UNPROBED = HealthState()


@dataclass(frozen=True, slots=True)
class Transition:
    before: Health
    after: Health
    at: float


@dataclass(frozen=True, slots=True)
class Window:
    """The failure-rate window at a moment."""

    probes: int
    failures: int
    p95_ms: float | None

    @property
    def rate(self) -> float:
        return self.failures / self.probes if self.probes else 0.0


def judge(
    state: HealthState,
    verdict: Verdict,
    now: float,
    limits: Thresholds,
    latency_ms: float | None = None,
) -> tuple[HealthState, Transition | None]:
    """Fold one probe verdict into the state; return the new state and any transition."""
    if verdict is Verdict.INCONCLUSIVE:
        # Neither streak moves: a probe that proved nothing must not break a run of
        # failures (hiding an outage) nor a run of successes (delaying recovery). But a
        # run of them is an endpoint nobody can show to work: down, after `fall`.
        inconclusive = state.inconclusive + 1
        new = replace(state, last_probe_at=now, inconclusive=inconclusive)
        if inconclusive >= limits.fall and state.health is not Health.DOWN:
            # The successes before the run are no evidence it works now.
            return _moved(replace(new, successes=0), Health.DOWN, Cause.INCONCLUSIVE, now)
        return new, None
    failed = verdict is Verdict.FAIL
    sample = Sample(now, failed, None if failed else latency_ms)
    last_failure = state.last_failure_at
    if last_failure is None:
        last_failure = max((s.at for s in state.samples if s.failed), default=-math.inf)
    # Built directly: dataclasses.replace() looks every field up by name, once per probe.
    state = HealthState(
        health=state.health,
        successes=0 if failed else state.successes + 1,
        failures=state.failures + 1 if failed else 0,
        since=state.since,
        last_probe_at=now,
        inconclusive=0,
        cause=state.cause,
        samples=_keep((*state.samples, sample), now, limits),
        last_failure_at=now if failed else last_failure,
    )
    if state.health is not Health.DOWN:
        cause = _down_cause(state, now, limits)
        if cause is not None:
            return _moved(state, Health.DOWN, cause, now)
    if (
        not failed
        and state.health is not Health.UP
        and state.successes >= limits.rise
        and _down_cause(state, now, limits) is None
        and clean(state, now, limits)
    ):
        return _moved(state, Health.UP, None, now)
    return state, None


def _moved(
    state: HealthState, health: Health, cause: Cause | None, now: float
) -> tuple[HealthState, Transition]:
    return (
        replace(state, health=health, since=now, cause=cause),
        Transition(state.health, health, now),
    )


def _keep(samples: tuple[Sample, ...], now: float, limits: Thresholds) -> tuple[Sample, ...]:
    horizon = now - max(limits.rate.window, limits.clean_window)
    kept = tuple(s for s in samples if s.at >= horizon)
    if len(kept) < limits.rate.min_probes:
        # The clean rule looks back over at least min_probes probes, however old.
        kept = samples[-limits.rate.min_probes :]
    return kept[-MAX_SAMPLES:]


def _down_cause(state: HealthState, now: float, limits: Thresholds) -> Cause | None:
    if state.failures >= limits.fall:
        return Cause.STREAK
    if rate_failing(state, now, limits):
        return Cause.RATE
    if too_slow(state, now, limits):
        return Cause.SLOW
    return None


def window(state: HealthState, now: float, span: float) -> Window:
    recent = [s for s in state.samples if s.at > now - span]
    latencies = sorted(s.latency_ms for s in recent if s.latency_ms is not None)
    return Window(
        probes=len(recent),
        failures=sum(1 for s in recent if s.failed),
        p95_ms=percentile(latencies, 95.0) if latencies else None,
    )


def _no_failure_within(state: HealthState, now: float, span: float) -> bool:
    """Known without a scan that no failed sample is in the last `span` seconds."""
    return state.last_failure_at is not None and state.last_failure_at <= now - span


def rate_failing(state: HealthState, now: float, limits: Thresholds) -> bool:
    """The failure rate over the window has reached the threshold (enough probes seen)."""
    if _no_failure_within(state, now, limits.rate.window):
        return False
    seen = window(state, now, limits.rate.window)
    # At least `fall` failures too: with a small min_probes, a couple of blips in a
    # short window must not outvote the streak rule.
    return (
        seen.probes >= limits.rate.min_probes
        and seen.failures >= limits.fall
        and seen.rate >= limits.rate.threshold
    )


def too_slow(state: HealthState, now: float, limits: Thresholds) -> bool:
    """Latency counts for this group and the window's p95 is over the threshold."""
    limit = _threshold_ms(limits)
    if limit is None:
        return False
    seen = window(state, now, limits.rate.window)
    passing = seen.probes - seen.failures
    return passing >= limits.rate.min_probes and seen.p95_ms is not None and seen.p95_ms > limit


def _threshold_ms(limits: Thresholds) -> float | None:
    if not limits.latency_counts or limits.latency_threshold is None:
        return None
    return limits.latency_threshold * 1000.0


def looks_slow(state: HealthState, now: float, limits: Thresholds) -> bool:
    """Latency counts and the window's p95 is over the threshold, however few probes the
    window holds yet. Not a verdict (too_slow needs min_probes answers): the reason to
    probe fast, since at the normal cadence a 60 s window never holds min_probes."""
    limit = _threshold_ms(limits)
    if limit is None:
        return False
    p95 = window(state, now, limits.rate.window).p95_ms
    return p95 is not None and p95 > limit


def fast_enough(state: HealthState, now: float, limits: Thresholds) -> bool:
    """Fit to take a group switched away for latency: its own p95 is known and under the
    threshold. Read over the window, or over the last min_probes probes when the window
    holds fewer answers; with so few, the p95 is the slowest of them (nearest rank), so
    one slow answer is enough to disqualify it. Always true when latency does not count."""
    limit = _threshold_ms(limits)
    if limit is None:
        return True
    seen = window(state, now, limits.rate.window)
    p95 = seen.p95_ms
    if seen.probes - seen.failures < limits.rate.min_probes:
        recent = sorted(
            s.latency_ms
            for s in state.samples[-limits.rate.min_probes :]
            if s.latency_ms is not None
        )
        p95 = percentile(recent, 95.0) if recent else p95
    return p95 is not None and p95 <= limit


def clean(state: HealthState, now: float, limits: Thresholds) -> bool:
    """Clean enough to rise into or fail back to: at most half the threshold of failures
    over the clean window, looking back over at least min_probes probes.

    With fewer than min_probes probes ever seen, only a spotless record is clean (a new
    endpoint rises on its first `rise` successes, as before).
    """
    horizon = now - limits.clean_window
    recent = [s for s in state.samples if s.at >= horizon]
    if len(recent) < limits.rate.min_probes:
        recent = list(state.samples[-limits.rate.min_probes :])
    failures = sum(1 for s in recent if s.failed)
    if len(recent) < limits.rate.min_probes:
        return failures == 0
    return failures <= math.floor(len(recent) * limits.rate.threshold / 2.0)


def recovering(state: HealthState, now: float, limits: Thresholds) -> bool:
    """A down endpoint whose latest probes undo the reason it went down.

    The engine re-probes the active endpoint right before a failover and stays if this is
    true. A streak is undone by a success, and stays undone while no new streak of `fall`
    failures runs: a lone blip after the answer that broke the streak is a blip (each one
    otherwise gives the re-probe one more chance to fail, and a 5% endpoint would be
    switched about once in 10,000 probes). For a rate or latency verdict one lucky answer
    is not enough: the window itself must have come back to half the threshold. Whatever
    the cause, a window whose failure rate is over the threshold is not recovering.
    """
    if state.health is not Health.DOWN or rate_failing(state, now, limits):
        # Whatever first marked it down (in a 50% brownout it is usually a streak of
        # `fall`), a window still over the threshold outvotes the latest lucky answer.
        return False
    if state.cause is Cause.STREAK:
        return state.failures < limits.fall and _answered_since_down(state)
    if state.successes == 0:
        return False
    if state.cause is Cause.RATE:
        # Back to at most half the threshold (the clean bound), not merely under it: a
        # rate verdict sits near the threshold, where one lucky answer would tip it back.
        seen = window(state, now, limits.rate.window)
        return seen.rate <= limits.rate.threshold / 2.0
    if state.cause is Cause.SLOW:
        return not too_slow(state, now, limits)
    return True


def _answered_since_down(state: HealthState) -> bool:
    since = state.since if state.since is not None else float("-inf")
    return any(not s.failed and s.at >= since for s in state.samples)


def in_transition(state: HealthState) -> bool:
    """True while a streak is running toward a change of health.

    Up with a failure streak, down with a success streak, or unknown with either: each
    is re-probed fast until the machine decides.
    """
    if state.health is Health.UP:
        return state.failures > 0 or state.inconclusive > 0
    if state.health is Health.DOWN:
        return state.successes > 0
    return state.failures > 0 or state.successes > 0 or state.inconclusive > 0


def wants_fast(state: HealthState, now: float, limits: Thresholds) -> bool:
    """Probe at the fast cadence: a streak is running, or (on an endpoint not yet down)
    a failure is still in the window, or its p95 so far is over a latency threshold that
    counts, so the window fills quickly and a brownout or a slowdown is judged in seconds.
    A down endpoint that keeps failing waits its normal interval."""
    if in_transition(state):
        return True
    if state.health is Health.DOWN:
        return False
    span = limits.rate.window
    failing = not _no_failure_within(state, now, span) and window(state, now, span).failures > 0
    return failing or looks_slow(state, now, limits)


def next_delay(state: HealthState, interval: float, fast_interval: float) -> float:
    return fast_interval if in_transition(state) else interval


def up_for(state: HealthState, now: float) -> float:
    """Seconds the endpoint has been continuously up (0 if it is not up)."""
    if state.health is not Health.UP or state.since is None:
        return 0.0
    return max(0.0, now - state.since)


def withdraw(state: HealthState, failed_at: float) -> HealthState:
    """Take back the failure judged at `failed_at` from the window: its probe was failed at
    its learned deadline and has now answered, late but well (see domain.deadline). The
    streak needs no change (the late success that follows breaks it); without this, the
    rate rule would count the misses of an endpoint that is only getting slower, and
    judge it down while every answer still comes within `timeout`."""
    kept = tuple(s for s in state.samples if not (s.failed and s.at == failed_at))
    return state if len(kept) == len(state.samples) else replace(state, samples=kept)
