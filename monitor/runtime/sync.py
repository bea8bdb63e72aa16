"""Sync with Convai: learn where every group points, adopt changes made by others (drift),
and close switches left open by a crash from what Convai shows (reconciliation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from monitor.config import GroupConfig, display_url, normalize_url
from monitor.convai import ConvaiError, ConvaiUnreachable, ModelList
from monitor.domain.health import Health, HealthState
from monitor.durations import format_duration
from monitor.runtime.context import Context
from monitor.store.switching import GroupRecord, key_digest

log = structlog.get_logger()

# An intent older than this with no evaluation running is a leftover, reconciled at sync.
STALE_INTENT_AFTER = 120.0
# Events about Convai itself (its key rejected) belong to no group: they are recorded
# under this name, so they open and close an incident of their own.
CONVAI = "convai"


class StartupError(Exception):
    """The daemon must not start (exit 2): e.g. a configured group Convai does not know."""


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def find_endpoint(group: GroupConfig, base_url: str | None) -> str | None:
    if base_url is None:
        return None
    wanted = normalize_url(base_url)
    return next((e.name for e in group.endpoints if normalize_url(e.base_url) == wanted), None)


def same_url(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and normalize_url(a) == normalize_url(b)


class Sync:
    def __init__(
        self,
        ctx: Context,
        *,
        register: bool = False,
        dry_run: Callable[[], bool] = lambda: False,
    ) -> None:
        self.ctx = ctx
        self.beliefs = ctx.beliefs
        self.switches = ctx.beliefs.switches
        self.register = register
        self.dry_run = dry_run
        # Intents whose update landed but whose record failed: settled at the next sync,
        # however young.
        self.unsettled: set[int] = set()
        self._rejected = False  # Convai rejects convai.api_key (told once per episode)
        self.reconciled = False
        self.synced = False  # Convai's list has been read at least once
        self.convai_reachable = True
        # Since when Convai cannot be reached (None: it can), and whether that was paged.
        self.unreachable_since: float | None = None
        self.unreachable_error = ""
        self._unreachable_paged = False
        self.last_attempt = 0.0
        self._lock = asyncio.Lock()
        self._mismatch_noted: set[str] = set()

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile interrupted switches, then learn where every group points."""
        fetched_at = time.time()
        self.last_attempt = fetched_at
        try:
            listing = await self.ctx.convai.list_models()
        except ConvaiUnreachable as exc:
            # Keep probing and judging; switching waits until Convai has been read.
            self._unreachable(exc, fetched_at)
            log.error("convai_unreachable_at_start", error=str(exc))
            return
        except ConvaiError as exc:
            if exc.http_status in (401, 403):
                raise StartupError(f"Convai rejected convai.api_key: {exc}") from None
            log.error("convai_list_failed_at_start", error=str(exc))
            return
        groups = self.ctx.config.groups
        missing = [g for g in groups if listing.get(g.model_group_name) is None]
        if missing and not self.register:
            names = ", ".join(g.model_group_name for g in missing)
            raise StartupError(
                f"Convai has no model group {names}: register it (convai-monitor models "
                "register, or run with --register)"
            )
        if missing and self.dry_run():
            # A dry run changes nothing at Convai, registration included.
            for group in missing:
                await self.beliefs.write(
                    self.switches.record,
                    group.model_group_name,
                    "dry_run",
                    f"would register {group.model_group_name} with Convai on "
                    f"{group.primary.name} (dry run: not registered)",
                    time.time(),
                )
            missing = []
        for group in missing:
            await self._register(group)
        if missing:
            listing = await self.ctx.convai.list_models()
        await self._reconcile(listing)
        await self._apply_listing(listing, fetched_at)

    async def _register(self, group: GroupConfig) -> None:
        primary = group.primary
        model = group.model_name
        if model is None:
            raise StartupError(f"cannot register {group.model_group_name}: set its model_name")
        reply = await self.ctx.convai.register(
            group.model_group_name, model, primary.key, base_url=primary.base_url
        )
        await self.beliefs.write(
            self.switches.record,
            group.model_group_name,
            "registered",
            f"registered with Convai on {primary.name}",
            time.time(),
            details={"transaction_id": reply.transaction_id},
        )
        log.info("group_registered", group=group.model_group_name, endpoint=primary.name)

    async def _reconcile(self, listing: ModelList, stale_only: bool = False) -> None:
        """Close switches left open (by a crash, or a failure nobody caught) from what
        Convai says now: confirmed if the update landed, abandoned if not. Never re-sent."""
        now = time.time()
        for intent in await self.beliefs.call(self.switches.open_intents):
            if (
                stale_only
                and intent.id not in self.unsettled
                and (
                    now - intent.intent_at < STALE_INTENT_AFTER
                    or self.beliefs.lock(intent.group).locked()
                )
            ):
                continue
            self.unsettled.discard(intent.id)
            model = listing.get(intent.group)
            registered = model.base_url if model else None
            if registered and normalize_url(registered) == normalize_url(intent.to_base_url):
                # The update carried the endpoint's key: Convai holds it now.
                target = self.ctx.monitor.targets.get((intent.group, intent.to_endpoint))
                await self.beliefs.write(
                    self.switches.confirm_switch,
                    intent.id,
                    transaction_id=None,
                    key_digest=key_digest(target.api_key) if target else None,
                    at=now,
                    message=(
                        f"{intent.kind} {intent.from_endpoint} -> {intent.to_endpoint} "
                        "confirmed later from Convai's list: the update had landed"
                    ),
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=True
                )
            else:
                await self.beliefs.write(
                    self.switches.abandon_switch,
                    intent.id,
                    note=(
                        f"{intent.kind} -> {intent.to_endpoint} was interrupted and not applied "
                        f"(Convai shows {display_url(registered)})"
                    ),
                    at=now,
                )
                log.warning(
                    "switch_reconciled", group=intent.group, switch_id=intent.id, landed=False
                )
        self.reconciled = True

    # --- periodic sync (drift) ---------------------------------------------------------

    async def sync(self) -> None:
        """Read Convai's list and bring every group's belief in line with it."""
        if self.ctx.stopping:
            return
        async with self._lock:  # one sync at a time: each compares against the last
            await self._refresh_key_files()
            fetched_at = time.time()
            self.last_attempt = fetched_at
            try:
                listing = await self.ctx.convai.list_models()
            except ConvaiError as exc:
                if isinstance(exc, ConvaiUnreachable):
                    self._unreachable(exc, fetched_at)
                else:
                    self.convai_reachable = True
                log.warning("convai_sync_failed", error=str(exc))
                if exc.http_status in (401, 403):
                    await self._rejected_key(str(exc))
                return
            await self._reached(time.time())
            if self._rejected:
                self._rejected = False
                await self.beliefs.note(
                    CONVAI, "convai_auth_ok", "Convai accepts convai.api_key again", {}
                )
            await self._reconcile(listing, stale_only=self.reconciled)
            await self._apply_listing(listing, fetched_at)

    def _unreachable(self, exc: ConvaiError, at: float) -> None:
        self.convai_reachable = False
        self.unreachable_error = str(exc)
        if self.unreachable_since is None:
            self.unreachable_since = at

    async def _reached(self, now: float) -> None:
        self.convai_reachable = True
        since, self.unreachable_since = self.unreachable_since, None
        if self._unreachable_paged and since is not None:
            self._unreachable_paged = False
            await self.beliefs.note(
                CONVAI,
                "convai_reachable",
                f"Convai is reachable again after {format_duration(now - since)}: "
                "failover is possible again",
                {},
                level="info",
            )

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def check_reachable(self, now: float) -> None:
        """Page once when Convai has been unreachable past unreachable_grace."""
        since = self.unreachable_since
        grace = self.ctx.config.convai.unreachable_grace
        if since is None or self._unreachable_paged or now - since < grace:
            return
        self._unreachable_paged = True
        config = self.ctx.config_path or "CONFIG"
        url = display_url(self.ctx.config.convai.base_url)
        await self.beliefs.note(
            CONVAI,
            "convai_unreachable",
            f"Convai ({url}) has been unreachable for {format_duration(now - since)} "
            f"({self.unreachable_error}): failover is impossible while Convai cannot be "
            "reached. Probing and endpoint alerts go on.",
            {
                "broken": f"Convai at {url}: unreachable since {_clock(since)}",
                "command": f"convai-monitor models list -c {config}  "
                "(checks this host can reach Convai)",
            },
            level="error",
        )

    async def _rejected_key(self, error: str) -> None:
        """Convai rejects our own key: no switch can happen until someone fixes it."""
        if self._rejected:
            return  # once per episode; the incident's reminders repeat it
        self._rejected = True
        await self.beliefs.note(
            CONVAI,
            "convai_auth_failed",
            f"Convai rejects convai.api_key ({error}): no group can be failed over until "
            "the key is fixed in the config and the daemon reloaded",
            {
                "broken": f"Convai rejects convai.api_key since {_clock(time.time())}",
                "where": "where it was: no failover can reach Convai while the key is rejected",
                "command": "set a valid convai.api_key in the config, then reload the daemon "
                "(kill -HUP its pid, or restart it)",
            },
        )

    async def _refresh_key_files(self) -> None:
        """An api_key_file rewritten in place (a rotation) is noticed at every sync; the
        new key is then probed, and given to Convai if it belongs to an active endpoint."""
        monitor = self.ctx.monitor
        for group in self.ctx.config.groups:
            for endpoint in group.endpoints:
                path = endpoint.api_key_file
                target = monitor.targets.get((group.model_group_name, endpoint.name))
                if path is None or target is None:
                    continue
                try:
                    key = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
                except OSError as exc:
                    log.warning(
                        "api_key_file_unreadable",
                        group=group.model_group_name,
                        endpoint=endpoint.name,
                        error=exc.strerror,
                    )
                    continue
                if key and key != target.api_key:
                    monitor.targets[(target.group, target.endpoint)] = replace(target, api_key=key)
                    log.info("api_key_file_changed", group=target.group, endpoint=target.endpoint)

    async def _apply_listing(self, listing: ModelList, fetched_at: float) -> None:
        self.synced = True
        now = time.time()
        configured = {g.model_group_name: g for g in self.ctx.config.groups}
        for model in listing.models:
            if model.model_group_name not in configured:
                await self.beliefs.write(
                    self.switches.observe_registration,
                    model.model_group_name,
                    registered_base_url=model.base_url,
                    model_name=model.model_name,
                    monitored=False,
                    active_endpoint=None,
                    at=now,
                )
        for name, group in configured.items():
            registered = listing.get(name)
            async with self.beliefs.lock(name):
                # Read the belief under the lock: a switch may have landed since the list
                # was fetched, and a listing older than that must not undo it.
                before: GroupRecord | None = await self.beliefs.call(self.switches.group, name)
                if before is not None and (before.last_switch_at or 0.0) >= fetched_at:
                    continue
                if await self.beliefs.call(self.switches.open_intents, name):
                    continue
                if registered is None:
                    config = self.ctx.config_path or "CONFIG"
                    await self.beliefs.condition(
                        name,
                        "not_registered",
                        "Convai no longer lists this group",
                        now,
                        details={
                            "broken": f"Convai does not list {name} since {_clock(now)}",
                            "where": "not registered on Convai: characters using it get errors",
                            "command": f"convai-monitor models register -c {config} {name}",
                        },
                    )
                    continue
                await self._observe(group, registered.base_url, registered.model_name, before, now)

    async def _observe(
        self,
        group: GroupConfig,
        registered: str,
        model_name: str,
        before: GroupRecord | None,
        now: float,
    ) -> None:
        name = group.model_group_name
        endpoint = find_endpoint(group, registered)
        shown = display_url(registered)
        if (
            endpoint is None
            and before is not None
            and before.active_endpoint is not None
            and same_url(before.registered_base_url, registered)
        ):
            # Convai still calls what this group's endpoint was; the config gave that
            # endpoint a new base_url (a rehome follows) or removed it (a failover follows).
            endpoint = before.active_endpoint
        if before is not None and before.condition == "not_registered":
            await self.beliefs.condition(
                name, "recovered", "Convai lists the group again", now, clear=True
            )
        if (
            before is not None
            and before.registered_base_url is not None
            and not same_url(before.registered_base_url, registered)
        ):
            # Nobody but us should move the group; whoever did, we adopt and say so.
            where = endpoint or "no configured endpoint"
            await self.beliefs.write(
                self.switches.record,
                name,
                "drift",
                f"Convai's base_url changed to {shown} ({where}) without this daemon",
                now,
                details={"from": before.active_endpoint, "to": endpoint, "base_url": shown},
            )
            log.warning("drift", group=name, to_endpoint=endpoint, base_url=shown)
        if endpoint is None:
            to = self._best(group)
            config = self.ctx.config_path or "CONFIG"
            await self.beliefs.condition(
                name,
                "unmanaged",
                f"Convai's base_url {shown} matches no configured endpoint: nothing is "
                f"watched or switched for this group until it points at one (convai-monitor "
                f"failover -c {config} {name} --to {to})",
                now,
                details={"command": f"convai-monitor failover -c {config} {name} --to {to}"},
            )
        elif before is not None and before.condition == "unmanaged":
            await self.beliefs.condition(
                name, "managed", f"Convai points at {endpoint} again", now, clear=True
            )
        await self.beliefs.write(
            self.switches.observe_registration,
            name,
            registered_base_url=registered,
            model_name=model_name,
            monitored=True,
            active_endpoint=endpoint,
            at=now,
        )
        self.beliefs.active[name] = endpoint
        self._probe_model(name, model_name)
        if group.model_name and group.model_name != model_name:
            if name not in self._mismatch_noted:
                self._mismatch_noted.add(name)
                await self.beliefs.write(
                    self.switches.record,
                    name,
                    "model_mismatch",
                    f"Convai serves model {model_name} but the config names {group.model_name}: "
                    f"every endpoint is probed with {model_name}, the model characters get; "
                    "fix model_name in the config",
                    now,
                    details={"convai_model": model_name, "config_model": group.model_name},
                )
        else:
            self._mismatch_noted.discard(name)

    def _probe_model(self, group: str, model_name: str) -> None:
        """Probe every endpoint of the group with the model Convai sends (update cannot
        change it, so a fallback that does not serve it is no place to switch to)."""
        monitor = self.ctx.monitor
        moved = []
        for key, target in list(monitor.targets.items()):
            if target.group == group and target.model != model_name:
                monitor.targets[key] = replace(target, model=model_name)
                # Health judged on another model says nothing about this one.
                monitor.states[key] = HealthState()
                moved.append(target.endpoint)
        if moved:
            log.warning("probe_model_changed", group=group, model=model_name, endpoints=moved)

    def _best(self, group: GroupConfig) -> str:
        """Where an operator should point an unmanaged group: the first endpoint up."""
        states = self.ctx.monitor.states
        for endpoint in group.endpoints:
            state = states.get((group.model_group_name, endpoint.name))
            if state is not None and state.health is Health.UP:
                return endpoint.name
        return group.primary.name
