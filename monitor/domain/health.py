"""HAProxy-style rise/fall health state machine for one endpoint.

`fall` consecutive failures mark an endpoint down, `rise` consecutive successes mark it
up. While the counters are running toward a change the endpoint is "in transition" and
is re-probed at the fast cadence, so detection is quick without probing fast all the time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from monitor.domain.outcome import Verdict


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class HealthState:
    health: Health = Health.UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    since: float | None = None  # when `health` last changed (None: never judged)
    last_probe_at: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    before: Health
    after: Health
    at: float


@dataclass(frozen=True, slots=True)
class Thresholds:
    rise: int
    fall: int


def judge(
    state: HealthState, verdict: Verdict, now: float, limits: Thresholds
) -> tuple[HealthState, Transition | None]:
    """Fold one probe verdict into the state; return the new state and any transition."""
    if verdict is Verdict.INCONCLUSIVE:
        # Neither streak moves: a probe that proved nothing must not break a run of
        # failures (hiding an outage) nor a run of successes (delaying recovery).
        return replace(state, last_probe_at=now), None
    if verdict is Verdict.PASS:
        successes, failures = state.successes + 1, 0
    else:
        successes, failures = 0, state.failures + 1
    health = state.health
    if verdict is Verdict.PASS and health is not Health.UP and successes >= limits.rise:
        health = Health.UP
    elif verdict is Verdict.FAIL and health is not Health.DOWN and failures >= limits.fall:
        health = Health.DOWN
    changed = health is not state.health
    new = HealthState(
        health=health,
        successes=successes,
        failures=failures,
        since=now if changed else state.since,
        last_probe_at=now,
    )
    return new, Transition(state.health, health, now) if changed else None


def in_transition(state: HealthState) -> bool:
    """True while a streak is running toward a change of health.

    Up with a failure streak, down with a success streak, or unknown with either: each
    is re-probed fast until the machine decides.
    """
    if state.health is Health.UP:
        return state.failures > 0
    if state.health is Health.DOWN:
        return state.successes > 0
    return state.failures > 0 or state.successes > 0


def next_delay(state: HealthState, interval: float, fast_interval: float) -> float:
    return fast_interval if in_transition(state) else interval


def up_for(state: HealthState, now: float) -> float:
    """Seconds the endpoint has been continuously up (0 if it is not up)."""
    if state.health is not Health.UP or state.since is None:
        return 0.0
    return max(0.0, now - state.since)
