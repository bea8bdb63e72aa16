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
    so nothing is switched (see domain.failover's `isolated`)."""

    def __init__(self, ctx: Context, evidence: dict[EndpointKey, Evidence]) -> None:
        self.ctx = ctx
        self.evidence = evidence
        self.isolated = False

    async def suspect(self) -> bool:
        for key in self.ctx.monitor.targets:
            evidence = self.evidence.get(key)
            if evidence is None or not evidence.recent:
                return self.leave()
            if evidence.recent[-1].outcome not in _UNREACHABLE:
                return self.leave()
        try:
            await self.ctx.convai.list_models()
        except ConvaiUnreachable:
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
            log.warning("isolation_ended")
        return False
