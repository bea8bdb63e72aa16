"""Table-driven tests of the pure failover decision."""

from __future__ import annotations

import pytest

from monitor.domain.failover import (
    Action,
    EndpointView,
    GroupState,
    GroupView,
    Rules,
    decide,
    failback_hold,
    failback_wait,
    group_state,
)
from monitor.domain.health import Health

U, D, K = Health.UP, Health.DOWN, Health.UNKNOWN
NOW = 10_000.0
LONG_AGO = NOW - 3 * 3600


def view(
    healths: str,
    active: str | None = "a",
    *,
    up_since: float = LONG_AGO,
    **kwargs: object,
) -> GroupView:
    """`healths` is one letter per endpoint a, b, c...: U up, D down, K unknown."""
    letters = {"U": U, "D": D, "K": K}
    endpoints = tuple(
        EndpointView(
            name=chr(ord("a") + i),
            health=letters[h],
            up_since=up_since if letters[h] is U else None,
        )
        for i, h in enumerate(healths)
    )
    return GroupView(name="g", endpoints=endpoints, active=active, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("group", "action", "candidates"),
    [
        # primary healthy, nothing to do
        (view("UUU"), Action.STAY, ()),
        (view("UDD"), Action.STAY, ()),
        (view("KUU"), Action.STAY, ()),  # not judged yet: never act on unknown
        # primary down -> first healthy fallback, in priority order
        (view("DUU"), Action.FAILOVER, ("b", "c")),
        (view("DDU"), Action.FAILOVER, ("c",)),  # broken first fallback skipped
        (view("DKU"), Action.FAILOVER, ("c",)),  # unknown is not healthy
        (view("DDD"), Action.ALL_DOWN, ()),
        (view("DKK"), Action.ALL_DOWN, ()),
        # the active fallback dies: go anywhere healthy, the primary included
        (view("UDU", active="b"), Action.FAILOVER, ("a", "c")),
        # isolation guard beats everything when the active is down
        (view("DUU", isolated=True), Action.ISOLATED, ()),
        # Convai points at something we do not know: hands off
        (view("DUU", active=None), Action.STAY, ()),
        # the active endpoint was removed from the config: fail over by the usual rules
        (view("DUU", active="zz"), Action.FAILOVER, ("b", "c")),
        (view("DDU", active="zz"), Action.FAILOVER, ("c",)),
        (view("DDD", active="zz"), Action.ALL_DOWN, ()),
        (
            view(
                "UUU",
                active="zz",
                up_since=NOW - 100,  # no steady refuge: the budget holds (see below)
                switch_times=(NOW - 300, NOW - 200, NOW - 100, NOW - 50),
            ),
            Action.FLAPPING,
            ("a", "b", "c"),
        ),
        # the active endpoint's base_url or key changed in the config: follow it
        (view("UUU", stale_url=True), Action.REHOME, ("a",)),
        (view("KUU", stale_url=True), Action.REHOME, ("a",)),
        (view("UUU", stale_key=True), Action.KEY_ROTATION, ("a",)),
        (view("UUU", stale_url=True, stale_key=True), Action.REHOME, ("a",)),
        (view("UUU", active="b", stale_key=True), Action.KEY_ROTATION, ("b",)),
        # ... under a pin too: the pin names the endpoint, not its address
        (view("UUU", stale_url=True, pinned_to="a", pinned_until=NOW + 60), Action.REHOME, ("a",)),
        # ... but a new URL that is down is a down endpoint: fail over instead
        (view("DUU", stale_url=True), Action.FAILOVER, ("b", "c")),
        # pinned: no automatic switch, and on-call hears the pin holds a down endpoint
        (view("DUU", pinned_to="a", pinned_until=NOW + 60), Action.PINNED_DOWN, ("b", "c")),
        # ... pinned to a healthy fallback: that is where the pin says to go
        (view("DUU", pinned_to="c", pinned_until=NOW + 60), Action.FAILOVER, ("c",)),
        (view("DUD", pinned_to="c", pinned_until=NOW + 60), Action.PINNED_DOWN, ("b",)),
        (view("DUU", pinned_to="a", pinned_until=NOW - 1), Action.FAILOVER, ("b", "c")),
        # flapping: four automatic switches within the hour freeze the group while the
        # fallbacks are themselves coming and going (none up for failback_after)...
        (
            view(
                "DUU",
                up_since=NOW - 100,
                switch_times=(NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500),
            ),
            Action.FLAPPING,
            ("b", "c"),
        ),
        # ... but never on a down endpoint while a fallback has been steadily up
        (
            view("DUU", switch_times=(NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500)),
            Action.FAILOVER,
            ("b", "c"),
        ),
        (
            view(
                "DUU",
                up_since=NOW - 300,  # exactly failback_after (the default 300 s)
                switch_times=(NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500),
            ),
            Action.FAILOVER,
            ("b", "c"),
        ),
        (
            view(
                "DUU",
                up_since=NOW - 299,
                switch_times=(NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500),
            ),
            Action.FLAPPING,
            ("b", "c"),
        ),
        # ... unless they are older than an hour
        (
            view("DUU", switch_times=(NOW - 5000, NOW - 4000, NOW - 1000, NOW - 500)),
            Action.FAILOVER,
            ("b", "c"),
        ),
        # ... or an operator acted since
        (
            view(
                "DUU",
                switch_times=(NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500),
                operator_at=NOW - 100,
            ),
            Action.FAILOVER,
            ("b", "c"),
        ),
    ],
)
def test_failover(group: GroupView, action: Action, candidates: tuple[str, ...]) -> None:
    decision = decide(group, NOW)
    assert decision.action is action, decision.reason
    assert decision.candidates == candidates


