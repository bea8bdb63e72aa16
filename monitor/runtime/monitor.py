"""Probing on a schedule: one APScheduler job per endpoint, health judged after each probe."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config import Policy, Target
from monitor.domain.deadline import DeadlineRule, LatencyWindow, deadline, late_verdict
from monitor.domain.health import (
    UNPROBED,
    FailureRate,
    Health,
    HealthState,
    Thresholds,
    Transition,
    judge,
    wants_fast,
    withdraw,
)
from monitor.domain.outcome import ProbeResult, Verdict
from monitor.logs import debug_enabled
from monitor.metrics import Metrics
from monitor.probes import ChatProber, ProbeShape
from monitor.runtime.jobs import Jobs
from monitor.runtime.recorder import Recorder
from monitor.store import EndpointKey

log = structlog.get_logger()

# The first round is spread over at least STARTUP_SPREAD seconds, and slower than
# STARTUP_RATE probes a second: every endpoint is judged soon after start, but 1,000
# endpoints do not start at once (a burst overloads the loop, turns healthy endpoints
# into timeouts, and their fast re-probes feed the overload). Later rounds are spread
# over the whole interval.
STARTUP_SPREAD = 2.0
STARTUP_RATE = 40.0
_LAG_SAMPLES = 10_000
MISSED_LOG_EVERY = 60.0
# Missed runs are blamed on the CPU when the scheduler noticed the run LATE_LAG seconds or
# more after its time, or one of the last RECENT_LAGS probes started that late (only a busy
# loop delays the start of a job), and on
# the database when a store call has been running SLOW_STORE seconds (a sound one takes
# milliseconds).
RECENT_LAGS = 50
LATE_LAG = 0.5
SLOW_STORE = 1.0
# A next run this close to the one APScheduler holds is the same run (datetimes keep
# microseconds; the grid arithmetic differs from its own in the last float digits).
GRID_TOLERANCE = 0.001
# Endpoints' grids are placed on slots this far apart, so that at a few hundred probes a
# second each scheduler wake-up starts several probes instead of one. APScheduler's cost
# is per wake-up more than per job: 500 jobs at 100 runs/s cost 523 us of CPU per run
# spread continuously, 252 us on 25 ms slots, 153 us on 50 ms (scheduler_slots.py).
# Kept short: the probes of one slot reach their servers together, and a server that
# serves several endpoints answers the last of them later (the benchmark's one simulator
# process: latency error p50 +1 ms at 25 ms slots and 200 probes/s).
PROBE_SLOT = 0.025
# The same failure of an endpoint already down is logged this often, with a count.
REPEAT_LOG_EVERY = 60.0

Listener = Callable[[Target, ProbeResult, HealthState, Transition | None], Awaitable[None]]


@dataclass
class Counters:
    """What the loop did, for metrics, status and the benchmark."""

    probes: int = 0
    missed: int = 0  # runs APScheduler skipped or dropped; should stay 0
    errors: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES))
    last_tick: float = 0.0


# Built once per policy object (policies are frozen): thresholds() runs several times per
# probe, and building two dataclasses each time was 2-3% of the daemon's CPU. The policy
# is kept beside its limits so its id cannot be reused while the entry lives.
_LIMITS: dict[int, tuple[Policy, Thresholds]] = {}


def thresholds(policy: Policy) -> Thresholds:
    """The health machine's limits from a group's policy."""
    known = _LIMITS.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    if len(_LIMITS) >= 4096:  # policies of configs long reloaded away
        _LIMITS.clear()
    limits = _thresholds(policy)
    _LIMITS[id(policy)] = (policy, limits)
    return limits


def _thresholds(policy: Policy) -> Thresholds:
    rate = policy.failure_rate
    return Thresholds(
        rise=policy.rise,
        fall=policy.fall,
        rate=FailureRate(rate.window, rate.min_probes, rate.threshold),
        clean_window=policy.failback_after,
        latency_threshold=policy.latency_threshold,
        latency_counts="latency" in policy.failover_on,
    )


def deadline_rule(policy: Policy) -> DeadlineRule:
    return DeadlineRule(policy.deadline_floor, policy.deadline_factor, policy.timeout)


def slot(at: float) -> float:
    """The probe slot nearest to `at` (epoch seconds)."""
    return round(at / PROBE_SLOT) * PROBE_SLOT


def _job_id(key: EndpointKey) -> str:
    return f"probe:{key[0]}/{key[1]}"


class Monitor:
    def __init__(
        self,
        scheduler: AsyncIOScheduler,
        prober: ChatProber,
        recorder: Recorder,
        endpoint_ids: dict[EndpointKey, int],
        states: dict[EndpointKey, HealthState],
        metrics: Metrics | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.metrics = metrics or Metrics()
        # Endpoints probed since this process started (readiness: every one, once).
        self.probed: set[EndpointKey] = set()
        self.all_probed = asyncio.Event()
        self.prober = prober
        self.recorder = recorder
        self.endpoint_ids = endpoint_ids
        self.states = states
        self.targets: dict[EndpointKey, Target] = {}
        self.counters = Counters()
        self.listeners: list[Listener] = []
        # Groups with no healthy endpoint: every endpoint is probed at the fast cadence
        # so the group is switched the moment any endpoint is judged up.
        self.urgent: set[str] = set()
        self._scheduled: dict[str, datetime] = {}
        # Each endpoint's place on its interval grid (absolute epoch seconds): normal runs
        # always land on the grid, so endpoints stay spread over the interval however
        # often fast re-probes pulled them off it (a burst of 1,000 probes in 2 s every
        # 10 s overloads the loop and turns healthy endpoints into timeouts).
        self._grid: dict[EndpointKey, float] = {}
        self._due: dict[str, float] = {}
        self.jobs = Jobs()
        self._shapes_saved: dict[EndpointKey, ProbeShape] = dict(prober.shapes)
        self._missed_logged_at: dict[str, float] = {}  # cause -> when last logged
        # endpoint -> (last logged failure's outcome and status, when, repeats since)
        self._failing: dict[EndpointKey, tuple[tuple[str, int | None], float, int]] = {}
        # Each endpoint's successful latencies over the last hour (seeded from the store at
        # start, then kept here): its learned deadline costs no query per probe.
        self.latencies: dict[EndpointKey, LatencyWindow] = {}
        # Requests failed at their deadline and still waiting for a late answer.
        self._late: set[asyncio.Task[None]] = set()
        # The one request per endpoint still waiting past its deadline (see probe()).
        self._pending: dict[EndpointKey, asyncio.Task[ProbeResult]] = {}
        scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)
        scheduler.add_listener(self._on_executed, EVENT_JOB_EXECUTED)

    # --- scheduling --------------------------------------------------------------------

    def add_targets(self, targets: Iterable[Target]) -> None:
        batch = list(targets)
        now = time.time()
        for index, target in enumerate(batch):
            key = (target.group, target.endpoint)
            self.targets[key] = target
            self.states.setdefault(key, HealthState())
            interval = target.policy.interval
            share = index / max(1, len(batch))
            self._grid[key] = slot(now + share * interval)
            # Not capped at the interval: with the rise confirmations that follow each
            # first probe, the start-up load must stay near the steady-state rate.
            spread = max(min(interval, STARTUP_SPREAD), len(batch) / STARTUP_RATE)
            first = now + share * spread
            self.scheduler.add_job(
                self._run,
                # The trigger's own grid is this endpoint's grid, so after an on-time run
                # APScheduler already holds the next due time (see _on_executed).
                trigger=IntervalTrigger(
                    seconds=interval,
                    start_date=datetime.fromtimestamp(self._grid[key], UTC),
                    timezone=UTC,
                ),
                args=[key],
                id=_job_id(key),
                name=_job_id(key),
                next_run_time=datetime.fromtimestamp(first, UTC),
                # Never drop a late probe (APScheduler's 1 s default would, silently);
                # collapse a backlog into one run, and never overlap one endpoint's probes.
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
                replace_existing=True,
            )

    def remove_target(self, key: EndpointKey) -> None:
        self.targets.pop(key, None)
        self.metrics.forget(*key)  # no stale series for an endpoint nobody watches
        if self.scheduler.get_job(_job_id(key)) is not None:
            self.scheduler.remove_job(_job_id(key))

    def _next_run(self, key: EndpointKey, scheduled: float, state: HealthState) -> float:
        target = self.targets[key]
        if wants_fast(state, time.time(), thresholds(target.policy)) or target.group in self.urgent:
            return scheduled + target.policy.fast_interval
        interval = target.policy.interval
        base = self._grid.get(key, scheduled)
        # The first grid slot after this run (never the same one twice).
        steps = math.floor((scheduled - base) / interval + 1e-6) + 1
        return base + max(1, steps) * interval if scheduled >= base else base

    def hurry(self, key: EndpointKey) -> None:
        """Probe this endpoint now (the failover engine wants a fresh verdict)."""
        job = self.scheduler.get_job(_job_id(key))
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    # --- the tick ----------------------------------------------------------------------

    async def _run(self, key: EndpointKey) -> None:
        # A probe cut short by shutdown is not a job failure worth logging.
        await self.jobs.run(self._tick(key))

    async def _tick(self, key: EndpointKey) -> None:
        start = time.time()
        job_id = _job_id(key)
        planned = self._scheduled.pop(job_id, None)
        scheduled = planned.timestamp() if planned else start
        lag = max(0.0, start - scheduled)
        self.counters.lags.append(lag)
        self.metrics.scheduler_lag.observe(lag)
        self.counters.last_tick = start
        target = self.targets.get(key)
        if target is None:
            return
        await self.probe(target)
        await self._keep_shape(key)
        if key not in self.targets:  # removed while probing (reload)
            return
        # Applied when APScheduler reports the run finished (see _on_executed): modifying
        # the job from inside it races max_instances=1 and a due time already past would
        # be skipped as "maximum number of running instances reached".
        self._due[job_id] = max(self._next_run(key, scheduled, self.states[key]), time.time())

    def learn(self, key: EndpointKey, samples: Iterable[tuple[float, float]]) -> None:
        """Seed an endpoint's latency window with stored (at, latency_ms) successes, oldest
        first (as Store.latencies reads them)."""
        window = self.latencies.setdefault(key, LatencyWindow())
        for at, latency_ms in samples:
            window.add(at, latency_ms)

    def deadline(self, target: Target, now: float) -> float:
        """Seconds a probe of this endpoint may stay unanswered (see domain.deadline)."""
        window = self.latencies.get((target.group, target.endpoint))
        p99, samples = window.p99(now) if window else (None, 0)
        return deadline(deadline_rule(target.policy), p99, samples)

    async def probe(self, target: Target) -> ProbeResult:
        """Probe once under the learned deadline and judge the result; a request failed at
        its deadline keeps waiting in the background, and a passing late answer is judged
        as a success when it arrives. Ticks, the re-probe before a failover and pre-flights
        all go through here."""
        limit = self.deadline(target, time.time())
        result, pending = await self.prober.probe_within(target, limit)
        state, _transition = await self.observe(target, result)
        if pending is not None:
            key = (target.group, target.endpoint)
            if key in self._pending:
                # At most one late request per endpoint: each holds a probe slot until
                # `timeout`, and a few hanging endpoints would otherwise fill every slot
                # and delay the probes of all the others. The older one is kept: it is
                # the nearest to its answer. (Keeping the newest cancelled every late
                # request one deadline after the next probe, so an endpoint that got
                # slower than two deadlines never had its answers counted and went down.)
                pending.cancel()
                return result
            self._pending[key] = pending
            failed_at = state.last_probe_at
            task = asyncio.create_task(
                self._late_answer(target, pending, failed_at), name="late-answer"
            )
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        return result

    async def _late_answer(
        self, target: Target, pending: asyncio.Task[ProbeResult], failed_at: float | None
    ) -> None:
        key = (target.group, target.endpoint)
        try:
            result = await pending
        except asyncio.CancelledError:
            return  # shutdown, or the endpoint was removed
        finally:
            if self._pending.get(key) is pending:
                del self._pending[key]
        if late_verdict(result.outcome) is not Verdict.PASS:
            return  # already failed as a timeout at the deadline
        log.info(
            "probe_answered_late",
            group=target.group,
            endpoint=target.endpoint,
            latency_ms=round(result.latency_ms or 0.0, 1),
        )
        # Its miss at the deadline no longer counts against the failure-rate window, and
        # the answer is recorded at its arrival, with its real latency (which raises the
        # deadline).
        if failed_at is not None and key in self.states:
            self.states[key] = withdraw(self.states[key], failed_at)
        await self.observe(target, replace(result, at=time.time()))

    async def _keep_shape(self, key: EndpointKey) -> None:
        """Store the probe shape an endpoint was adapted to, once per change (status shows
        it, and a restart starts from it)."""
        shape = self.prober.shapes.get(key)
        endpoint_id = self.endpoint_ids.get(key)
        if shape is None or endpoint_id is None or self._shapes_saved.get(key) == shape:
            return
        self._shapes_saved[key] = shape
        await self.recorder.call(self.recorder.store.save_probe_shape, endpoint_id, shape.as_dict())
        log.info("probe_adapted", group=key[0], endpoint=key[1], **shape.as_dict())

    async def observe(
        self, target: Target, result: ProbeResult
    ) -> tuple[HealthState, Transition | None]:
        """Judge a probe result, record it, tell the listeners. Also used for pre-flights."""
        key = (target.group, target.endpoint)
        current = self.targets.get(key)
        if current is not None and (current.base_url, current.api_key) != (
            target.base_url,
            target.api_key,
        ):
            # A probe of the endpoint's old URL (or key) that finished after a reload or a
            # key file changed it: it says nothing about the endpoint as it is now.
            return self.states.get(key, UNPROBED), None
        now = time.time()
        state, transition = judge(
            self.states.get(key, UNPROBED),
            result.outcome.verdict,
            now,
            thresholds(target.policy),
            result.latency_ms,
        )
        self.states[key] = state
        self.counters.probes += 1
        if result.outcome.verdict is Verdict.PASS and result.latency_ms is not None:
            self.latencies.setdefault(key, LatencyWindow()).add(now, result.latency_ms)
        if key not in self.probed:
            self.probed.add(key)
            if set(self.targets) <= self.probed:
                self.all_probed.set()
        self.metrics.probe(result, state.health)
        endpoint_id = self.endpoint_ids.get(key)
        if endpoint_id is not None:
            self.recorder.add(endpoint_id, result, state)
        # A logger bound per probe cost as much as judging it: bound only to log.
        if debug_enabled():
            log.debug(
                "probe_completed",
                group=target.group,
                endpoint=target.endpoint,
                outcome=result.outcome.value,
                latency_ms=round(result.latency_ms, 1) if result.latency_ms is not None else None,
                http_status=result.http_status,
            )
        if not result.ok:
            self._log_failure(key, result, state, transition)
        elif self._failing:
            self._failing.pop(key, None)
        if transition is not None:
            event = {Health.UP: "endpoint_up", Health.DOWN: "endpoint_down"}.get(transition.after)
            if event is not None:
                bound = log.bind(group=target.group, endpoint=target.endpoint)
                level = bound.warning if transition.after is Health.DOWN else bound.info
                level(event, before=transition.before.value, outcome=result.outcome.value)
        for listener in self.listeners:
            await listener(target, result, state, transition)
        return state, transition

    def _log_failure(
        self,
        key: EndpointKey,
        result: ProbeResult,
        state: HealthState,
        transition: Transition | None,
    ) -> None:
        """A failed probe is logged while it tells something: until the endpoint is down,
        and when the failure changes. The same failure of an endpoint already down is
        counted and logged once a minute (a broken standby probed every 2 s would
        otherwise be most of the log)."""
        now = time.monotonic()
        signature = (result.outcome.value, result.http_status)
        last = self._failing.get(key)
        if (
            state.health is Health.DOWN
            and transition is None
            and last is not None
            and last[0] == signature
            and now - last[1] < REPEAT_LOG_EVERY
        ):
            self._failing[key] = (signature, last[1], last[2] + 1)
            return
        repeated = last[2] if last is not None and last[0] == signature else 0
        self._failing[key] = (signature, now, 0)
        extra = {"repeated": repeated, "over_s": round(now - last[1])} if repeated and last else {}
        log.info(
            "probe_failed",
            group=key[0],
            endpoint=key[1],
            outcome=result.outcome.value,
            http_status=result.http_status,
            detail=result.detail,
            failures=state.failures,
            **extra,
        )

    # --- scheduler events --------------------------------------------------------------

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        if event.scheduled_run_times:
            self._scheduled[event.job_id] = event.scheduled_run_times[-1]

    def _on_executed(self, event: JobEvent) -> None:
        due = self._due.pop(event.job_id, None)
        if due is None:
            return
        job = self.scheduler.get_job(event.job_id)
        if job is None:
            return
        # Most runs are on time and on the grid, where APScheduler's next time is already
        # ours. A modification costs a job-store update and an extra pass of the scheduler
        # over every job (modify_job wakes it): skipped when it would change nothing.
        held = job.next_run_time
        if held is None or abs(held.timestamp() - due) > GRID_TOLERANCE:
            job.modify(next_run_time=datetime.fromtimestamp(due, UTC))

    def _on_missed(self, event: JobEvent) -> None:
        # A job still running when its next run came due. Counted always; logged once a
        # minute for each cause (under overload a line per skip would only make things
        # worse, and one cause must not hide another).
        self.counters.missed += 1
        self.metrics.missed_runs.inc()
        due = getattr(event, "scheduled_run_times", None) or [
            getattr(event, "scheduled_run_time", None)
        ]
        # How late the scheduler itself woke for the first run it could not start: a loop
        # blocked for a second wakes it a second late, a long job does not.
        late = time.time() - due[0].timestamp() if due[0] is not None else 0.0
        cause, hint = self._missed_hint(event.job_id, late)
        now = time.monotonic()
        if now - self._missed_logged_at.get(cause, -MISSED_LOG_EVERY) >= MISSED_LOG_EVERY:
            log.warning(
                "probe_runs_missed",
                job=event.job_id,
                missed_total=self.counters.missed,
                cause=cause,
                late_s=round(late, 2),
                hint=hint,
            )
            self._missed_logged_at[cause] = now

    def _missed_hint(self, job_id: str, late: float = 0.0) -> tuple[str, str]:
        """(cause, advice) from what is slow right now, not from the job's name alone:
        raising `interval` does nothing for a starved CPU, a slow database or Convai.
        `late`: how late the scheduler noticed the run was due."""
        recent = itertools.islice(reversed(self.counters.lags), RECENT_LAGS)
        lag = max(late, *recent, 0.0)
        if lag >= LATE_LAG:
            return (
                "cpu",
                f"the event loop runs late (jobs waited up to {lag:.1f}s for the loop): this "
                "host's CPU is starved; give the daemon more CPU or probe fewer endpoints "
                "per daemon",
            )
        if job_id == "sync":
            return (
                "convai",
                "the sync waits on Convai, which is slow or unreachable (see "
                "convai_sync_failed); raising interval would not help",
            )
        if job_id.startswith("probe:"):
            if self.prober.saturated:
                return (
                    "probe_slots",
                    f"all {self.prober.max_in_flight} probe slots are taken and probes queue "
                    "for one: raise probes.max_in_flight, or probe fewer endpoints per daemon",
                )
            target = next((t for k, t in self.targets.items() if _job_id(k) == job_id), None)
            if target is not None and target.policy.timeout >= 0.8 * target.policy.interval:
                return (
                    "interval",
                    f"probes of {target.group}/{target.endpoint} can take their whole timeout "
                    f"({target.policy.timeout:g}s) of a {target.policy.interval:g}s interval: "
                    "lower timeout or raise interval",
                )
            return ("probe", "a probe outlasted its interval: see that endpoint's latency")
        stalled = self.recorder.busy_for()
        if stalled >= SLOW_STORE:
            return (
                "database",
                f"the {job_id} job waits on the database (a store call has been running "
                f"{stalled:.1f}s): check the disk or the database server (storage.url)",
            )
        return ("host", "the event loop or the database is busy: see the CPU and disk of this host")

    def _on_error(self, event: JobEvent) -> None:
        self.counters.errors += 1
        exception = getattr(event, "exception", None)
        log.error("job_failed", job=event.job_id, error=repr(exception))

    # --- lifecycle ---------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Wait for probes in flight to finish (bounded), then cancel the rest."""
        await self.jobs.drain(grace)
        # Requests already failed at their deadline: nobody needs their answer now.
        for task in [*self._late, *self._pending.values()]:
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)
