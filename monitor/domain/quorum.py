"""A quorum of vantages: every instance probes every endpoint and judges it with its own
health machine; the leader counts their verdicts. Pure.

A vantage's verdict counts when it is fresh (its last probe newer than `fresh_for`,
two intervals) and the vantage is not isolated (it sees nothing at all, so its "down"
says nothing about the endpoint). The leader's own view is always fresh: it is judging
now. An endpoint is down when at least the quorum of counted vantages judge it down, up
when at least the quorum judge it up, and unknown otherwise. With one instance the
quorum is one and the verdict is that instance's own: today's behaviour exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from monitor.domain.failover import EndpointView
from monitor.domain.health import Health, HealthState


@dataclass(frozen=True, slots=True)
class Vote:
    """One vantage's view of one endpoint."""

    vantage: str
    health: Health
    since: float | None  # when this vantage's view last changed
    last_probe_at: float | None

    @classmethod
    def of(cls, vantage: str, state: HealthState) -> Vote:
        return cls(vantage, state.health, state.since, state.last_probe_at)


@dataclass(frozen=True, slots=True)
class Tally:
    health: Health
    since: float | None  # when the quorum behind `health` was reached (None: no verdict)
    needed: int  # votes that make a verdict
    down: tuple[str, ...] = ()
    up: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()  # no result newer than two intervals: not counted
    isolated: tuple[str, ...] = ()  # cut off from everything: not counted

    @property
    def counted(self) -> int:
        return len(self.down) + len(self.up) + len(self.unknown)

    def role(self, vantage: str) -> str:
        """Why this vantage's vote counts or does not ("counted", "stale", "isolated")."""
        if vantage in self.isolated:
            return "isolated"
        if vantage in self.stale:
            return "stale"
        return "counted"


def needed(quorum: int | None, counted: int) -> int:
    """Votes that make a verdict: the configured quorum, or by default a majority of the
    vantages counted (one of one, two of two or three, three of four or five)."""
    if quorum is not None:
        # A fixed quorum is a number of independent confirmations the operator asked for:
        # with fewer fresh vantages than that, nothing is ever judged down (nor up).
        return quorum
    return counted // 2 + 1


def tally(
    votes: Iterable[Vote],
    now: float,
    fresh_for: float,
    *,
    quorum: int | None = None,
    own: str | None = None,
    isolated: frozenset[str] = frozenset(),
) -> Tally:
    """Count the vantages' verdicts on one endpoint (see the module's docstring)."""
    down: list[Vote] = []
    up: list[Vote] = []
    unknown: list[Vote] = []
    stale: list[str] = []
    cut_off: list[str] = []
    for vote in sorted(votes, key=lambda v: v.vantage):
        if vote.vantage in isolated:
            cut_off.append(vote.vantage)
            continue
        fresh = vote.last_probe_at is not None and vote.last_probe_at > now - fresh_for
        if not fresh and vote.vantage != own:
            stale.append(vote.vantage)
            continue
        {Health.DOWN: down, Health.UP: up}.get(vote.health, unknown).append(vote)
    need = needed(quorum, len(down) + len(up) + len(unknown))
    health, since = Health.UNKNOWN, None
    # Down first: with a quorum of one among several vantages, one "down" is enough
    # (the operator asked for any single confirmation), whatever the others say.
    for verdict, voters in ((Health.DOWN, down), (Health.UP, up)):
        if voters and len(voters) >= need:
            # The quorum was reached when the need-th vantage came to this view.
            times = sorted(v.since if v.since is not None else 0.0 for v in voters)
            health, since = verdict, times[need - 1]
            break
    return Tally(
        health=health,
        since=since,
        needed=need,
        down=tuple(v.vantage for v in down),
        up=tuple(v.vantage for v in up),
        unknown=tuple(v.vantage for v in unknown),
        stale=tuple(stale),
        isolated=tuple(cut_off),
    )


def endpoint_view(own: EndpointView, result: Tally) -> EndpointView:
    """The view the failover decision acts on: the leader's own where the quorum agrees
    with it (so one instance decides exactly as before), the quorum's where it does not."""
    if result.health is own.health:
        if own.health is Health.UP and result.since is not None and own.up_since is not None:
            # Up for as long as the quorum has seen it up (the leader may have come later).
            return replace(own, up_since=min(own.up_since, result.since))
        return own
    # The quorum overrules the leader's health; the leader's own latency is the only
    # latency known, so `fast_enough` stays its own, and `slow` (its own cause) goes.
    if result.health is Health.DOWN:
        # The leader's own path sees it answer, but enough others do not: it is down, and
        # one answer on the leader's path says nothing about theirs.
        return replace(
            own, health=Health.DOWN, up_since=None, answering=False, clean=False, slow=False
        )
    if result.health is Health.UP:
        # The leader's own path is bad (or it has not judged yet); the quorum sees it up.
        # A vantage's "up" already means its own failure-rate window is clean enough.
        return replace(
            own, health=Health.UP, up_since=result.since, answering=False, clean=True, slow=False
        )
    return replace(
        own, health=Health.UNKNOWN, up_since=None, answering=False, clean=False, slow=False
    )