RULES = Rules(failback="auto", failback_after=300, min_dwell=120, max_switches_per_hour=4)


@pytest.mark.parametrize(
    ("group", "action"),
    [
        # primary up long enough, dwell passed -> failback
        (view("UU", active="b", rules=RULES, last_switch_at=NOW - 600), Action.FAILBACK),
        # primary up, but not for failback_after yet
        (view("UU", active="b", rules=RULES, up_since=NOW - 100), Action.STAY),
        # min_dwell since the last switch not yet passed
        (view("UU", active="b", rules=RULES, last_switch_at=NOW - 60), Action.STAY),
        # primary still down
        (view("DU", active="b", rules=RULES), Action.STAY),
        # manual failback: say the primary is back, never switch
        (
            view("UU", active="b", rules=Rules(failback="manual"), last_switch_at=NOW - 600),
            Action.PRIMARY_RECOVERED,
        ),
        # pinned to the fallback
        (
            view("UU", active="b", rules=RULES, pinned_to="b", pinned_until=NOW + 5),
            Action.PINNED,
        ),
        # repeat switches double the hold: 2 switches in the hour -> 600 s needed
        (
            view(
                "UU",
                active="b",
                rules=RULES,
                up_since=NOW - 400,
                switch_times=(NOW - 2000, NOW - 1000),
                last_switch_at=NOW - 1000,
            ),
            Action.STAY,
        ),
        (
            view(
                "UU",
                active="b",
                rules=RULES,
                up_since=NOW - 700,
                switch_times=(NOW - 2000, NOW - 1000),
                last_switch_at=NOW - 1000,
            ),
            Action.FAILBACK,
        ),
        # frozen by flapping: no failback either
        (
            view(
                "UU",
                active="b",
                rules=RULES,
                up_since=NOW - 50_000,
                switch_times=(NOW - 3000, NOW - 2000, NOW - 1500, NOW - 1000),
                last_switch_at=NOW - 1000,
            ),
            Action.FLAPPING,
        ),
    ],
)
def test_failback(group: GroupView, action: Action) -> None:
    decision = decide(group, NOW)
    assert decision.action is action, decision.reason
    if action is Action.FAILBACK:
        assert decision.candidates == ("a",)


def test_failback_goes_to_the_best_ready_endpoint() -> None:
    group = view("UUU", active="c", rules=RULES, last_switch_at=NOW - 1000)
    assert decide(group, NOW).candidates == ("a",)
    primary_young = GroupView(
        name="g",
        endpoints=(
            EndpointView("a", U, NOW - 10),
            EndpointView("b", U, LONG_AGO),
            EndpointView("c", U, LONG_AGO),
        ),
        active="c",
        rules=RULES,
        last_switch_at=NOW - 1000,
    )
    assert decide(primary_young, NOW).candidates == ("b",)


def test_hold_doubles_per_repeat() -> None:
    times: tuple[float, ...] = ()
    holds = []
    for n in range(4):
        holds.append(failback_hold(view("UU", rules=RULES, switch_times=times), NOW))
        times = (*times, NOW - 10 - n)
    assert holds == [300, 300, 600, 1200]


@pytest.mark.parametrize(
    ("group", "state"),
    [
        (view("UU"), GroupState.HEALTHY),
        (view("DU"), GroupState.DEGRADED),
        (view("DU", active="b"), GroupState.FAILED_OVER),
        (view("DD"), GroupState.ALL_DOWN),
        (view("UU", pinned_to="a", pinned_until=NOW + 1), GroupState.PINNED),
        (view("UU", active=None), GroupState.DEGRADED),
        (
            view("DU", up_since=NOW - 5, switch_times=(NOW - 1, NOW - 2, NOW - 3, NOW - 4)),
            GroupState.FLAPPING,
        ),
    ],
)
def test_group_state(group: GroupView, state: GroupState) -> None:
    assert group_state(group, decide(group, NOW), NOW) is state


