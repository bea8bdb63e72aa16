"""Table-driven tests of the pure quorum of vantages."""

from __future__ import annotations

import pytest

from monitor.domain.failover import EndpointView
from monitor.domain.health import Health
from monitor.domain.quorum import Tally, Vote, endpoint_view, needed, tally

U, D, K = Health.UP, Health.DOWN, Health.UNKNOWN
NOW = 10_000.0
FRESH = 20.0  # two intervals of 10 s


def votes(spec: str, *, age: float = 1.0, since: float = NOW - 100) -> list[Vote]:
    """One letter per vantage v0, v1, ...: U up, D down, K unknown; lower case: stale."""
    out = []
    for i, letter in enumerate(spec):
        at = NOW - (age if letter.isupper() else FRESH + 5)
        health = {"U": U, "D": D, "K": K}[letter.upper()]
        out.append(Vote(f"v{i}", health, since + i, at))
    return out


@pytest.mark.parametrize(
    ("quorum", "counted", "expected"),
    [
        (None, 1, 1),  # one instance: a quorum of one, today's behaviour
        (None, 2, 2),  # two: both must agree
        (None, 3, 2),
        (None, 4, 3),
        (None, 5, 3),
        (None, 0, 1),  # nobody fresh: no verdict possible
        (2, 3, 2),
        (1, 3, 1),
        (3, 1, 3),  # a fixed quorum is not lowered when vantages die
    ],
)
def test_needed(quorum: int | None, counted: int, expected: int) -> None:
    assert needed(quorum, counted) == expected


@pytest.mark.parametrize(
    ("spec", "quorum", "isolated", "health", "counted"),
    [
        ("D", None, (), D, 1),  # one instance: its own view
        ("U", None, (), U, 1),
        ("K", None, (), K, 1),
        ("DUU", None, (), U, 3),  # one vantage's bad path: no outage
        ("DDU", None, (), D, 3),  # a majority sees it down
        ("DDD", None, (), D, 3),
        ("DKU", None, (), K, 3),  # no majority either way
        ("DU", None, (), K, 2),  # two disagree: nothing is certain
        ("Ddd", None, (), D, 1),  # the others are stale: the one fresh decides
        ("Duu", None, (), D, 1),  # stale "up"s do not outvote a fresh "down"
        ("DDu", None, (), D, 2),
        ("DUU", 1, (), D, 3),  # a quorum of one: any single "down"
        ("DDU", 3, (), K, 3),  # three needed, two seen
        ("Ddd", 2, (), K, 1),  # a fixed quorum of two with one fresh vantage
        ("DDU", None, ("v0",), K, 2),  # the isolated vantage's "down" is not counted
        ("DDUU", None, ("v0",), U, 3),
        ("ddd", None, (), K, 0),  # nobody fresh
    ],
)
def test_tally(
    spec: str, quorum: int | None, isolated: tuple[str, ...], health: Health, counted: int
) -> None:
    result = tally(votes(spec), NOW, FRESH, quorum=quorum, isolated=frozenset(isolated))
    assert result.health is health
    assert result.counted == counted
    assert len(result.isolated) == len(isolated)
    assert len(result.stale) == sum(1 for c in spec if c.islower())


def test_the_leaders_own_view_is_always_fresh() -> None:
    # The leader judges now; its stored last probe may be old (just restarted, or a
    # stored "down" remembered across a restart).
    old = [Vote("leader", D, NOW - 500, NOW - 400), Vote("other", D, NOW - 50, NOW - 400)]
    result = tally(old, NOW, FRESH, own="leader")
    assert result.health is D
    assert result.stale == ("other",)
    assert result.role("other") == "stale"
    assert result.role("leader") == "counted"


def test_isolated_wins_over_own() -> None:
    result = tally(votes("DUU"), NOW, FRESH, own="v0", isolated=frozenset({"v0"}))
    assert result.health is U
    assert result.role("v0") == "isolated"


@pytest.mark.parametrize(
    ("spec", "since"),
    [
        ("UUU", NOW - 100 + 1),  # the second vantage to see it up made the majority
        ("DDD", NOW - 100 + 1),
        ("UDU", NOW - 100 + 2),
        ("U", NOW - 100),
    ],
)
def test_the_verdict_dates_from_when_the_quorum_was_reached(spec: str, since: float) -> None:
    assert tally(votes(spec), NOW, FRESH).since == since


A_UP = EndpointView("a", U, up_since=NOW - 50, answering=False, clean=True)
A_DOWN = EndpointView("a", D, None, answering=True, clean=False)
A_UNKNOWN = EndpointView("a", K)
A_SLOW_UP = EndpointView("a", U, up_since=NOW - 50, fast_enough=False)
A_SLOW_DOWN = EndpointView("a", D, None, slow=True, fast_enough=False)


def t(health: Health, since: float | None = NOW - 80) -> Tally:
    return Tally(health, since if health is not K else None, 2)


@pytest.mark.parametrize(
    ("own", "result", "expected"),
    [
        # The quorum agrees with the leader: the leader's own view, untouched.
        (A_DOWN, t(D), A_DOWN),
        (A_UNKNOWN, t(K), A_UNKNOWN),
        # ...except that "up since" is as old as the quorum has seen it up.
        (A_UP, t(U), EndpointView("a", U, NOW - 80, False, True)),
        (A_UP, t(U, NOW - 10), A_UP),
        # The leader's path sees it up, a quorum does not: down, and not answering.
        (A_UP, t(D), EndpointView("a", D, None, answering=False, clean=False)),
        # The leader's path is broken, the quorum sees it up.
        (A_DOWN, t(U), EndpointView("a", U, NOW - 80, answering=False, clean=True)),
        (A_UNKNOWN, t(U), EndpointView("a", U, NOW - 80, answering=False, clean=True)),
        # No verdict: unknown, never a place to switch to.
        (A_DOWN, t(K), EndpointView("a", K, None, answering=False, clean=False)),
        (A_UP, t(K), EndpointView("a", K, None, answering=False, clean=False)),
        # Latency is the leader's own knowledge: its p95 verdict on a fallback is kept;
        # "down for latency" is its own cause, not the quorum's.
        (A_SLOW_UP, t(U, NOW - 10), A_SLOW_UP),
        (A_SLOW_UP, t(D), EndpointView("a", D, None, False, False, fast_enough=False)),
        (A_SLOW_DOWN, t(U), EndpointView("a", U, NOW - 80, False, True, fast_enough=False)),
    ],
)
def test_endpoint_view(own: EndpointView, result: Tally, expected: EndpointView) -> None:
    assert endpoint_view(own, result) == expected
