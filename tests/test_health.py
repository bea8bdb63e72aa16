"""Table-driven tests of the rise/fall health state machine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from monitor.domain.health import (
    Cause,
    FailureRate,
    Health,
    HealthState,
    Thresholds,
    clean,
    fast_enough,
    in_transition,
    judge,
    next_delay,
    rate_failing,
    recovering,
    up_for,
    wants_fast,
    withdraw,
)
from monitor.domain.outcome import Outcome, Verdict

P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE  # noqa: E741
# The streak rules alone: a rate that can never be reached, a clean look-back of 2 probes.
LIMITS = Thresholds(rise=2, fall=3, rate=FailureRate(60.0, 2, 1.0), clean_window=0.0)
# 30% over 60 s with 10 probes at least (the old default), clean over failback_after.
WINDOW = Thresholds(rise=2, fall=3, rate=FailureRate(60.0, 10, 0.30), clean_window=300.0)


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
        ([I, I], Health.UNKNOWN, True),  # counting toward "inconclusive too long"
        ([I, I, I], Health.DOWN, False),  # nothing stays inconclusive forever
        ([P, P, I, I, I], Health.DOWN, False),
        ([P, P, I, I, P], Health.UP, False),  # an answer ends the inconclusive run
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
    limits = Thresholds(rise=1, fall=1, rate=FailureRate(60.0, 2, 1.0), clean_window=0.0)
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


def play(
    verdicts: list[Verdict],
    limits: Thresholds = WINDOW,
    start: HealthState | None = None,
    t0: float = 1.0,
    latency_ms: float | None = 10.0,
) -> HealthState:
    """One probe a second."""
    state = start or HealthState()
    for i, verdict in enumerate(verdicts):
        state, _ = judge(state, verdict, t0 + i, limits, latency_ms)
    return state


HEALTHY = [P] * 12


@pytest.mark.parametrize(
    ("name", "verdicts", "health", "cause"),
    [
        # A 50% brownout never fails 3 in a row here, yet it is down on its rate.
        ("half fail, alternating", HEALTHY + [F, P] * 10, Health.DOWN, Cause.RATE),
        # 5% independent blips: one failure in twenty stays up.
        ("one in twenty", HEALTHY + ([P] * 19 + [F]) * 5, Health.UP, None),
        # Two failures in ten is 20%: under the threshold, up.
        ("one in five", HEALTHY + ([P] * 4 + [F]) * 6, Health.UP, None),
        # Too few probes to judge a rate: two failures in four is not "down" by rate.
        ("young endpoint", [P, F, P, F], Health.UNKNOWN, None),
        # A streak still works on its own.
        ("hard down", [*HEALTHY, F, F, F], Health.DOWN, Cause.STREAK),
    ],
)
def test_failure_rate_window(
    name: str, verdicts: list[Verdict], health: Health, cause: Cause | None
) -> None:
    state = play(verdicts)
    assert state.health is health, name
    assert state.cause is cause, name


def test_a_brownout_does_not_rise_between_failures() -> None:
    state = play(HEALTHY + [F, P] * 10)
    assert state.health is Health.DOWN
    # Two (and more) successes in a row inside the brownout: the rise streak is reached,
    # the record is not clean, so it stays down (no failback into a brownout).
    state = play([P, P, P, F, P, P, F, P, P, P], start=state, t0=100.0)
    assert state.successes >= 2
    assert state.health is Health.DOWN
    assert not clean(state, 110.0, WINDOW)


def test_recovery_needs_a_clean_window_then_rises() -> None:
    state = play(HEALTHY + [F, P] * 10)  # 10 failures in the look-back
    t = 100.0
    rose_after = None
    for i in range(200):
        state, transition = judge(state, P, t + i, WINDOW, 10.0)
        if transition is not None:
            rose_after = i + 1
            break
    assert state.health is Health.UP
    # 32 probes with 10 failures: 10 failures are at most 15% of the look-back once it
    # holds 67 probes, so the 35th success in a row is the one that rises.
    assert rose_after == 35


def test_the_clean_window_ages_out_old_failures() -> None:
    limits = Thresholds(rise=2, fall=3, rate=FailureRate(60.0, 10, 0.30), clean_window=30.0)
    state = play(HEALTHY + [F, P] * 10, limits)
    # Successes every 10 s: after the failures are older than 30 s (and 10 probes are
    # in the look-back) the record is clean.
    for i in range(12):
        state, _ = judge(state, P, 100.0 + 10.0 * i, limits, 10.0)
    assert state.health is Health.UP


def test_recovering_for_a_rate_verdict_needs_the_rate_back_under() -> None:
    down = play(HEALTHY + [F, P] * 10)
    assert down.cause is Cause.RATE
    lucky, _ = judge(down, P, 40.0, WINDOW, 10.0)
    # One lucky success does not cancel a 50% failure rate.
    assert lucky.successes >= 1
    assert not recovering(lucky, 40.0, WINDOW)
    streak = play([*HEALTHY, F, F, F])
    assert streak.cause is Cause.STREAK
    answered, _ = judge(streak, P, 20.0, WINDOW, 10.0)
    assert recovering(answered, 20.0, WINDOW)
    assert not recovering(streak, 20.0, WINDOW)


@pytest.mark.parametrize(
    ("name", "after_streak", "answering"),
    [
        ("no answer yet", [], False),
        ("the re-probe answered", [P], True),
        # A lone blip after the answer that broke the streak is a blip: it does not hand
        # the next re-probe another chance to fail (the blip benchmark's false switches).
        ("a blip after the answer", [P, F], True),
        ("two blips after the answer", [P, F, F], True),
        # A new streak of `fall` failures is an outage again.
        ("a new streak", [P, F, F, F], False),
        # A brownout that happened to fail three in a row: its window says 50%.
        ("the window says brownout", [P, F, P, F, P, F, P, F, P, F, P, F, P, F, P], False),
    ],
)
def test_recovering_after_a_streak(name: str, after_streak: list[Verdict], answering: bool) -> None:
    streak = play([*HEALTHY, F, F, F])
    assert streak.cause is Cause.STREAK
    state = play(after_streak, start=streak, t0=16.0) if after_streak else streak
    assert state.health is Health.DOWN, name
    now = 15.0 + len(after_streak)
    assert recovering(state, now, WINDOW) is answering, name


def test_recovering_after_a_streak_needs_an_answer_seen_since_it_went_down() -> None:
    """Health survives a restart but its window does not: a down endpoint read back with
    no failures counted and no samples has answered nothing yet."""
    restored = HealthState(health=Health.DOWN, since=100.0, cause=Cause.STREAK)
    assert not recovering(restored, 101.0, WINDOW)


def test_latency_counts_only_when_the_group_says_so() -> None:
    slow = Thresholds(
        rise=2, fall=3, rate=FailureRate(60.0, 10, 0.30), latency_threshold=0.1,
        latency_counts=True,
    )  # fmt: skip
    judged = play([P] * 12, slow, latency_ms=250.0)
    assert judged.health is Health.DOWN
    assert judged.cause is Cause.SLOW
    # One slow probe among fast ones: the p95 of 20 probes is not the slow one.
    mixed = play([P] * 19, slow, latency_ms=20.0)
    mixed, _ = judge(mixed, P, 30.0, slow, 250.0)
    assert mixed.health is Health.UP
    # Without latency in failover_on, a slow endpoint is up.
    ignored = Thresholds(rise=2, fall=3, latency_threshold=0.1, latency_counts=False)
    assert play([P] * 12, ignored, latency_ms=250.0).health is Health.UP


# Latency counts: p95 over 100 ms, judged on at least 10 answers in a 60 s window.
SLOW_COUNTS = Thresholds(
    rise=2, fall=3, rate=FailureRate(60.0, 10, 0.30), latency_threshold=0.1, latency_counts=True
)


def _answers(latencies: list[float], limits: Thresholds, every: float = 10.0) -> HealthState:
    """Passing probes `every` seconds apart (the normal cadence), with these latencies."""
    state = HealthState()
    for i, latency in enumerate(latencies):
        state, _ = judge(state, P, 1.0 + i * every, limits, latency)
    return state


def test_fast_cadence_while_the_window_looks_slow() -> None:
    """At the normal cadence a 60 s window holds 6 answers, never min_probes: without fast
    probing a slow endpoint would never be judged slow. One slow answer is enough to
    start it; latency that does not count never does."""
    slow = _answers([20.0] * 5 + [250.0], SLOW_COUNTS)
    assert slow.health is Health.UP  # 6 answers in the window: no verdict yet
    assert wants_fast(slow, 52.0, SLOW_COUNTS)
    assert not wants_fast(_answers([20.0] * 6, SLOW_COUNTS), 52.0, SLOW_COUNTS)
    ignored = replace(SLOW_COUNTS, latency_counts=False)
    assert not wants_fast(_answers([20.0] * 5 + [250.0], ignored), 52.0, ignored)
    # The slow answer leaves the window: back to the normal cadence.
    assert not wants_fast(slow, 51.0 + 61.0, SLOW_COUNTS)


def test_fast_enough_needs_a_known_p95_under_the_threshold() -> None:
    fast = _answers([20.0] * 12, SLOW_COUNTS, every=1.0)
    assert fast_enough(fast, 13.0, SLOW_COUNTS)
    # As slow as the primary it would replace: no target for a latency switch.
    assert not fast_enough(_answers([250.0] * 12, SLOW_COUNTS, every=1.0), 13.0, SLOW_COUNTS)
    # Few answers (a standby at its normal cadence): the slowest of them decides.
    few = _answers([20.0, 20.0, 250.0], SLOW_COUNTS)
    assert not fast_enough(few, 30.0, SLOW_COUNTS)
    assert fast_enough(_answers([20.0, 20.0, 30.0], SLOW_COUNTS), 30.0, SLOW_COUNTS)
    # Answers that left the window still count, as the last min_probes probes.
    assert fast_enough(fast, 1000.0, SLOW_COUNTS)
    assert not fast_enough(HealthState(health=Health.UP), 1.0, SLOW_COUNTS)  # nothing known
    # Latency does not count: any endpoint is fast enough.
    ignored = replace(SLOW_COUNTS, latency_counts=False)
    assert fast_enough(_answers([250.0] * 12, ignored, every=1.0), 13.0, ignored)


def test_fast_cadence_while_a_failure_is_in_the_window() -> None:
    state = play([*HEALTHY, F, P, P])  # a failure at t=13, then two successes
    assert not in_transition(state)
    assert wants_fast(state, 20.0, WINDOW)
    assert not wants_fast(state, 13.0 + 61.0, WINDOW)
    assert not wants_fast(play(HEALTHY), 20.0, WINDOW)
    # Down and still failing: the normal cadence (a dead fallback is not hammered).
    down = play(HEALTHY + [F] * 5)
    assert not wants_fast(down, 20.0, WINDOW)


DEFAULTS = Thresholds(rise=2, fall=3, clean_window=300.0)  # failure_rate's defaults


@pytest.mark.parametrize(
    ("name", "verdicts", "limits", "health"),
    [
        # Six quiet probes, then three blips among the first four fast re-probes: 30% of
        # 10 probes. Independent 5% failures do this about once in 3,000 episodes, each a
        # switch the re-probe cannot veto, so 10 probes are too few to judge a rate on.
        ("blip cluster, min_probes 10", [P] * 6 + [F, F, P, F], WINDOW, Health.DOWN),
        ("blip cluster, defaults", [P] * 6 + [F, F, P, F], DEFAULTS, Health.UP),
        # A 50% brownout still reaches 30% of 20 probes within a few more probes.
        ("brownout, defaults", [P] * 6 + [F, P] * 8, DEFAULTS, Health.DOWN),
    ],
)
def test_the_default_window_needs_twenty_probes(
    name: str, verdicts: list[Verdict], limits: Thresholds, health: Health
) -> None:
    assert DEFAULTS.rate.min_probes == 20
    assert play(verdicts, limits).health is health, name


def test_a_streak_inside_a_failing_rate_is_not_cancelled_by_one_success() -> None:
    # A brownout usually first shows as `fall` failures in a row; by then the window is
    # over the threshold too. The lucky answer to the re-probe before a failover must not
    # cancel it (it did: each failure then gave the brownout a coin flip to stay).
    down = play(HEALTHY + [F, P] * 5 + [F, F, F], DEFAULTS)
    assert down.cause is Cause.STREAK
    lucky, _ = judge(down, P, 30.0, DEFAULTS, 10.0)
    assert not recovering(lucky, 30.0, DEFAULTS)
    # A plain streak (the window under the threshold) is still cancelled by one answer.
    blip = play([*HEALTHY, *HEALTHY, F, F, F], DEFAULTS)
    answered, _ = judge(blip, P, 30.0, DEFAULTS, 10.0)
    assert recovering(answered, 30.0, DEFAULTS)


@pytest.mark.parametrize("seed", range(6))
def test_the_remembered_last_failure_decides_as_a_full_scan_would(seed: int) -> None:
    """`last_failure_at` only spares scans: every verdict, rate judgement and cadence
    comes out as from a state that has to scan its samples (None), through blips,
    brownouts, withdrawn deadline misses and quiet stretches longer than the window."""
    import random

    rng = random.Random(seed)
    limits = Thresholds(rise=2, fall=3, rate=FailureRate(window=20.0, min_probes=5, threshold=0.3))
    fast, scanned = HealthState(), HealthState()
    now = 0.0
    for _ in range(3000):
        now += rng.choice((0.5, 1.0, 5.0, 30.0))
        rate = rng.choice((0.0, 0.05, 0.5, 1.0))
        verdict = Verdict.FAIL if rng.random() < rate else Verdict.PASS
        fast, moved = judge(fast, verdict, now, limits, 50.0)
        scanned, moved_scanned = judge(
            replace(scanned, last_failure_at=None), verdict, now, limits, 50.0
        )
        assert (fast.health, fast.cause, moved) == (scanned.health, scanned.cause, moved_scanned)
        later = now + rng.choice((0.1, 10.0, 25.0))
        assert rate_failing(fast, later, limits) == rate_failing(
            replace(scanned, last_failure_at=None), later, limits
        )
        assert wants_fast(fast, later, limits) == wants_fast(
            replace(scanned, last_failure_at=None), later, limits
        )
        if verdict is Verdict.FAIL and rng.random() < 0.2:  # a late answer withdraws it
            fast, scanned = withdraw(fast, now), withdraw(scanned, now)
