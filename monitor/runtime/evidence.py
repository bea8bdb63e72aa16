"""What the engine remembers of recent probes: the failures that explain a switch, and
whether the daemon itself looks cut off from the network."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import structlog

from monitor.convai import ConvaiError, ConvaiUnreachable
from monitor.domain.failover import Action, Decision
from monitor.domain.health import HealthState
from monitor.domain.outcome import Outcome, ProbeResult, Verdict
from monitor.runtime.context import Context
from monitor.store import EndpointKey

log = structlog.get_logger()

# Failed probes kept per endpoint to explain a switch.
_EVIDENCE = 5
# Outcomes that say "could not reach it", as opposed to "it answered badly".
_UNREACHABLE = frozenset({Outcome.CONNECT_ERROR, Outcome.TIMEOUT})
# While every endpoint looks unreachable, Convai is asked this often whether we are cut off.
RECHECK = 5.0


@dataclass
class Evidence:
    first_failure_at: float | None = None
    recent: deque[ProbeResult] = field(default_factory=lambda: deque(maxlen=_EVIDENCE))

    def add(self, result: ProbeResult) -> None:
        verdict = result.outcome.verdict
        if verdict is Verdict.FAIL:
            if self.first_failure_at is None:
                self.first_failure_at = result.at
            self.recent.append(result)
        elif verdict is Verdict.PASS:
            self.first_failure_at = None
            self.recent.clear()

    def reason(self, decision: Decision) -> str:
        """The decision's reason, with the failed probes behind a failover."""
        if decision.action is not Action.FAILOVER or not self.recent:
            return decision.reason
        kinds = ", ".join(r.outcome.value for r in self.recent)
        return f"{decision.reason} (last failed probes: {kinds})"


class Isolation:
    """Every endpoint of every group unreachable, and Convai too: our own network is down,
    so nothing is switched (see domain.failover's `isolated`). Every instance watches for
    it: an isolated vantage's votes do not count (domain.quorum), it says so in its log
    and on /readyz, and it steps aside as leader (store.lease)."""

    def __init__(self, ctx: Context, evidence: dict[EndpointKey, Evidence]) -> None:
        self.ctx = ctx
        self.evidence = evidence
        self.isolated = False
        self._checked_at = -RECHECK
        self._checking = False

    def cut_off(self) -> bool:
        """Every endpoint's latest probe failed to reach it (nothing answered at all)."""
        targets = self.ctx.monitor.targets
        if not targets:
            return False
        for key in targets:
            evidence = self.evidence.get(key)
            if evidence is None or not evidence.recent:
                return False
            if evidence.recent[-1].outcome not in _UNREACHABLE:
                return False
        return True

    def watch(self, now: float) -> None:
        """Each tick, on every instance: ask Convai (in the background, at most every
        RECHECK seconds) once every endpoint looks unreachable."""
        if not self.cut_off():
            self.leave()
            return
        if self._checking or now - self._checked_at < RECHECK:
            return
        self._checked_at = now
        self._checking = True
        self.ctx.background(self._check(), "isolation")

    async def _check(self) -> None:
        try:
            await self.suspect()
        finally:
            self._checking = False

    async def suspect(self) -> bool:
        if not self.cut_off():
            return self.leave()
        try:
            await self.ctx.convai.list_models()
        except ConvaiUnreachable:
            if not self.cut_off():
                # Something answered while Convai was being asked (its retries take a
                # while): not cut off after all.
                return self.leave()
            if not self.isolated:
                log.error(
                    "vantage_isolated",
                    instance=self.ctx.config.instance.name,
                    reason="every endpoint and Convai are unreachable from here",
                    effect="this instance's view of the endpoints is not counted",
                )
            self.isolated = True
            return True
        except ConvaiError:
            pass
        return self.leave()

    def leave(self) -> bool:
        if self.isolated:
            # What we judged while cut off says nothing about the endpoints: judge afresh,
            # so the first endpoint to answer does not win a switch it did not earn.
            self.isolated = False
            states = self.ctx.monitor.states
            for key in list(states):
                states[key] = HealthState()
            log.warning("isolation_ended", instance=self.ctx.config.instance.name)
        return False
