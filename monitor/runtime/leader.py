"""Leadership: which instance syncs with Convai, evaluates groups, switches and pages.

Every instance probes; only the holder of the lease in the shared database acts. The lease
is renewed every third of `ha.lease_ttl`. Whether this instance may act is judged from its
own monotonic clock, conservatively: from the moment it *asked* for the renewal, so a
process paused past its lease stops acting the moment it wakes, before it has even
talked to the database again. Writes that matter carry the fencing token as well, and the
store refuses a token that is no longer current.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from monitor.store.lease import Lease, Leases

log = structlog.get_logger()


class Leadership:
    def __init__(
        self,
        leases: Leases,
        name: str,
        ttl: float,
        call: Callable[..., Awaitable[Any]],
        on_elected: Callable[[], Awaitable[None]] | None = None,
        isolated: Callable[[], bool] = lambda: False,
    ) -> None:
        self.leases = leases
        self.name = name
        self.ttl = ttl
        self.call = call
        self.on_elected = on_elected
        # Whether this instance is cut off (runtime.evidence.Isolation): recorded with its
        # heartbeat, so the leader stops counting its votes, and it steps aside.
        self.isolated = isolated
        self.started_at = time.time()
        self.lease: Lease | None = None  # as last read
        self.token: int | None = None  # ours while we hold the lease
        self._valid_until = 0.0  # monotonic
        self.reachable = True  # the database answered the last renewal

    def held(self) -> bool:
        return self.token is not None and time.monotonic() < self._valid_until

    def fence(self) -> int | None:
        """The token a write must carry, or None when this instance must not write."""
        return self.token if self.held() else None

    async def renew(self) -> bool:
        """Take or renew the lease; True while this instance leads."""
        asked = time.monotonic()
        was = self.held()
        try:
            lease: Lease = await self.call(
                self.leases.acquire,
                self.name,
                self.ttl,
                self.started_at,
                isolated=self.isolated(),
            )
        except Exception as exc:  # no lease can be proven: act on nothing
            self.token = None
            if self.reachable or was:
                log.error("lease_unreachable", error=str(exc), was_leader=was)
            self.reachable = False
            return False
        if not self.reachable:
            log.info("lease_reachable_again")
        self.reachable = True
        before, self.lease = self.lease, lease
        if lease.holder == self.name:
            gained = self.token != lease.token
            self.token = lease.token
            self._valid_until = asked + self.ttl
            if gained:
                # Taking over from another instance is worth a look; leading from the
                # start (or after this instance's own lapse) is the normal case.
                previous = before.holder if before is not None else None
                took_over = previous is not None and previous != self.name
                (log.warning if took_over else log.info)(
                    "leader_elected",
                    instance=self.name,
                    fencing_token=lease.token,
                    previous=previous,
                )
                if self.on_elected is not None:
                    await self.on_elected()
            return True
        if was or self.token is not None:
            log.warning("leader_lost", instance=self.name, leader=lease.holder)
        self.token = None
        return False

    async def release(self) -> None:
        token, self.token = self.token, None
        if token is None:
            return
        try:
            await self.call(self.leases.release, self.name, token)
        except Exception as exc:  # shutting down anyway; the lease lapses by itself
            log.warning("lease_release_failed", error=str(exc))
        else:
            log.info("leader_released", instance=self.name)
