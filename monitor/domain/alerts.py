"""Alert policy: which events page whom, how loudly, and what they do to the incident.

One incident per group: the first critical event opens it, later events of the group
attach to it, a resolution (failback, recovered, a manual return to the primary) closes
it. Pure: the outbox (store.outbox) applies these rules in the event's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @classmethod
    def parse(cls, name: str) -> Severity:
        return cls[name.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


class Effect(StrEnum):
    NONE = "none"  # a notice on its own; no incident
    OPEN = "open"  # opens the group's incident (or joins the open one)
    ATTACH = "attach"  # joins the open incident, if any
    CLOSE = "close"  # resolves the open incident


class NotifyKind(StrEnum):
    """Apprise's notify types."""

    FAILURE = "failure"
    WARNING = "warning"
    INFO = "info"
    SUCCESS = "success"


@dataclass(frozen=True, slots=True)
class Rule:
    severity: Severity
    effect: Effect


# Every event kind the daemon records, and what it means for on-call. Kinds not listed
# here (pin bookkeeping, registration) are recorded in the audit log but never paged.
RULES: dict[str, Rule] = {
    "failover": Rule(Severity.CRITICAL, Effect.OPEN),
    "failover_failed": Rule(Severity.CRITICAL, Effect.OPEN),
    "all_down": Rule(Severity.CRITICAL, Effect.OPEN),
    "isolated": Rule(Severity.CRITICAL, Effect.OPEN),
    "flapping": Rule(Severity.CRITICAL, Effect.OPEN),
    "preflight_failed": Rule(Severity.CRITICAL, Effect.OPEN),
    "endpoint_down": Rule(Severity.WARNING, Effect.ATTACH),
    "auth_error": Rule(Severity.WARNING, Effect.ATTACH),
    "drift": Rule(Severity.WARNING, Effect.ATTACH),
    "primary_recovered": Rule(Severity.WARNING, Effect.ATTACH),
    "switch_abandoned": Rule(Severity.WARNING, Effect.ATTACH),
    "model_mismatch": Rule(Severity.WARNING, Effect.NONE),
    "not_registered": Rule(Severity.CRITICAL, Effect.OPEN),
    "failback": Rule(Severity.INFO, Effect.CLOSE),
    "recovered": Rule(Severity.INFO, Effect.CLOSE),
    "manual": Rule(Severity.INFO, Effect.ATTACH),
    "endpoint_up": Rule(Severity.INFO, Effect.ATTACH),
    "dry_run": Rule(Severity.INFO, Effect.NONE),
    "unmonitored": Rule(Severity.INFO, Effect.CLOSE),
    # Operators and config changes (issue 10): a pin holding a down endpoint is an outage
    # nobody will fix by waiting; a group pointing at no configured endpoint is unwatched.
    "pinned_down": Rule(Severity.CRITICAL, Effect.OPEN),
    "unmanaged": Rule(Severity.WARNING, Effect.ATTACH),
    "managed": Rule(Severity.INFO, Effect.ATTACH),
    "rehome": Rule(Severity.INFO, Effect.ATTACH),
    "key_rotation": Rule(Severity.INFO, Effect.ATTACH),
    "convai_auth_failed": Rule(Severity.CRITICAL, Effect.OPEN),
    "convai_auth_ok": Rule(Severity.INFO, Effect.CLOSE),
    "convai_unreachable": Rule(Severity.CRITICAL, Effect.OPEN),
    "convai_reachable": Rule(Severity.INFO, Effect.CLOSE),
}


def rule_for(kind: str, details: dict[str, object] | None = None) -> Rule | None:
    rule = RULES.get(kind)
    if rule is None:
        return None
    if kind == "manual" and (details or {}).get("to_primary"):
        # An operator returning the group to its primary ends the story.
        return Rule(Severity.INFO, Effect.CLOSE)
    return rule


def notify_kind(rule: Rule) -> NotifyKind:
    if rule.effect is Effect.CLOSE:
        return NotifyKind.SUCCESS
    return {
        Severity.CRITICAL: NotifyKind.FAILURE,
        Severity.WARNING: NotifyKind.WARNING,
        Severity.INFO: NotifyKind.INFO,
    }[rule.severity]


def routed(severity: Severity, min_severity: Severity) -> bool:
    return severity >= min_severity


def reminder_due(
    opened: bool,
    severity: Severity,
    last_sent: float,
    now: float,
    interval: float,
    serving: bool = False,
) -> bool:
    """An open critical incident is repeated every `interval` until it is resolved, while
    characters feel it. A group served by a healthy fallback (its failback pending, or
    waiting for an operator) keeps its incident open but is not reminded: a pager that
    repeats an outage nobody feels any more gets muted."""
    return opened and severity is Severity.CRITICAL and now - last_sent >= interval and not serving


def backoff(attempt: int, base: float = 2.0, cap: float = 120.0) -> float:
    """Seconds before delivery attempt `attempt + 1` (attempt counts from 1)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
