"""Learned deadlines: how long a probe may stay unanswered before it counts as a timeout.

A hang (a server that accepts the request and never answers) used to cost a whole
`timeout` per failed probe. Each endpoint's own history says what "normal" is: a probe
still unanswered after `max(floor, factor x p99)` of its recent successful probes is
failed at that moment, while the request itself keeps waiting until `timeout` in case the
answer is only late. Pure: `now` is always passed in.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from monitor.domain.latency import percentile
from monitor.domain.outcome import Outcome, Verdict

# The learned latency covers the last hour: long enough to include the endpoint's busy
# minutes, short enough to follow a model that got slower today.
WINDOW = 3600.0
# Below this many successful probes in the window, p99 would be one unlucky sample (or
# none): `timeout` alone applies until the endpoint has shown what it usually does.
MIN_SAMPLES = 20
# A bound on memory per endpoint: at a 1 s fast cadence an hour is 3,600 samples; the
# oldest go first beyond this.
MAX_SAMPLES = 4000


@dataclass(frozen=True, slots=True)
class DeadlineRule:
    floor: float  # seconds; a fast endpoint's deadline never drops below this
    factor: float  # times the learned p99
    timeout: float  # seconds; the deadline never exceeds it
    min_samples: int = MIN_SAMPLES


def deadline(rule: DeadlineRule, p99_ms: float | None, samples: int) -> float:
    """Seconds a probe may stay unanswered before it is failed as a timeout."""
    if p99_ms is None or samples < rule.min_samples:
        return rule.timeout
    return min(rule.timeout, max(rule.floor, rule.factor * p99_ms / 1000.0))


def late_verdict(outcome: Outcome) -> Verdict | None:
    """How the answer to a probe already failed at its deadline is judged.

    A passing answer is a success (recorded at its arrival, with its real latency): an
    endpoint that is only getting slower keeps answering and stays up. Anything else was
    already counted as the timeout at the deadline: counting it again would fail one
    probe twice.
    """
    return Verdict.PASS if outcome.verdict is Verdict.PASS else None


@dataclass
class LatencyWindow:
    """One endpoint's successful probe latencies over the last WINDOW seconds, kept
    incrementally (a sorted copy is maintained so p99 costs a lookup, not a query)."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (at, ms), by arrival
    ordered: list[float] = field(default_factory=list)  # the same latencies, ascending

    def add(self, at: float, latency_ms: float) -> None:
        self.samples.append((at, latency_ms))
        bisect.insort(self.ordered, latency_ms)
        if len(self.samples) > MAX_SAMPLES:
            self._drop()

    def _drop(self) -> None:
        _at, ms = self.samples.popleft()
        del self.ordered[bisect.bisect_left(self.ordered, ms)]

    def expire(self, now: float) -> None:
        while self.samples and self.samples[0][0] < now - WINDOW:
            self._drop()

    def p99(self, now: float) -> tuple[float | None, int]:
        """The window's p99 latency (ms) and how many samples it is from."""
        self.expire(now)
        return percentile(self.ordered, 99), len(self.ordered)
