"""The learned-deadline rules, table-driven (pure: no clock, no I/O)."""

from __future__ import annotations

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


def test_a_late_answer_takes_its_miss_back_from_the_window() -> None:
    state = HealthState(
        samples=(Sample(1.0, False, 20.0), Sample(2.0, True, None), Sample(3.0, True, None))
    )
    assert withdraw(state, 2.0).samples == (Sample(1.0, False, 20.0), Sample(3.0, True, None))
    # Only a failure, and only the one judged at that moment.
    assert withdraw(state, 1.0) is state
    assert withdraw(state, 2.5) is state
