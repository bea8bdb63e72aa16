"""One switch, end to end: pre-flight, compare-and-set, intent, update, read-back, record.

Shared by the daemon's automatic failover/failback and the operator's `failover` command,
so both leave the same records and take the same care.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from monitor.config import Target, display_url, normalize_url
from monitor.convai import ConvaiClient, ConvaiError
from monitor.domain.outcome import ProbeResult
from monitor.store.switching import SwitchLog, SwitchRecord, key_digest

T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]  # runs a store function where the store is written
Probe = Callable[[Target], Awaitable[ProbeResult]]

log = structlog.get_logger()

# After a successful update whose read-back disagrees, read again this many times, this far
# apart, before believing it: the update was accepted, and sending it again would only
# repeat it (a list that lags, or someone else's change, is not cured by a second update).
READBACK_RETRIES = 2
READBACK_PAUSE = 0.5


@dataclass(frozen=True, slots=True)
class SwitchRequest:
    group: str
    kind: str  # failover | failback | manual
    automatic: bool
    expected_active: str | None
    candidates: tuple[Target, ...]
    reason: str
    detected_at: float | None = None
    details: dict[str, Any] | None = None
    preflight: bool = True
    # False while the group already carries a failover_failed condition: each attempt
    # is recorded as a switch row, but on-call hears of the failure once.
    announce_failure: bool = True
    # A key rotation sends only the key: the base_url stays what it is.
    key_only: bool = False
    # A manual switch holds the group on its endpoint this many seconds (like a pin).
    hold: float | None = None


@dataclass(frozen=True, slots=True)
class SwitchOutcome:
    # confirmed | failed | skipped | preflight_failed | dry_run | drift, or unrecorded: the
    # update landed but the record of it could not be written (the intent stays open for
    # the next sync to confirm from Convai's list).
    status: str
    switch: SwitchRecord | None = None
    target: Target | None = None
    message: str = ""
    # Convai's list disagreed with an update it had accepted: a sync should look again.
    unsettled: bool = False


class Switcher:
    def __init__(
        self,
        convai: ConvaiClient,
        switches: SwitchLog,
        call: Call,
        probe: Probe,
        *,
        dry_run: bool = False,
        fence: Callable[[], int | None] | None = None,
    ) -> None:
        self.convai = convai
        self.switches = switches
        self.call = call
        self.probe = probe
        self.dry_run = dry_run
        # The daemon's leader lease: every intent carries its token, and no update is sent
        # once the lease is lost. None (the CLI, an operator): no lease involved.
        self.fence = fence

    async def registered_url(self, group: str) -> str | None:
        listing = await self.convai.list_models()
        model = listing.get(group)
        return model.base_url if model else None

    async def switch(self, request: SwitchRequest, current_url: str | None) -> SwitchOutcome:
        """Move the group to the first candidate that passes pre-flight.

        `current_url` is the base_url the group is believed to be on (for the check
        against Convai right before the update); None skips that check.
        """
        bound = log.bind(group=request.group)
        chosen: Target | None = None
        refused: list[str] = []  # why each candidate failed pre-flight
        for target in request.candidates:
            if not request.preflight:
                chosen = target
                break
            result = await self.probe(target)
            if result.ok:
                chosen = target
                break
            bound.warning(
                "preflight_failed",
                endpoint=target.endpoint,
                outcome=result.outcome.value,
                detail=result.detail,
            )
            status = f" HTTP {result.http_status}" if result.http_status else ""
            refused.append(f"{target.endpoint}: {result.outcome.value}{status}")
        if chosen is None:
            return SwitchOutcome(
                "preflight_failed",
                message=f"no candidate passed pre-flight ({'; '.join(refused)})",
            )

        if self.dry_run:
            await self.call(
                self.switches.record_dry_run,
                group=request.group,
                kind=request.kind,
                from_endpoint=request.expected_active,
                to_endpoint=chosen.endpoint,
                reason=request.reason,
                at=time.time(),
            )
            bound.info(
                "switch_dry_run",
                kind=request.kind,
                from_endpoint=request.expected_active,
                to_endpoint=chosen.endpoint,
                reason=request.reason,
            )
            return SwitchOutcome("dry_run", target=chosen)

        if current_url is not None:
            # Compare-and-set against Convai itself: a human may have moved the group
            # since the last sync. Best effort: if Convai cannot be read, the update will
            # most likely fail too, and the belief in the database still guards.
            try:
                registered = await self.registered_url(request.group)
            except ConvaiError as exc:
                bound.warning("precheck_list_failed", error=str(exc))
            else:
                if registered is None or normalize_url(registered) != normalize_url(current_url):
                    return SwitchOutcome(
                        "drift",
                        target=chosen,
                        message=(
                            f"Convai's base_url changed to {display_url(registered)} "
                            "since the last sync"
                        ),
                    )

        token = self.fence() if self.fence is not None else None
        if self.fence is not None and token is None:
            bound.warning("switch_skipped", reason="this instance no longer holds the lease")
            return SwitchOutcome("skipped", message="this instance no longer leads")
        now = time.time()
        intent: SwitchRecord | None = await self.call(
            self.switches.begin_switch,
            fencing_token=token,
            group=request.group,
            kind=request.kind,
            automatic=request.automatic,
            expected_active=request.expected_active,
            to_endpoint=chosen.endpoint,
            to_base_url=chosen.base_url,
            reason=request.reason,
            detected_at=request.detected_at,
            at=now,
        )
        if intent is None:
            bound.warning("switch_skipped", reason="the group's endpoint changed meanwhile")
            return SwitchOutcome("skipped", message="the group's endpoint changed meanwhile")
        bound.info(
            "switch_started",
            kind=request.kind,
            from_endpoint=request.expected_active,
            to_endpoint=chosen.endpoint,
            switch_id=intent.id,
        )
        return await self._update(request, chosen, intent)

    async def _update(
        self, request: SwitchRequest, chosen: Target, intent: SwitchRecord
    ) -> SwitchOutcome:
        """Call update and read back; whatever happens, the intent is closed here."""
        try:
            return await self._apply(request, chosen, intent)
        except asyncio.CancelledError:
            # Shutdown while waiting on Convai: the intent stays open on purpose and the
            # next start reconciles it from Convai's list (never guessed here).
            raise
        except Exception as exc:  # anything unforeseen must not leave the group blocked
            log.exception("switch_crashed", group=request.group, switch_id=intent.id)
            return await self._fail(request, chosen, intent, f"unexpected error: {exc!r}")

    async def _apply(
        self, request: SwitchRequest, chosen: Target, intent: SwitchRecord
    ) -> SwitchOutcome:
        bound = log.bind(group=request.group, switch_id=intent.id)
        base_url = None if request.key_only else chosen.base_url
        if self.fence is not None and self.fence() is None:
            # The lease lapsed since the intent was written (a pause, a slow database):
            # send nothing. The intent stays open; whoever leads now closes it from
            # Convai's list, as after a crash.
            bound.warning("switch_fenced", reason="the lease was lost before the update")
            return SwitchOutcome("skipped", switch=intent, message="the lease was lost")
        try:
            reply = await self.convai.update(
                request.group, base_url=base_url, api_key=chosen.api_key
            )
        except ConvaiError as exc:
            # A timeout or 5xx after retries says nothing about whether the update
            # landed: read back before calling it failed (a key change cannot be read back).
            uncertain = exc.retryable or exc.http_status is None
            if not request.key_only and uncertain and await self._landed(request.group, chosen):
                return await self._confirm(request, chosen, intent, None, "answer lost")
            return await self._fail(request, chosen, intent, str(exc))
        transaction_id = reply.transaction_id
        # `list` never shows the key: `updated_fields` is the only proof it was taken.
        key_taken = "api_key" in reply.updated_fields
        if request.key_only:
            if not key_taken:
                fields = ", ".join(reply.updated_fields) or "none"
                error = f"Convai did not confirm the new api_key (updated_fields: {fields})"
                return await self._fail(request, chosen, intent, error)
            return await self._confirm(request, chosen, intent, transaction_id, "confirmed")
        if not key_taken:
            # The group moved but may still carry the old key: the digest is not updated,
            # so the next evaluation sees a stale key and rotates it.
            bound.warning("update_key_unconfirmed", updated_fields=list(reply.updated_fields))
        registered: str | None = None
        for attempt in range(1 + READBACK_RETRIES):
            if attempt:
                await asyncio.sleep(READBACK_PAUSE)
            try:
                registered = await self.registered_url(request.group)
            except ConvaiError as exc:
                # Convai accepted the update; only the confirmation is missing. Record the
                # switch (a lost record is worse) and let the next sync catch any drift.
                bound.warning("readback_failed", error=str(exc))
                return await self._confirm(
                    request, chosen, intent, transaction_id, "unconfirmed", key_taken
                )
            if registered is not None and normalize_url(registered) == normalize_url(
                chosen.base_url
            ):
                return await self._confirm(
                    request, chosen, intent, transaction_id, "confirmed", key_taken
                )
            bound.warning("readback_mismatch", attempt=attempt + 1)
        # Accepted, yet the list says otherwise: record what was done, never send it again,
        # and let a sync adopt what Convai says now (drift, if someone else moved it).
        outcome = await self._confirm(
            request,
            chosen,
            intent,
            transaction_id,
            f"read-back shows {display_url(registered)}",
            key_taken,
        )
        return replace(outcome, unsettled=True)

    async def _landed(self, group: str, chosen: Target) -> bool:
        try:
            registered = await self.registered_url(group)
        except ConvaiError:
            return False
        return registered is not None and normalize_url(registered) == normalize_url(
            chosen.base_url
        )

    async def _fail(
        self, request: SwitchRequest, chosen: Target, intent: SwitchRecord, error: str
    ) -> SwitchOutcome:
        details = dict(request.details or {})
        if "where" in details:
            details["where"] = f"still on {request.expected_active} (the switch failed)"
        if "retry_command" in details:
            details["command"] = details.pop("retry_command")
        failed: SwitchRecord = await self.call(
            self.switches.fail_switch,
            intent.id,
            error=error,
            at=time.time(),
            details=details,
            announce=request.announce_failure,
        )
        log.error("switch_failed", group=request.group, kind=request.kind, error=error)
        return SwitchOutcome("failed", switch=failed, target=chosen, message=error)

    async def _confirm(
        self,
        request: SwitchRequest,
        chosen: Target,
        intent: SwitchRecord,
        transaction_id: str | None,
        how: str,
        key_taken: bool = True,
    ) -> SwitchOutcome:
        now = time.time()
        took = (
            f" {now - request.detected_at:.1f}s after the first failed probe"
            if request.detected_at
            else ""
        )
        message = (
            f"{request.kind} {request.expected_active} -> {chosen.endpoint}{took}: {request.reason}"
            + {
                "confirmed": "",
                "unconfirmed": " (Convai read-back unavailable)",
                "answer lost": " (Convai's answer was lost; the read-back shows it landed)",
            }.get(how, f" (Convai accepted the update, but its {how})")
        )
        details = dict(request.details or {})
        details.pop("retry_command", None)
        if "where" in details:
            details["where"] = f"now on {chosen.endpoint}, which passed pre-flight"
        details["transaction_id"] = transaction_id
        if request.detected_at is not None:
            details["detection_to_switch_s"] = round(now - request.detected_at, 3)
        try:
            record: SwitchRecord = await self.call(
                self.switches.confirm_switch,
                intent.id,
                transaction_id=transaction_id,
                at=now,
                message=message,
                details=details,
                key_digest=key_digest(chosen.api_key) if key_taken else None,
                hold_until=now + request.hold if request.hold else None,
            )
        except Exception as exc:
            # The switch happened; only its record is missing. Not a failed switch (no
            # failover_failed page, no second update): the intent stays open and a sync
            # confirms it from Convai's list.
            log.error("switch_record_failed", group=request.group, error=str(exc))
            return SwitchOutcome("unrecorded", switch=intent, target=chosen, message=message)
        # A failover means something broke (error); a failback or an operator's move is
        # the system doing what it should (info).
        level = log.error if request.kind == "failover" else log.info
        level(
            f"{request.kind}_completed",
            group=request.group,
            from_endpoint=request.expected_active,
            to_endpoint=chosen.endpoint,
            transaction_id=transaction_id,
            detection_to_switch_s=details.get("detection_to_switch_s"),
        )
        return SwitchOutcome("confirmed", switch=record, target=chosen, message=message)
