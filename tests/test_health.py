"""Table-driven tests of the rise/fall health state machine."""

from __future__ import annotations

import pytest

from monitor.domain.health import (
    Health,
    HealthState,
    Thresholds,
    in_transition,
    judge,
    next_delay,
    up_for,
)
from monitor.domain.outcome import Outcome, Verdict

P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE  # noqa: E741
LIMITS = Thresholds(rise=2, fall=3)


def run(verdicts: list[Verdict], start: HealthState | None = None) -> list[HealthState]:
    state = start or HealthState()
    out = []
    for t, verdict in enumerate(verdicts, start=1):
        state, _ = judge(state, verdict, float(t), LIMITS)
        out.append(state)
    return out


@pytest.mark.parametrize(
    ("verdicts", "health", "transition_fast"),
    [
        ([], Health.UNKNOWN, False),
        ([P], Health.UNKNOWN, True),  # counting toward rise: fast re-probe
        ([P, P], Health.UP, False),
        ([F], Health.UNKNOWN, True),
        ([F, F, F], Health.DOWN, False),
        ([P, P, F], Health.UP, True),  # a blip on an up endpoint: fast re-probe, still up
        ([P, P, F, F], Health.UP, True),
        ([P, P, F, F, F], Health.DOWN, False),
        ([P, P, F, F, P], Health.UP, False),  # the streak broke: back to normal cadence
        ([P, P, F, F, P, F, F], Health.UP, True),  # failures must be consecutive
        ([F, F, F, P], Health.DOWN, True),
        ([F, F, F, P, P], Health.UP, False),
        ([F, F, F, P, F, P], Health.DOWN, True),  # successes must be consecutive
        ([F, F, F, F, F, F], Health.DOWN, False),  # down and still failing: normal cadence
        ([P, P, F, I, F, I, F], Health.DOWN, False),  # inconclusive neither breaks nor counts
        ([F, F, F, P, I, P], Health.UP, False),
        ([I, I, I, I], Health.UNKNOWN, False),
    ],
)
def test_rise_and_fall(verdicts: list[Verdict], health: Health, transition_fast: bool) -> None:
    states = run(verdicts)
    final = states[-1] if states else HealthState()
    assert final.health is health
    assert in_transition(final) is transition_fast
    assert next_delay(final, 30.0, 2.0) == (2.0 if transition_fast else 30.0)


def test_transitions_are_reported_once_with_time() -> None:
    state = HealthState()
    seen = []
    for t, verdict in enumerate([P, P, P, F, F, F, F, P, P], start=1):
        state, transition = judge(state, verdict, float(t), LIMITS)
        if transition:
            seen.append((transition.before, transition.after, transition.at))
    assert seen == [
        (Health.UNKNOWN, Health.UP, 2.0),
        (Health.UP, Health.DOWN, 6.0),
        (Health.DOWN, Health.UP, 9.0),
    ]
    assert state.since == 9.0
    assert state.last_probe_at == 9.0


def test_up_for_counts_from_the_change() -> None:
    state = run([P, P, P, P])[-1]
    assert up_for(state, 10.0) == 8.0  # up since t=2
    down = run([F, F, F])[-1]
    assert up_for(down, 10.0) == 0.0


def test_rise_and_fall_of_one() -> None:
    limits = Thresholds(rise=1, fall=1)
    state, transition = judge(HealthState(), F, 1.0, limits)
    assert state.health is Health.DOWN
    assert transition is not None
    state, transition = judge(state, P, 2.0, limits)
    assert state.health is Health.UP
    assert transition is not None


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (Outcome.OK, Verdict.PASS),
        (Outcome.PROBE_REJECTED, Verdict.INCONCLUSIVE),
        *[(o, Verdict.FAIL) for o in Outcome if o not in (Outcome.OK, Outcome.PROBE_REJECTED)],
    ],
)
def test_outcome_verdicts(outcome: Outcome, verdict: Verdict) -> None:
    assert outcome.verdict is verdict
