"""The learned-deadline rules, table-driven (pure: no clock, no I/O)."""

from __future__ import annotations

import random

import pytest

from monitor.domain.deadline import (
    MAX_SAMPLES,
    WINDOW,
    DeadlineRule,
    LatencyWindow,
    deadline,
    late_verdict,
)
from monitor.domain.health import HealthState, Sample, withdraw
from monitor.domain.latency import percentile
from monitor.domain.outcome import Outcome, Verdict

RULE = DeadlineRule(floor=2.0, factor=4.0, timeout=15.0)


@pytest.mark.parametrize(
    ("p99_ms", "samples", "expected"),
    [
        (None, 0, 15.0),  # nothing learnt: timeout alone
        (100.0, 19, 15.0),  # too little history: timeout alone
        (100.0, 20, 2.0),  # a fast endpoint: the floor
        (800.0, 20, 3.2),  # 4 x p99
        (3000.0, 500, 12.0),  # a slow-by-nature model: a long deadline by its own history
        (5000.0, 500, 15.0),  # never more than timeout
    ],
)
def test_deadline(p99_ms: float | None, samples: int, expected: float) -> None:
    assert deadline(RULE, p99_ms, samples) == pytest.approx(expected)


def test_deadline_rule_per_group() -> None:
    rule = DeadlineRule(floor=0.5, factor=2.0, timeout=5.0, min_samples=5)
    assert deadline(rule, 100.0, 5) == 0.5
    assert deadline(rule, 1000.0, 5) == 2.0
    assert deadline(rule, 1000.0, 4) == 5.0


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome.OK, Verdict.PASS),  # late but answered: a success, breaks the streak
        (Outcome.TIMEOUT, None),  # never answered: already failed at the deadline
        (Outcome.HTTP_5XX, None),  # answered badly: already counted once
        (Outcome.CONNECT_ERROR, None),
        (Outcome.PROBE_REJECTED, None),
    ],
)
def test_late_answer(outcome: Outcome, expected: Verdict | None) -> None:
    assert late_verdict(outcome) is expected


def test_window_p99_follows_the_last_hour() -> None:
    window = LatencyWindow()
    for i in range(99):
        window.add(float(i), 100.0)
    window.add(99.0, 5000.0)
    assert window.p99(100.0) == (100.0, 100)  # one slow answer in 100 is the 1%
    window.add(100.0, 4000.0)
    assert window.p99(101.0) == (4000.0, 101)
    # An hour later the old samples are gone; only the two newest remain.
    assert window.p99(99.5 + WINDOW) == (4000.0, 1)
    assert window.p99(200.0 + WINDOW) == (None, 0)


def test_window_is_bounded() -> None:
    window = LatencyWindow()
    for i in range(MAX_SAMPLES + 10):
        window.add(i * 0.1, float(i))  # all within the hour
    p99, samples = window.p99(MAX_SAMPLES * 0.1)
    assert samples == MAX_SAMPLES
    assert window.ordered[0] == 10.0  # the oldest went first
    assert p99 is not None


def test_window_agrees_with_a_plain_list_through_hours_of_probes() -> None:
    """The arrays cut their dropped prefix off now and then: across many cuts, on the
    bound and on the hour, the window says what a list of (at, ms) pairs would."""
    rng = random.Random(7)
    window, kept = LatencyWindow(), []
    now, bounded, cuts = 0.0, 0, 0
    for step in range(20_000):
        # Fast enough to reach the bound at first, then an hour's worth expiring, with a
        # half-hour gap now and then.
        fast = step < 8_000
        now += 0.2 if fast else rng.choice((1.0, 10.0, 400.0)) if step % 97 else 1800.0
        latency = rng.choice((50.0, 51.0, 52.5, rng.uniform(40.0, 900.0)))
        window.add(now, latency)
        kept.append((now, latency))
        bounded += len(kept) > MAX_SAMPLES
        kept = [(at, ms) for at, ms in kept[-MAX_SAMPLES:] if at >= now - WINDOW]
        head = window.head
        if step % 13 == 0:
            expected = sorted(ms for _, ms in kept)
            assert window.p99(now) == (percentile(expected, 99), len(expected))
            assert list(window.ordered) == expected
            assert len(window.at) <= 2 * max(len(kept), 64)  # the dropped part is cut off
        cuts += window.head < head
    assert bounded > 1000
    assert cuts > 50


def test_a_late_answer_takes_its_miss_back_from_the_window() -> None:
    state = HealthState(
        samples=(Sample(1.0, False, 20.0), Sample(2.0, True, None), Sample(3.0, True, None))
    )
    assert withdraw(state, 2.0).samples == (Sample(1.0, False, 20.0), Sample(3.0, True, None))
    # Only a failure, and only the one judged at that moment.
    assert withdraw(state, 1.0) is state
    assert withdraw(state, 2.5) is state