def test_a_frozen_group_moves_only_to_the_steady_fallbacks() -> None:
    spent = (NOW - 3000, NOW - 2000, NOW - 1000, NOW - 500)
    group = GroupView(
        name="g",
        endpoints=(
            EndpointView("a", D),
            EndpointView("b", U, NOW - 20),  # just came back: a flap, not a refuge
            EndpointView("c", U, NOW - 400),  # up for longer than failback_after
        ),
        active="a",
        switch_times=spent,
    )
    decision = decide(group, NOW)
    assert decision.action is Action.FAILOVER
    assert decision.candidates == ("c",)
    assert "c has been up for 400s" in decision.reason


def test_a_down_active_that_answers_again_is_not_left() -> None:
    group = GroupView(
        name="g",
        endpoints=(EndpointView("a", D, None, answering=True), EndpointView("b", U, LONG_AGO)),
        active="a",
    )
    decision = decide(group, NOW)
    assert decision.action is Action.STAY
    assert "answering again" in decision.reason


def test_no_failback_to_an_endpoint_whose_recent_past_is_not_clean() -> None:
    # The primary is up (a brownout lets it through often enough), but its failures over
    # failback_after are above half the threshold: the group stays on the fallback.
    endpoints = (
        EndpointView("a", U, up_since=LONG_AGO, clean=False),
        EndpointView("b", U, up_since=LONG_AGO),
    )
    group = GroupView(name="g", endpoints=endpoints, active="b")
    assert decide(group, NOW).action is Action.STAY
    clean_again = GroupView(
        name="g", endpoints=(EndpointView("a", U, up_since=LONG_AGO), endpoints[1]), active="b"
    )
    assert decide(clean_again, NOW).action is Action.FAILBACK


def test_a_rate_verdict_is_not_vetoed_by_a_lucky_answer() -> None:
    # `answering` is health.recovering: for a rate verdict it stays False after one lucky
    # success, so the failover goes ahead; for a broken streak it is True and we stay.
    lucky = GroupView(
        name="g",
        endpoints=(EndpointView("a", D, answering=False), EndpointView("b", U)),
        active="a",
    )
    assert decide(lucky, NOW).action is Action.FAILOVER
    back = GroupView(
        name="g", endpoints=(EndpointView("a", D, answering=True), EndpointView("b", U)), active="a"
    )
    assert decide(back, NOW).action is Action.STAY


def _slow_primary(*fallbacks: EndpointView) -> GroupView:
    primary = EndpointView("a", D, slow=True)
    return GroupView(name="g", endpoints=(primary, *fallbacks), active="a")


def test_a_switch_for_latency_needs_a_fallback_whose_own_p95_is_under_the_threshold() -> None:
    slow_b = EndpointView("b", U, LONG_AGO, fast_enough=False)
    fast_c = EndpointView("c", U, LONG_AGO)
    # The slow first fallback is skipped for the fast second one.
    decision = decide(_slow_primary(slow_b, fast_c), NOW)
    assert (decision.action, decision.candidates) == (Action.FAILOVER, ("c",))
    assert "latency" in decision.reason
    # Only a fallback as slow (or not yet measured): stay on the primary, which answers.
    decision = decide(_slow_primary(slow_b), NOW)
    assert (decision.action, decision.candidates) == (Action.STAY, ())
    assert "no up fallback has its own p95 under it" in decision.reason
    # A primary down for errors takes any up fallback, a slow one included: slow beats failing.
    failing = GroupView(name="g", endpoints=(EndpointView("a", D), slow_b), active="a")
    assert decide(failing, NOW).candidates == ("b",)


@pytest.mark.parametrize(
    ("switches_in_hour", "wait"),
    # the first switch waits failback_after; each repeat within the hour doubles it
    [(0, 300.0), (1, 300.0), (2, 600.0), (3, 1200.0)],
)
def test_failback_wait_doubles_with_repeat_switches(switches_in_hour: int, wait: float) -> None:
    assert failback_wait(300.0, switches_in_hour) == wait


def test_failback_reason_says_how_long_the_endpoint_has_really_been_up() -> None:
    group = view("UU", active="b", rules=RULES, last_switch_at=NOW - 600)
    decision = decide(group, NOW)
    assert decision.action is Action.FAILBACK
    assert f"has been up for {NOW - LONG_AGO:.0f}s (failback waits" in decision.reason
