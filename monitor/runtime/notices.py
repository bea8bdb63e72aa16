"""Notices about single endpoints that on-call should hear of, beyond a group's switches:
a fallback that broke (before it is needed), a fallback back again, a rejected key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor.config import Target
from monitor.domain.health import UNPROBED, Health, HealthState, Transition
from monitor.domain.outcome import Outcome, ProbeResult, Verdict
from monitor.store import EndpointKey

Notice = tuple[str, str, dict[str, Any]]  # (event kind, message, details)


class Notices:
    def __init__(
        self,
        targets: dict[EndpointKey, Target],
        states: dict[EndpointKey, HealthState],
        active: Callable[[str], str | None],
    ) -> None:
        self.targets = targets
        self.states = states
        self.active = active
        self._auth_flagged: set[EndpointKey] = set()
        self._down_noticed: set[EndpointKey] = set()

    def _impact(self, target: Target) -> str:
        # Convai calls the active endpoint with the same key: there, a key problem is an
        # outage for every character, and the failover that follows must not contradict
        # this notice. On a standby it only matters once the group needs that endpoint.
        if self.active(target.group) != target.endpoint:
            return "Not an outage: the group does not use this endpoint now."
        return (
            "The group's characters get the same error; the group fails over once the "
            "endpoint is judged down."
        )

    def notice(
        self, target: Target, result: ProbeResult, transition: Transition | None
    ) -> Notice | None:
        key = (target.group, target.endpoint)
        details: dict[str, Any] = {"endpoint": target.endpoint, "outcome": result.outcome.value}
        if result.outcome is Outcome.AUTH_ERROR:
            if key in self._auth_flagged:
                return None  # once per episode, not once per probe
            self._auth_flagged.add(key)
            return (
                "auth_error",
                f"{target.endpoint} of {target.group} rejects its API key "
                f"(HTTP {result.http_status}): a revoked or wrong key. {self._impact(target)} "
                "Fix the key in the config and reload: the daemon gives Convai the new key.",
                details,
            )
        if result.outcome is Outcome.QUOTA_EXHAUSTED:
            if key in self._auth_flagged:
                return None
            self._auth_flagged.add(key)
            # Told as a key/billing problem: waiting will not fix it.
            return (
                "auth_error",
                f"{target.endpoint} of {target.group} is out of quota, credits or budget "
                f"(HTTP {result.http_status}): a billing problem of its key. "
                f"{self._impact(target)} {result.detail or ''}".rstrip(),
                {**details, "problem": "quota"},
            )
        if result.outcome.verdict is Verdict.PASS:
            self._auth_flagged.discard(key)
        if transition is None or not self._standby(target):
            # The active endpoint's story, and that of better endpoints the group will
            # return to, is told by the failover, failback and recovery events.
            return None
        if transition.after is Health.DOWN:
            self._down_noticed.add(key)
            return ("endpoint_down", self._down_text(target, result), details)
        if transition.after is Health.UP and key in self._down_noticed:
            self._down_noticed.discard(key)
            text = f"fallback {target.endpoint} of {target.group} is up again"
            return ("endpoint_up", text, details)
        return None

    def forget_down(self, key: EndpointKey) -> None:
        """A down notice that was never sent: no "up again" notice follows it."""
        self._down_noticed.discard(key)

    def _down_text(self, target: Target, result: ProbeResult) -> str:
        if result.outcome is Outcome.MODEL_NOT_FOUND:
            return (
                f"fallback {target.endpoint} of {target.group} does not serve the group's "
                f"model {target.model}: a failover to it would break every character"
            )
        active = self.active(target.group)
        others = [
            t.endpoint
            for k, t in self.targets.items()
            if t.group == target.group
            and t.endpoint not in (target.endpoint, active)
            and self.states.get(k, UNPROBED).health is Health.UP
        ]
        tail = (
            f"failover would still have {', '.join(others)}"
            if others
            else "a failover would have nowhere to go"
        )
        return (
            f"fallback {target.endpoint} of {target.group} is down ({result.outcome.value}): {tail}"
        )

    def _standby(self, target: Target) -> bool:
        """A fallback below the active endpoint: what a failover would go to."""
        active = self.active(target.group)
        rank = next(
            (
                t.priority
                for t in self.targets.values()
                if t.group == target.group and t.endpoint == active
            ),
            None,
        )
        return rank is not None and target.priority > rank
