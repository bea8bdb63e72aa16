"""Wiring: the only module that names concrete classes and puts them together."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import suppress
from dataclasses import replace
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.alerts.delivery import Deliverer, Notifier
from monitor.config import Config, ConfigError, Target, build_targets, load_config
from monitor.convai import ConvaiClient, ConvaiError
from monitor.domain.deadline import WINDOW
from monitor.domain.health import Health
from monitor.domain.outcome import ProbeResult
from monitor.metrics import Metrics
from monitor.probes import ChatProber, ProbeShape
from monitor.runtime.failover import Engine
from monitor.runtime.jobs import Jobs
from monitor.runtime.leader import Leadership
from monitor.runtime.monitor import Monitor
from monitor.runtime.recorder import Recorder
from monitor.runtime.retarget import retarget
from monitor.server import Check, ListenError, StatusServer
from monitor.store import Store
from monitor.store.lease import Leases
from monitor.store.outbox import Deliveries, Outbox
from monitor.store.switching import SwitchLog
from monitor.systemd import SystemdNotify
from monitor.web import status_server

log = structlog.get_logger()

# How often raw results are rolled up into hourly rows and old rows pruned.
MAINTENANCE_INTERVAL = 300.0
# SIGTERM must end the process within a few seconds even with probes hanging.
DRAIN_TIMEOUT = 3.0
# A switch in flight gets longer to finish than a probe: half a switch is worse. 4 s, so
# that with the final alert pass, the flush and the process's exit on a busy machine it
# is gone within the 6 s the README promises (an interrupted switch stays open and is
# reconciled at the next start).
SWITCH_DRAIN_TIMEOUT = 4.0
FINAL_DELIVERY_TIMEOUT = 2.0
# The loop's proof of life (and systemd watchdog ping, when that is more often).
HEARTBEAT_INTERVAL = 1.0
# Config sections a reload applies while running (storage.retention too: maintenance
# reads it each time). The database and the probe pool are opened once, at start.
RELOADED_SECTIONS = frozenset(
    {"convai", "defaults", "dry_run", "groups", "alerts", "server", "storage", "probes"}
)
# The heartbeat is written to the database this often, for `status` in another process.
BEAT_WRITE_EVERY = 5.0
HEALTH_STALE_AFTER = 10.0
STATUS_EVERY = 10  # seconds between STATUS= updates to systemd
# Groups are re-evaluated this often (failback timers, pin expiry, retries), besides
# immediately on every health transition.
DECIDE_INTERVAL = 1.0
MIN_DECIDE_INTERVAL = 0.1
# How often the outbox is checked for alerts to deliver.
ALERT_POLL_INTERVAL = 0.5


def convai_client(config: Config, metrics: Metrics | None = None) -> ConvaiClient:
    return ConvaiClient(
        config.convai.base_url,
        config.convai.api_key.get_secret_value(),
        timeout=config.convai.timeout,
        retry_budget=config.convai.retry_budget,
        on_call=metrics.convai_call if metrics is not None else None,
    )


async def resolve_targets(
    config: Config,
    convai: ConvaiClient | None = None,
    stored: dict[str, str] | None = None,
    *,
    ask: bool = True,
) -> list[Target]:
    """Targets for every endpoint, each probing the model Convai lists for its group.

    Convai's model is what characters are served, whatever the config says. Without
    Convai (unreachable, or `ask` is False because a sync follows at once), the model last
    stored for the group is used, then the config's: probing never waits on Convai.
    """
    stored = stored or {}
    known = {
        g.model_group_name: stored.get(g.model_group_name) or g.model_name for g in config.groups
    }
    models: dict[str, str] = {k: v for k, v in known.items() if v}
    if ask or len(models) < len(config.groups):
        own = convai is None
        client = convai or convai_client(config)
        try:
            listing = await client.list_models()
        except ConvaiError as exc:
            log.warning("convai_models_unavailable", error=str(exc), using="stored or config")
        else:
            models.update({m.model_group_name: m.model_name for m in listing.models})
        finally:
            if own:
                await client.aclose()
    missing = [g.model_group_name for g in config.groups if g.model_group_name not in models]
    if missing:
        raise ConfigError(
            [
                f"groups: {name}: no model_name in config and Convai lists no such group"
                for name in missing
            ]
        )
    return build_targets(config, models)


async def check(config: Config, group: str | None = None) -> list[ProbeResult]:
    """Probe every endpoint (of one group, if named) once, concurrently."""
    targets = await resolve_targets(config)
    if group is not None:
        targets = [t for t in targets if t.group == group]
    prober = ChatProber(
        config.probes.max_in_flight, config.probes.max_body_bytes, config.instance.name
    )
    try:
        return list(await asyncio.gather(*(prober.probe(t) for t in targets)))
    finally:
        await prober.aclose()


def switch_log(
    config: Config, store: Store, notifier: Notifier | None = None, *, drill: bool = False
) -> SwitchLog:
    """The audit log, queueing alerts for the configured targets with every event."""
    notifier = notifier or Notifier(config.alerts)
    outbox = Outbox(notifier.routes(config.alerts), prefix=config.alerts.prefix, drill=drill)
    return SwitchLog(store, outbox)


def open_store(config: Config, migrate: bool = True) -> Store:
    store = Store(config.storage.url, config.instance.name)
    if migrate:
        store.migrate()
    return store


class Daemon:
    """`convai-monitor run`: probes on a schedule until told to stop."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        config_path: str | None = None,
        dry_run: bool = False,
        register: bool = False,
        drill: bool = False,
        notify: SystemdNotify | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.config_path = config_path
        self.drill = drill
        self.dry_run_flag = dry_run  # --dry-run on the command line outlives reloads
        self.dry_run = dry_run or config.dry_run
        self.config_convai = config.convai
        self.register = register
        self.notify = notify or SystemdNotify()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.monitor: Monitor | None = None
        self.engine: Engine | None = None
        self.deliverer: Deliverer | None = None
        self.leadership: Leadership | None = None
        self.server: StatusServer | None = None
        self.metrics = Metrics()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.jobs = Jobs()
        self.heartbeat = 0.0
        self._beat_written = 0.0
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request_stop(self) -> None:
        self.stopping.set()

    def request_reload(self) -> None:
        self._background(self._reload_when_ready())

    async def _reload_when_ready(self) -> None:
        # A SIGHUP during start-up is applied once start-up is done, not into the middle
        # of it; reloads are applied one at a time.
        await self.ready.wait()
        async with self._reload_lock:
            try:
                await self.reload()
            except Exception as exc:  # a failed reload must not take the daemon down
                log.exception("config_reload_failed", problem=str(exc))

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.request_stop, signal.SIGINT: self.request_stop}
        if self.config_path is not None:
            handlers[signal.SIGHUP] = self.request_reload
        for sig, handler in handlers.items():
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        convai = convai_client(self.config, self.metrics)
        prober = ChatProber(
            self.config.probes.max_in_flight,
            self.config.probes.max_body_bytes,
            self.config.instance.name,
        )
        recorder = Recorder(self.store)
        try:
            await self._start(convai, prober, recorder)
            await self.stopping.wait()
            log.info("daemon_stopping")
        finally:
            await self._shutdown()
            with suppress(Exception):
                # `status` says "not running" at once after a clean stop, not after the
                # heartbeat goes stale.
                await recorder.call(self.store.beat, time.time(), os.getpid(), stopped=True)
            await recorder.close()
            await prober.aclose()
            await convai.aclose()
            for sig in handlers:
                with suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("daemon_stopped")

    async def _start(self, convai: ConvaiClient, prober: ChatProber, recorder: Recorder) -> None:
        """Build the parts, learn where groups point, then start probing and serving."""
        config, store, metrics = self.config, self.store, self.metrics
        # Probing starts with the model stored for each group (Convai's, as of the last
        # run) or the config's; the sync just below switches to Convai's if it changed.
        records = await recorder.call(SwitchLog(store).groups)
        stored = {name: r.model_name for name, r in records.items() if r.model_name}
        targets = await resolve_targets(config, convai, stored, ask=False)
        ids = await recorder.call(
            store.sync_endpoints, [(t.group, t.endpoint, t.base_url) for t in targets]
        )
        states = await recorder.call(store.own_health)
        # Probe shapes learnt before a restart: a reasoning model is asked right at once.
        for key, shape in (await recorder.call(store.probe_shapes)).items():
            prober.shapes[key] = ProbeShape.from_dict(shape)
        now = time.time()
        # A restart does not forget that an endpoint was down. "Up since" does not
        # survive it, though: nobody watched while the daemon was away, so failback
        # timers start again from now.
        states = {
            k: replace(v, since=now) if v.health is Health.UP else v for k, v in states.items()
        }
        monitor = Monitor(self.scheduler, prober, recorder, ids, states, metrics)
        self.monitor = monitor
        # Learned deadlines survive a restart: the last hour of successes, read once.
        for key, (times, values) in (await recorder.call(store.latencies, now - WINDOW)).items():
            monitor.learn(key, zip(times, values, strict=True))
        recorder.start()
        monitor.targets.update({(t.group, t.endpoint): t for t in targets})
        notifier = Notifier(config.alerts)
        switches = switch_log(config, store, notifier, drill=self.drill)
        assert switches.outbox is not None
        self.deliverer = Deliverer(
            config.alerts,
            notifier,
            Deliveries(store),
            switches.outbox,
            recorder.call,
            on_attempt=lambda outcome: metrics.alert_deliveries.labels(outcome).inc(),
        )
        leadership = Leadership(
            Leases(store),
            config.instance.name,
            config.ha.lease_ttl,
            recorder.call,
            on_elected=self._elected,
            isolated=self._isolated,
        )
        self.leadership = leadership
        recorder.leading = leadership.held
        engine = Engine(
            config,
            monitor,
            convai,
            switches,
            dry_run=self.dry_run,
            register=self.register,
            config_path=self.config_path,
            leading=leadership.held,
            fence=leadership.fence,
        )
        self.engine = engine
        # The first instance up leads at once; the others follow until the lease lapses.
        await self._renew()
        self.deliverer.serving = lambda: engine.beliefs.serving
        # Reconcile interrupted switches and learn where groups point before probing.
        await engine.start()
        # The sync may have moved a group's probes to Convai's model.
        targets = [monitor.targets.get((t.group, t.endpoint), t) for t in targets]
        monitor.add_targets(targets)
        self._schedule(config)
        self.heartbeat = time.time()
        if config.server.listen:
            self.server = status_server(
                config, lambda: self.config, self.health_check, self.ready_check, metrics.render
            )
            self.server.start()
        self.scheduler.start()
        log.info(
            "daemon_started",
            groups=len(config.groups),
            endpoints=len(targets),
            database=store.where,
            dry_run=self.dry_run,
            listen=f"{self.server.host}:{self.server.port}" if self.server else None,
        )
        await self._maintain()
        self.ready.set()
        self._background(self._announce_ready())

    async def _shutdown(self) -> None:
        self.notify.stopping()
        scheduler = self.scheduler
        # Stop starting work, let what is in flight finish (a switch especially), then
        # shut the scheduler down: its shutdown cancels running jobs outright.
        if scheduler.running:
            scheduler.pause()
        if self.engine is not None:
            self.engine.stopping = True  # probes still finishing start no evaluation
        await self.jobs.drain(SWITCH_DRAIN_TIMEOUT)
        if self.monitor is not None:
            await self.monitor.drain(DRAIN_TIMEOUT)
        if self.engine is not None:
            await self.engine.drain(SWITCH_DRAIN_TIMEOUT)
        if scheduler.running:
            scheduler.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
        if self.deliverer is not None:
            # One last pass, so the page about what just happened is not left behind.
            if self._leading():
                with suppress(Exception):
                    await asyncio.wait_for(self.deliverer.run_once(), FINAL_DELIVERY_TIMEOUT)
            self.deliverer.close()
        if self.leadership is not None:
            if self.monitor is not None:
                # The last results still count as the leader's (the shared health).
                await self.monitor.recorder.flush()
            # Hand over now rather than after a lease_ttl of nobody leading.
            await self.leadership.release()
        if self.server is not None:
            self.server.stop()

    def _every(self, fn: Any, seconds: float, job_id: str) -> None:
        self.scheduler.add_job(
            self.jobs.wrap(fn),
            "interval",
            seconds=seconds,
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
            max_instances=1,
        )

    def _schedule(self, config: Config) -> None:
        assert self.engine is not None
        assert self.deliverer is not None
        # As often as the fastest cadence, within [MIN_DECIDE_INTERVAL, DECIDE_INTERVAL]:
        # each tick reads every group's record, so sub-100 ms ticks only burn CPU.
        fastest = min(g.policy.fast_interval for g in config.groups)
        self._every(
            self.engine.tick, min(DECIDE_INTERVAL, max(MIN_DECIDE_INTERVAL, fastest)), "decide"
        )
        self._every(self.engine.sync, config.convai.sync_interval, "sync")
        assert self.leadership is not None
        self._every(self._renew, config.ha.lease_ttl / 3, "lease")
        # The outbox is shared: only the leader delivers, so three instances page once.
        self._every(self._leader_only(self.deliverer.run_once), ALERT_POLL_INTERVAL, "alerts")
        self._every(
            self._leader_only(self.deliverer.remind),
            max(0.1, min(60.0, config.alerts.reminder_interval / 4)),
            "reminders",
        )
        self._every(self._maintain, MAINTENANCE_INTERVAL, "maintenance")
        beat = HEARTBEAT_INTERVAL
        if self.notify.watchdog_interval is not None:
            beat = min(beat, self.notify.watchdog_interval)
        self._every(self._beat, beat, "heartbeat")

    def _leading(self) -> bool:
        return self.leadership is not None and self.leadership.held()

    def _isolated(self) -> bool:
        return self.engine is not None and self.engine.isolated

    def _leader_only(self, fn: Any) -> Any:
        async def job() -> None:
            if self._leading():
                await fn()

        return job

    async def _elected(self) -> None:
        if self.engine is not None:
            self.engine.takeover()

    async def _renew(self) -> None:
        assert self.leadership is not None
        await self.leadership.renew()
        self.metrics.leader.set(1 if self.leadership.held() else 0)
        self.metrics.isolated.set(1 if self._isolated() else 0)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _beat(self) -> None:
        """Proof of life from the loop itself: a hung loop stops beating and is restarted."""
        self.heartbeat = time.time()
        if self.heartbeat - self._beat_written >= BEAT_WRITE_EVERY and self.monitor is not None:
            self._beat_written = self.heartbeat
            with suppress(Exception):  # a busy database must not stop the watchdog
                await self.monitor.recorder.call(self.store.beat, self.heartbeat, os.getpid())
        self.notify.watchdog()
        if int(self.heartbeat) % STATUS_EVERY == 0:
            self.notify.status(self.summary())

    async def _announce_ready(self) -> None:
        """READY=1 once every endpoint has been probed (bounded wait)."""
        assert self.monitor is not None
        limit = max(g.policy.interval for g in self.config.groups) * 2 + 5
        with suppress(TimeoutError):
            await asyncio.wait_for(self.monitor.all_probed.wait(), limit)
        self.notify.ready(self.summary())
        log.info("daemon_ready", probed=len(self.monitor.probed))

    def _all_probed(self) -> bool:
        return self.monitor is not None and set(self.monitor.targets) <= self.monitor.probed

    def summary(self) -> str:
        """One line for systemd's STATUS=: what is up and where groups point."""
        if self.monitor is None or self.engine is None:
            return "starting"
        states = self.monitor.states
        up = sum(
            1 for k in self.monitor.targets if states.get(k) and states[k].health.value == "up"
        )
        moved = sum(
            1
            for g in self.config.groups
            if self.engine.active.get(g.model_group_name) not in (None, g.primary.name)
        )
        return (
            f"{len(self.config.groups)} groups, {up}/{len(self.monitor.targets)} endpoints up, "
            f"{moved} failed over"
        )

    # --- health and readiness (called from the status server's threads) ----------------

    def health_check(self) -> Check:
        age = time.time() - self.heartbeat
        ok = self.scheduler.running and age < HEALTH_STALE_AFTER
        return Check(
            ok, {"scheduler_running": self.scheduler.running, "last_tick_age_s": round(age, 3)}
        )

    def ready_check(self) -> Check:
        migrated = True  # the daemon does not start before migrations are applied
        leading = self._leading()
        # A follower acts on nothing, so it needs no answer from Convai to be useful.
        convai = self.engine is not None and (self.engine.synced or not leading)
        probed = self._all_probed()
        database = self.leadership is not None and self.leadership.reachable
        # Cut off from every endpoint and Convai: this instance's view counts for nothing.
        isolated = self._isolated()
        return Check(
            migrated and convai and probed and database and not isolated,
            {
                "database_migrated": migrated,
                "database_reachable": database,
                "convai_reached": convai,
                "all_endpoints_probed": probed,
                "leader": leading,
                "isolated": isolated,
            },
        )

    # --- reload ------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: apply a new config file; keep running on the old one if it is invalid."""
        loaded = await self._load()
        if loaded is None:
            return
        config, targets = loaded
        assert self.monitor is not None
        assert self.engine is not None
        monitor, engine = self.monitor, self.engine
        # Results buffered before the reload are written first: written after it, an old
        # URL's results would overwrite the fresh health of a new one.
        await monitor.recorder.flush()
        ids = await monitor.recorder.call(
            self.store.sync_endpoints, [(t.group, t.endpoint, t.base_url) for t in targets]
        )
        states = await monitor.recorder.call(self.store.own_health)
        changes = retarget(monitor, targets, ids, states)
        previous = self.config
        self.config = config
        engine.config = config
        engine.switcher.dry_run = self.dry_run_flag or config.dry_run
        self._apply_convai(config)
        await self._unmonitor({g for g, _ in changes.removed}, config)
        self._apply_alerts(config)
        self._schedule(config)
        await self._apply_server(previous, config)
        self.reloads += 1
        sections = changed_sections(previous, config)
        log.info("config_reloaded", sections=sections, **changes.log_fields())
        later = restart_needed(previous, config)
        if later:
            log.warning(
                "config_reload_needs_restart",
                settings=later,
                hint="these take effect at the next start (systemctl restart convai-monitor)",
            )
        self._background(engine.sync())

    async def _load(self) -> tuple[Config, list[Target]] | None:
        """The new config and its targets, or None (logged) if it cannot be used."""
        assert self.config_path is not None
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
            in_use = (
                {t.group: t.model for t in self.monitor.targets.values()} if self.monitor else {}
            )
            targets = await resolve_targets(
                config, self.engine.convai if self.engine else None, in_use
            )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config_reload_failed", problem=problem)
            log.error("config_reload_rejected", kept="the running config")
            return None
        except Exception as exc:
            log.error("config_reload_failed", problem=str(exc))
            return None
        return config, targets

    def _apply_convai(self, config: Config) -> None:
        assert self.engine is not None
        if config.convai == self.config_convai:
            return
        # A new Convai key or URL: new client; the old one closes once idle.
        old_client = self.engine.convai
        self.engine.convai = convai_client(config, self.metrics)
        self._background(_close_later(old_client))
        self.config_convai = config.convai

    async def _unmonitor(self, groups: set[str], config: Config) -> None:
        assert self.monitor is not None
        assert self.engine is not None
        for group in groups - {g.model_group_name for g in config.groups}:
            # A group no longer monitored must not keep paging about an old incident.
            await self.monitor.recorder.call(
                self.engine.switches.record,
                group,
                "unmonitored",
                f"{group} was removed from the config; its alerts stop here",
                time.time(),
            )

    async def _apply_server(self, previous: Config, config: Config) -> None:
        """A new server.listen is served at once; the old address is closed."""
        if previous.server.listen == config.server.listen:
            return
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
        if not config.server.listen:
            return
        server = status_server(
            config, lambda: self.config, self.health_check, self.ready_check, self.metrics.render
        )
        try:
            server.start()
        except ListenError as exc:
            log.error("server_listen_failed", problem=str(exc))
            return
        self.server = server
        log.info("server_listening", listen=f"{server.host}:{server.port}")

    def _apply_alerts(self, config: Config) -> None:
        notifier = Notifier(config.alerts)
        if self.deliverer is not None:
            self.deliverer.notifier = notifier
            self.deliverer.config = config.alerts
            self.deliverer.outbox.routes = notifier.routes(config.alerts)

    async def _maintain(self) -> None:
        if self.monitor is None:
            return
        recorder = self.monitor.recorder
        storage = self.config.storage
        now = time.time()
        try:
            folded = await recorder.call(self.store.rollup, now)
            removed = await recorder.call(
                self.store.prune, now, storage.retention, storage.rollup_retention
            )
        except Exception as exc:  # maintenance must never take the daemon down
            log.error("maintenance_failed", error=str(exc))
            return
        if folded or removed:
            log.info("maintenance_done", hours_rolled_up=folded, results_pruned=removed)


async def _close_later(client: ConvaiClient) -> None:
    await asyncio.sleep(60)  # a call in flight on the old client gets to finish
    await client.aclose()


def restart_needed(old: Config, new: Config) -> list[str]:
    """Changed settings that only a restart applies."""
    later = [name for name in changed_sections(old, new) if name not in RELOADED_SECTIONS]
    if old.storage.url != new.storage.url:
        later.append("storage.url")
    if old.probes != new.probes:
        later.append("probes")
    return later


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level config sections whose value differs (secrets compared, never shown)."""
    return [name for name in type(new).model_fields if getattr(old, name) != getattr(new, name)]
