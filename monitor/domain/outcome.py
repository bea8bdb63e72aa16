"""The closed set of things a probe can find, and what each means for health."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"
    AUTH_ERROR = "auth_error"
    MODEL_NOT_FOUND = "model_not_found"
    BAD_RESPONSE = "bad_response"
    TOO_SLOW = "too_slow"
    PROBE_REJECTED = "probe_rejected"
    # Not in the minimum set, but real: a 3xx (we never follow one silently,
    # because Convai would not follow it either) and a 4xx that fits none of the above.
    REDIRECT = "redirect"
    HTTP_4XX = "http_4xx"
    # A 429/402/403 about quota, billing or credits: waiting will not bring it back, so
    # it fails at once and pages as a key/billing problem rather than an outage.
    QUOTA_EXHAUSTED = "quota_exhausted"
    # 503/529 "overloaded" / "no capacity": the server is up but turning work away.
    OVERLOADED = "overloaded"

    @property
    def verdict(self) -> Verdict:
        if self is Outcome.OK:
            return Verdict.PASS
        # A 400 about the probe's own parameters says nothing about whether the endpoint
        # can serve Convai's traffic (LiteLLM's lesson: max_tokens=1 breaks reasoning
        # models). Counting it either way would lie, so it leaves the counters alone.
        if self is Outcome.PROBE_REJECTED:
            return Verdict.INCONCLUSIVE
        # Everything else means Convai's own calls would fail too: a revoked key or a
        # missing model silences the characters just as surely as a dead host.
        return Verdict.FAIL


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Raw facts gathered by one probe. Judging them is the health machine's job."""

    at: float  # epoch seconds when the request was sent
    group: str
    endpoint: str
    outcome: Outcome
    latency_ms: float | None  # around the request only; None when nothing came back
    http_status: int | None = None
    detail: str | None = None  # short, already redacted
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK
