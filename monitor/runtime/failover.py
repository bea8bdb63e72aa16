"""The failover engine: the parts that keep each group's belief in sync with Convai
(runtime.sync) and evaluate and act on decisions (runtime.evaluate, runtime.act), put
together behind the few calls the daemon makes. What to do is decided in domain.failover.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from monitor.config import Config, Target
from monitor.convai import ConvaiClient
from monitor.domain.outcome import ProbeResult
from monitor.runtime.context import Beliefs, Context
from monitor.runtime.evaluate import Evaluator
from monitor.runtime.monitor import Monitor
from monitor.runtime.switcher import Switcher
from monitor.runtime.sync import StartupError, Sync, find_endpoint
from monitor.store.switching import SwitchLog

__all__ = ["Engine", "StartupError", "find_endpoint"]

log = structlog.get_logger()


class Engine:
    def __init__(
        self,
        config: Config,
        monitor: Monitor,
        convai: ConvaiClient,
        switches: SwitchLog,
        *,
        dry_run: bool = False,
        register: bool = False,
        config_path: str | None = None,
        leading: Callable[[], bool] | None = None,
        fence: Callable[[], int | None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.switches = switches
        self.beliefs = Beliefs(switches, monitor.recorder.call)
        self.ctx = Context(config, convai, monitor, self.beliefs, config_path)
        if leading is not None:
            self.ctx.leading = leading
        self.switcher = Switcher(
            convai, switches, monitor.recorder.call, self._preflight, dry_run=dry_run, fence=fence
        )
        self.syncer = Sync(self.ctx, register=register, dry_run=lambda: self.switcher.dry_run)
        self.evaluator = Evaluator(self.ctx, self.syncer, self.switcher)
        self.active = self.beliefs.active

    # A reload replaces the config and the Convai client under every part at once.
    @property
    def config(self) -> Config:
        return self.ctx.config

    @config.setter
    def config(self, config: Config) -> None:
        self.ctx.config = config

    @property
    def convai(self) -> ConvaiClient:
        return self.ctx.convai

    @convai.setter
    def convai(self, client: ConvaiClient) -> None:
        self.ctx.convai = client
        self.switcher.convai = client

    @property
    def stopping(self) -> bool:
        return self.ctx.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.ctx.stopping = value

    @property
    def synced(self) -> bool:
        return self.syncer.synced

    @property
    def isolated(self) -> bool:
        return self.evaluator.isolation.isolated

    @property
    def convai_reachable(self) -> bool:
        return self.syncer.convai_reachable

    async def start(self) -> None:
        """Reconcile interrupted switches, then learn where every group points (the
        leader; a follower only probes until it is elected, see `takeover`)."""
        self.monitor.listeners.append(self.evaluator.on_result)
        if self.ctx.leading():
            await self.syncer.start()
        else:
            log.info("follower_started")

    def takeover(self) -> None:
        """Newly elected: the next tick closes the switches the last leader left open from
        Convai's list, exactly as a restart does, before anything is evaluated."""
        self.syncer.reconciled = False
        self.syncer.last_attempt = 0.0  # now, not after the retry pause
        self.evaluator.steady.clear()  # another leader may have moved any group meanwhile

    async def sync(self) -> None:
        if self.ctx.leading():
            await self.syncer.sync()

    async def tick(self) -> None:
        # Every instance watches whether it is cut off; only the leader decides.
        self.evaluator.isolation.watch(time.time())
        if self.ctx.leading():
            await self.evaluator.tick()

    async def evaluate(self, name: str) -> None:
        await self.evaluator.evaluate(name)

    async def drain(self, grace: float) -> None:
        await self.ctx.drain(grace)

    async def _preflight(self, target: Target) -> ProbeResult:
        return await self.monitor.probe(target)
