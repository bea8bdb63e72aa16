"""Learned deadlines: how long a probe may stay unanswered before it counts as a timeout.

A hang (a server that accepts the request and never answers) used to cost a whole
`timeout` per failed probe. Each endpoint's own history says what "normal" is: a probe
still unanswered after `max(floor, factor x p99)` of its recent successful probes is
failed at that moment, while the request itself keeps waiting until `timeout` in case the
answer is only late. Pure: `now` is always passed in.
"""

from __future__ import annotations

import bisect
from array import array
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
# The dropped prefix of a window's arrays is cut off once it is at least this long (and
# half the array): cutting at every drop would move the whole hour each time.
_COMPACT_AT = 64


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
    incrementally (a sorted copy is maintained so p99 costs a lookup, not a query).

    Kept as C doubles, not objects: a window holds an hour of samples for every endpoint
    (720,000 at 2,000 endpoints probed every 10 s), and an (at, ms) tuple of two floats
    cost 124 bytes a sample where these arrays cost 24-40, with nothing in them for the
    garbage collector to count or walk (benchmarks/window_memory.py).
    """

    # (at, ms) by arrival, live from `head` on; the dropped prefix is cut off once it is
    # half the array, so dropping the oldest stays O(1) amortized.
    at: array[float] = field(default_factory=lambda: array("d"))
    ms: array[float] = field(default_factory=lambda: array("d"))
    head: int = 0
    ordered: array[float] = field(default_factory=lambda: array("d"))  # live ms, ascending

    def __len__(self) -> int:
        return len(self.at) - self.head

    def add(self, at: float, latency_ms: float) -> None:
        self.at.append(at)
        self.ms.append(latency_ms)
        bisect.insort(self.ordered, latency_ms)
        if len(self) > MAX_SAMPLES:
            self._drop()

    def _drop(self) -> None:
        ms = self.ms[self.head]
        del self.ordered[bisect.bisect_left(self.ordered, ms)]
        self.head += 1
        if self.head >= _COMPACT_AT and 2 * self.head >= len(self.at):
            del self.at[: self.head]
            del self.ms[: self.head]
            self.head = 0

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW
        while self.head < len(self.at) and self.at[self.head] < cutoff:
            self._drop()

    def p99(self, now: float) -> tuple[float | None, int]:
        """The window's p99 latency (ms) and how many samples it is from."""
        self.expire(now)
        return percentile(self.ordered, 99), len(self.ordered)
