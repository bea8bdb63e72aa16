"""The failover decision: which endpoint a group should be on, and why. Pure.

`decide` looks at one group (the health of its endpoints, where Convai points, recent
switches, pins) at a time `now`, and says what to do. The engine (runtime.failover) does
the I/O: pre-flight, compare-and-set, intent, update, read-back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from monitor.domain.health import Health

HOUR = 3600.0


class Action(StrEnum):
    STAY = "stay"
    FAILOVER = "failover"
    FAILBACK = "failback"
    ALL_DOWN = "all_down"
    FLAPPING = "flapping"
    ISOLATED = "isolated"
    PRIMARY_RECOVERED = "primary_recovered"  # failback: manual, and a better endpoint is back
    PINNED = "pinned"  # a failback is due but an operator pinned the group
    PINNED_DOWN = "pinned_down"  # the active endpoint is down and the group is pinned
    REHOME = "rehome"  # the active endpoint's base_url changed in the config: follow it
    KEY_ROTATION = "key_rotation"  # the active endpoint's api_key changed: give Convai it


class GroupState(StrEnum):
    """What `status` shows for a group."""

    HEALTHY = "healthy"  # on the primary, and it is not down
    DEGRADED = "degraded"  # on a down endpoint with a switch pending or failing, or lost
    FAILED_OVER = "failed_over"  # on a fallback that is not down
    ALL_DOWN = "all_down"
    PINNED = "pinned"
    FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class EndpointView:
    name: str
    health: Health
    up_since: float | None = None  # when it last became up (None unless up)
    # Down, but its latest probes undo the reason it went down (health.recovering): a
    # streak broken by a success, or a failure rate back under the threshold.
    answering: bool = False
    # Its recent past is clean enough to return to (health.clean): a brownout that lets
    # a few probes through is not a place to fail back to.
    clean: bool = True
    # Down because its window's p95 latency is over the group's latency_threshold.
    slow: bool = False
    # Its own p95 is known and under the latency threshold (health.fast_enough): only such
    # an endpoint takes a group switched away for latency. True when latency does not count.
    fast_enough: bool = True


@dataclass(frozen=True, slots=True)
class Rules:
    failback: str = "auto"  # "auto" | "manual"
    failback_after: float = 300.0
    min_dwell: float = 120.0
    max_switches_per_hour: int = 4


@dataclass(frozen=True, slots=True)
class GroupView:
    name: str
    endpoints: tuple[EndpointView, ...]  # priority order: the first is the primary
    active: str | None  # where Convai points, as far as we know; None: matches nothing
    rules: Rules = Rules()
    switch_times: tuple[float, ...] = ()  # automatic switches, any age (old ones are ignored)
    last_switch_at: float | None = None
    operator_at: float | None = None  # last operator action: clears a flapping freeze
    pinned_to: str | None = None
    pinned_until: float | None = None
    isolated: bool = False  # the monitor itself looks cut off (see runtime.evidence)
    # Convai calls the active endpoint at a base_url (or with a key) the config no longer
    # gives it: the operator changed the endpoint and Convai must follow.
    stale_url: bool = False
    stale_key: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    candidates: tuple[str, ...] = ()  # in the order to try them (pre-flight may skip some)

    @property
    def switches(self) -> bool:
        """An update of Convai is due (to another endpoint, or to the same one anew)."""
        return self.action in _SWITCHES


_SWITCHES = frozenset({Action.FAILOVER, Action.FAILBACK, Action.REHOME, Action.KEY_ROTATION})


def recent_switches(view: GroupView, now: float) -> int:
    """Automatic switches in the last hour, not counting any before an operator acted."""
    since = now - HOUR
    if view.operator_at is not None:
        since = max(since, view.operator_at)
    return sum(1 for t in view.switch_times if t > since)


def frozen(view: GroupView, now: float) -> bool:
    """Flap damping: past max_switches_per_hour the group stays where it is."""
    return recent_switches(view, now) >= view.rules.max_switches_per_hour


def failback_hold(view: GroupView, now: float) -> float:
    """How long a better endpoint must stay up before failback.

    Each repeat switch within the hour doubles it (Envoy's ejection back-off), so an
    endpoint that keeps dying is given longer to prove itself each time.
    """
    return failback_wait(view.rules.failback_after, recent_switches(view, now))


def failback_wait(failback_after: float, switches_in_hour: int) -> float:
    """failback_after, doubled for each switch within the hour after the first."""
    repeats = max(0, switches_in_hour - 1)
    return failback_after * float(1 << repeats)


def pinned(view: GroupView, now: float) -> bool:
    return view.pinned_to is not None and (view.pinned_until is None or now < view.pinned_until)


def decide(view: GroupView, now: float) -> Decision:
    if view.active is None:
        # Convai points somewhere we do not know: a human's change, never overwritten.
        return Decision(Action.STAY, "Convai's base_url matches no configured endpoint")
    names = [e.name for e in view.endpoints]
    by_name = {e.name: e for e in view.endpoints}
    # An active endpoint removed from the config is as good as down: Convai still calls
    # it, and nobody watches it any more. The usual rules pick where the group goes.
    active = by_name.get(view.active, EndpointView(view.active, Health.DOWN))
    removed = view.active not in by_name

    if active.health is Health.DOWN:
        if active.answering:
            # It answered since it was judged down (the engine re-probes the active endpoint
            # right before a failover): a blip, or a recovery under way. Moving the group
            # now would be a switch the next probes are likely to undo.
            return Decision(Action.STAY, f"{active.name} is down but answering again")
        if view.isolated:
            # Everything failing at once and Convai unreachable too: most likely our own
            # network. Switching would only move the group to an equally unreachable place.
            return Decision(Action.ISOLATED, "every endpoint and Convai are unreachable")
        candidates = tuple(
            e.name for e in view.endpoints if e.name != active.name and e.health is Health.UP
        )
        down = f"{active.name} was removed from the config" if removed else f"{active.name} is down"
        if not candidates:
            return Decision(Action.ALL_DOWN, f"{down} and no other endpoint is up")
        if active.slow and not removed:
            # Slow, not failing: a switch for latency helps characters only if it lands
            # somewhere faster. An up fallback with a p95 as bad (or not yet known) is no
            # target; the group stays on an endpoint that still answers.
            candidates = tuple(n for n in candidates if by_name[n].fast_enough)
            if not candidates:
                return Decision(
                    Action.STAY,
                    f"{active.name} is down for latency (p95 over latency_threshold) and no "
                    "up fallback has its own p95 under it",
                )
            down = f"{active.name} is down for latency (p95 over latency_threshold)"
        if pinned(view, now) and view.pinned_to in candidates:
            # Pinned elsewhere (the pin was set without a switch): the pin says where to go.
            return Decision(
                Action.FAILOVER, f"{down}; pinned to {view.pinned_to}", (view.pinned_to,)
            )
        if pinned(view, now) and not removed:
            return Decision(
                Action.PINNED_DOWN,
                f"{active.name} is down but the group is pinned to {view.pinned_to}",
                candidates,
            )
        if frozen(view, now):
            # The budget stops oscillation; it must not keep characters on a dead endpoint
            # while another has been steadily up. A fallback up for failback_after (the
            # wait a failback would demand, not doubled) is no flap: move there. Moves to
            # endpoints that are themselves coming and going still spend the budget.
            steady = tuple(
                n for n in candidates if _up_for(by_name[n], now) >= view.rules.failback_after
            )
            count = recent_switches(view, now)
            if steady:
                return Decision(
                    Action.FAILOVER,
                    f"{active.name} is down; {count} switches within the hour, but "
                    f"{steady[0]} has been up for {_up_for(by_name[steady[0]], now):.0f}s, so "
                    "the group is not held on a down endpoint",
                    steady,
                )
            return Decision(
                Action.FLAPPING,
                f"{active.name} is down and {count} switches within the hour reached "
                f"max_switches_per_hour; no fallback has been up for "
                f"{view.rules.failback_after:g}s, so holding on {active.name}",
                candidates,
            )
        return Decision(Action.FAILOVER, down, candidates)

    # The endpoint is the same, its address or key is not: whatever else is due, Convai
    # must stop calling what the operator replaced. Allowed under a pin (same endpoint).
    if view.stale_url:
        return Decision(
            Action.REHOME, f"{active.name}'s base_url changed in the config", (active.name,)
        )
    if view.stale_key:
        return Decision(
            Action.KEY_ROTATION, f"{active.name}'s api_key changed in the config", (active.name,)
        )

    # The active endpoint is up (or not yet judged): is a better one ready to return to?
    better = names[: names.index(active.name)]
    if not better:
        return Decision(Action.STAY, f"on the primary {active.name}")
    hold = failback_hold(view, now)
    ready = [by_name[n] for n in better if _up_for(by_name[n], now) >= hold and by_name[n].clean]
    if not ready:
        return Decision(Action.STAY, f"on {active.name}; no better endpoint up for {hold:g}s")
    best = ready[0]
    if pinned(view, now):
        return Decision(Action.PINNED, f"{best.name} is back but the group is pinned", (best.name,))
    if view.rules.failback == "manual":
        return Decision(
            Action.PRIMARY_RECOVERED,
            f"{best.name} has been up for {hold:g}s; failback is manual",
            (best.name,),
        )
    if view.last_switch_at is not None and now - view.last_switch_at < view.rules.min_dwell:
        return Decision(Action.STAY, f"{best.name} is back; waiting out min_dwell on {active.name}")
    if frozen(view, now):
        return Decision(Action.FLAPPING, "switch limit reached; not failing back", (best.name,))
    # The reason says how long the endpoint has really been up (what `explain` shows), and
    # the wait it had to pass, which grows with repeat switches.
    return Decision(
        Action.FAILBACK,
        f"{best.name} has been up for {_up_for(best, now):.0f}s (failback waits {hold:g}s)",
        (best.name,),
    )


def _up_for(endpoint: EndpointView, now: float) -> float:
    if endpoint.health is not Health.UP or endpoint.up_since is None:
        return -1.0
    return now - endpoint.up_since


def group_state(view: GroupView, decision: Decision, now: float) -> GroupState:
    if pinned(view, now):
        return GroupState.PINNED
    if decision.action is Action.FLAPPING:
        return GroupState.FLAPPING
    if decision.action in (Action.ALL_DOWN, Action.ISOLATED):
        return GroupState.ALL_DOWN
    if view.active is None or decision.action is Action.FAILOVER:
        return GroupState.DEGRADED
    primary = view.endpoints[0].name if view.endpoints else None
    return GroupState.HEALTHY if view.active == primary else GroupState.FAILED_OVER
