"""Wiring: the only module that names concrete classes and puts them together."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import suppress

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.alerts.delivery import Deliverer, Notifier
from monitor.config import Config, ConfigError, Target, build_targets
from monitor.convai import ConvaiClient
from monitor.domain.outcome import ProbeResult
from monitor.probes import ChatProber
from monitor.runtime.failover import Engine
from monitor.runtime.jobs import Jobs
from monitor.runtime.monitor import Monitor
from monitor.runtime.recorder import Recorder
from monitor.store import Store
from monitor.store.outbox import Deliveries, Outbox
from monitor.store.switching import SwitchLog

log = structlog.get_logger()

# How often raw results are rolled up into hourly rows and old rows pruned.
MAINTENANCE_INTERVAL = 300.0
# SIGTERM must end the process within a few seconds even with probes hanging.
DRAIN_TIMEOUT = 3.0
# A switch in flight gets longer to finish than a probe: half a switch is worse.
SWITCH_DRAIN_TIMEOUT = 6.0
FINAL_DELIVERY_TIMEOUT = 2.0
# Groups are re-evaluated this often (failback timers, pin expiry, retries), besides
# immediately on every health transition.
DECIDE_INTERVAL = 1.0
MIN_DECIDE_INTERVAL = 0.1
# How often the outbox is checked for alerts to deliver.
ALERT_POLL_INTERVAL = 0.5


def convai_client(config: Config) -> ConvaiClient:
    return ConvaiClient(
        config.convai.base_url,
        config.convai.api_key.get_secret_value(),
        timeout=config.convai.timeout,
        retry_budget=config.convai.retry_budget,
    )


async def resolve_targets(config: Config, convai: ConvaiClient | None = None) -> list[Target]:
    """Targets for every endpoint; model names missing from config are read from Convai."""
    if all(g.model_name for g in config.groups):
        return build_targets(config)
    own = convai is None
    client = convai or convai_client(config)
    try:
        listing = await client.list_models()
    finally:
        if own:
            await client.aclose()
    models = {m.model_group_name: m.model_name for m in listing.models}
    missing = [
        g.model_group_name
        for g in config.groups
        if not g.model_name and g.model_group_name not in models
    ]
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
    prober = ChatProber(config.probes.max_in_flight, config.probes.max_body_bytes)
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
    store = Store(config.storage.url)
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
        dry_run: bool = False,
        register: bool = False,
        drill: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.drill = drill
        self.dry_run = dry_run or config.dry_run
        self.register = register
        self.stopping = asyncio.Event()
        self.monitor: Monitor | None = None
        self.engine: Engine | None = None
        self.deliverer: Deliverer | None = None
        self.ready = asyncio.Event()

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        config, store = self.config, self.store
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        convai = convai_client(config)
        prober = ChatProber(config.probes.max_in_flight, config.probes.max_body_bytes)
        recorder = Recorder(store)
        scheduler = AsyncIOScheduler(timezone="UTC")
        jobs = Jobs()
        try:
            targets = await resolve_targets(config, convai)
            ids = await recorder.call(
                store.sync_endpoints, [(t.group, t.endpoint, t.base_url) for t in targets]
            )
            states = await recorder.call(store.health)
            monitor = Monitor(scheduler, prober, recorder, ids, states)
            self.monitor = monitor
            recorder.start()
            monitor.targets.update({(t.group, t.endpoint): t for t in targets})
            notifier = Notifier(config.alerts)
            switches = switch_log(config, store, notifier, drill=self.drill)
            assert switches.outbox is not None
            deliverer = Deliverer(
                config.alerts, notifier, Deliveries(store), switches.outbox, recorder.call
            )
            self.deliverer = deliverer
            engine = Engine(
                config,
                monitor,
                convai,
                switches,
                dry_run=self.dry_run,
                register=self.register,
            )
            self.engine = engine
            # Reconcile interrupted switches and learn where groups point before probing.
            await engine.start()
            monitor.add_targets(targets)
            # As often as the fastest cadence, within [MIN_DECIDE_INTERVAL, DECIDE_INTERVAL]:
            # each tick reads every group's record, so sub-100 ms ticks only burn CPU.
            fastest = min(g.policy.fast_interval for g in config.groups)
            decide_every = min(DECIDE_INTERVAL, max(MIN_DECIDE_INTERVAL, fastest))
            scheduler.add_job(
                jobs.wrap(engine.tick),
                "interval",
                seconds=decide_every,
                id="decide",
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )
            scheduler.add_job(
                jobs.wrap(engine.sync),
                "interval",
                seconds=config.convai.sync_interval,
                id="sync",
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )
            scheduler.add_job(
                jobs.wrap(deliverer.run_once),
                "interval",
                seconds=ALERT_POLL_INTERVAL,
                id="alerts",
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )
            scheduler.add_job(
                jobs.wrap(deliverer.remind),
                "interval",
                seconds=max(0.1, min(60.0, config.alerts.reminder_interval / 4)),
                id="reminders",
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )
            scheduler.add_job(
                jobs.wrap(self._maintain),
                "interval",
                seconds=MAINTENANCE_INTERVAL,
                id="maintenance",
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )
            scheduler.start()
            log.info(
                "daemon_started",
                groups=len(config.groups),
                endpoints=len(targets),
                database=store.path or "external",
                dry_run=self.dry_run,
            )
            await self._maintain()
            self.ready.set()
            await self.stopping.wait()
            log.info("daemon_stopping")
        finally:
            # Stop starting work, let what is in flight finish (a switch especially), then
            # shut the scheduler down: its shutdown cancels running jobs outright.
            if scheduler.running:
                scheduler.pause()
            await jobs.drain(SWITCH_DRAIN_TIMEOUT)
            if self.engine is not None:
                await self.engine.drain(SWITCH_DRAIN_TIMEOUT)
            if self.monitor is not None:
                await self.monitor.drain(DRAIN_TIMEOUT)
            if scheduler.running:
                scheduler.shutdown(wait=False)
            if self.deliverer is not None:
                # One last pass, so the page about what just happened is not left behind.
                with suppress(Exception):
                    await asyncio.wait_for(self.deliverer.run_once(), FINAL_DELIVERY_TIMEOUT)
                self.deliverer.close()
            await recorder.close()
            await prober.aclose()
            await convai.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("daemon_stopped")

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
