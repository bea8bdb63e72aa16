"""The store: every read and write of the database goes through here, synchronously.

The daemon calls it from one worker thread (see runtime.recorder), so SQLite sees a single
writer and the event loop never blocks on disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, TextIO, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Dialect,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from monitor.domain.health import Health, HealthState
from monitor.domain.latency import (
    Bucket,
    hist_percentile,
    histogram,
    merge,
    percentile,
)
from monitor.domain.outcome import ProbeResult
from monitor.store.tables import EndpointRow, MetaRow, ResultRow, RollupRow, VantageHealthRow


def _table(row: type[DeclarativeBase]) -> Table:
    return cast(Table, row.__table__)


_RESULT_KEYS = (
    "endpoint_id",
    "at",
    "ok",
    "outcome",
    "latency_ms",
    "http_status",
    "detail",
    "vantage",
    "prompt_tokens",
    "completion_tokens",
)
_HEALTH_KEYS = ("health", "successes", "failures", "health_since", "last_probe_at")


@dataclass(frozen=True)
class _BatchSql:
    """The probe batch's statements in the driver's own SQL, compiled once per store.

    The batch is written several times a second on the thread that shares the GIL (and
    often the one core) with the probes. Executed as SQLAlchemy statements, its rows went
    through SQLAlchemy's per-row parameter processing, which cost as much as SQLite's own
    work: handed to the driver as they are, a batch of 40 costs about 40% less CPU
    (benchmarks/store_batch.py: 0.82 -> 0.51 ms on SQLite). The rows hold only what the
    driver takes as is (str, int, float, bool, None), so SQLAlchemy's type processing had
    nothing to do for them.
    """

    results: str
    health: str  # the endpoints' shared health
    vantage_health: str  # one instance's own (an upsert)

    @classmethod
    def compile(cls, dialect: Dialect) -> _BatchSql:
        if dialect.positional:
            # SQLite's `?`: its driver takes `:name` from a mapping as well, so the rows
            # are mappings for every driver.
            dialect = cast("type[DefaultDialect]", type(dialect))(paramstyle="named")
        endpoints, vantages = _table(EndpointRow), _table(VantageHealthRow)
        build = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        upsert = build(vantages)
        upsert = upsert.on_conflict_do_update(
            index_elements=["endpoint_id", "vantage"],
            set_={k: upsert.excluded[k] for k in _HEALTH_KEYS},
        )
        statements = (
            (insert(_table(ResultRow)).inline(), _RESULT_KEYS),
            (
                update(endpoints).where(endpoints.c.id == bindparam("endpoint_id")),
                (*_HEALTH_KEYS, "endpoint_id"),
            ),
            (upsert, ("endpoint_id", "vantage", *_HEALTH_KEYS)),
        )
        return cls(
            *(str(s.compile(dialect=dialect, column_keys=list(keys))) for s, keys in statements)
        )


# Meta key prefix of an endpoint's adapted probe shape (a key per endpoint id): a small
# JSON document, kept out of the endpoint table so no migration is needed for it.
_SHAPE = "probe_shape:"

EndpointKey = tuple[str, str]  # (group, endpoint)
HOUR = 3600
_PRUNE_BATCH = 20_000
# Rows fetched from the driver at a time where a read is streamed (rollups, the deadlines
# learnt at start-up) rather than held whole.
_STREAM_ROWS = 10_000


class StoreError(Exception):
    """The database cannot be used; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class WindowStats:
    probes: int
    successes: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def uptime(self) -> float | None:
        """Share of probes that succeeded, 0..1; None with no probes in the window."""
        return self.successes / self.probes if self.probes else None


@dataclass(frozen=True, slots=True)
class Usage:
    """What an endpoint's probes spent over a span of time."""

    probes: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class LastProbe:
    at: float
    ok: bool
    outcome: str
    latency_ms: float | None
    http_status: int | None
    detail: str | None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `status` read while the daemon writes; NORMAL is durable across process
    # crashes (only an OS crash can lose the last commits), at a fraction of FULL's cost.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def upsert(
    session: Session,
    table: type[DeclarativeBase],
    rows: dict[str, Any] | list[dict[str, Any]],
    keys: Sequence[str],
) -> None:
    """Insert rows, or update them where `keys` match: one statement, safe to race.

    Both dialects spell it `INSERT ... ON CONFLICT DO UPDATE`; SQLAlchemy's ORM `merge`
    reads then writes, which two instances sharing PostgreSQL can interleave.
    """
    rows = [rows] if isinstance(rows, dict) else rows
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    columns = tuple(rows[0])
    cache = (dialect, table.__tablename__, tuple(keys), columns)
    statement = _UPSERTS.get(cache)
    if statement is None:
        # Built once per shape: `excluded` and the SET clause cost more than the write
        # (the probe batch upserts every vantage's health several times a second).
        build = postgresql.insert if dialect == "postgresql" else sqlite.insert
        base = build(_table(table))
        changed = {k: base.excluded[k] for k in columns if k not in keys}
        statement = base.on_conflict_do_update(index_elements=list(keys), set_=changed)
        _UPSERTS[cache] = statement
    session.execute(statement, rows)


_UPSERTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}


def exclusive(session: Session, name: str) -> None:
    """Hold a database-wide lock named `name` until the session's transaction ends.

    On PostgreSQL a transaction-scoped advisory lock, so concurrent instances take turns
    (migrations, rollups). SQLite needs none: one daemon per file, and SQLite serialises
    writers itself.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def lock_key(name: str) -> int:
    # Advisory locks are keyed by a 64-bit integer; a stable hash of a readable name.
    return zlib.crc32(f"convai-monitor:{name}".encode())


def _clean(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; an endpoint's error body can.
    return value.replace("\x00", "") if value else value


def _state(row: EndpointRow | VantageHealthRow) -> HealthState:
    return HealthState(
        health=Health(row.health),
        successes=row.successes,
        failures=row.failures,
        since=row.health_since,
        last_probe_at=row.last_probe_at,
    )


def migrations_config() -> AlembicConfig:
    config = AlembicConfig()
    # Resolved from the installed package, so an installed daemon migrates itself.
    config.set_main_option("script_location", str(files("monitor.migrations")))
    return config


@dataclass(slots=True)
class _HourFold:
    """One endpoint's raw results of one hour, folded as they are read (see rollup)."""

    probes: int = 0
    successes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))  # of the successes

    def add(
        self, ok: bool, latency: float | None, prompt: int | None, completion: int | None
    ) -> None:
        self.probes += 1
        if ok:
            self.successes += 1
            if latency is not None:
                self.latencies.append(latency)
        self.prompt_tokens += prompt or 0
        self.completion_tokens += completion or 0


class Store:
    def __init__(self, url: str, vantage: str | None = None) -> None:
        self.url = url
        # The instance writing through this store: its results and health are stored
        # under this name. None for readers (the CLI), which write no results.
        self.vantage = vantage
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path = parsed.database if self.is_sqlite else None
        # Where the database is, fit for messages: the file, or the URL without password.
        self.where = self.path if self.is_sqlite else parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if not self.is_sqlite:
            # A server can go away between uses (restart, failover): check a pooled
            # connection before handing it out, and give up connecting after a few seconds
            # rather than hanging the loop's only database thread.
            options = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._batch = _BatchSql.compile(self.engine.dialect)
        self._lock_file: TextIO | None = None

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def lock(self) -> None:
        """Claim the database for one daemon: two would both switch groups.

        An exclusive flock on `<db>.lock`, held for the life of the process (the kernel
        drops it if the process dies, even by kill -9, so a stale lock never blocks a
        restart). Other databases are shared by design; nothing is locked for them.
        """
        if not self.is_sqlite or not self.path or self.path == ":memory:":
            return
        path = f"{self.path}.lock"
        try:
            handle = open(path, "a+")  # noqa: SIM115 - held open on purpose
        except OSError as exc:
            raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise StoreError(
                f"another convai-monitor (pid {holder}) is already running on {self.path}; "
                "two daemons would both switch groups"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _fail(self, exc: SQLAlchemyError) -> StoreError:
        orig = getattr(exc, "orig", None)
        reason = str(orig) if orig is not None else type(exc).__name__
        # libpq's messages span lines ("...failed: Connection refused\n\tIs the server
        # running..."); an operator gets one.
        reason = " ".join(reason.split())
        return StoreError(f"database {self.where}: {reason}")

    # --- schema ------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there)."""
        config = migrations_config()
        try:
            with self.session() as session, session.begin():
                # Instances started together queue here; the first migrates, the others
                # then find the schema at head and do nothing.
                exclusive(session, "migrate")
                config.attributes["connection"] = session.connection()
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise self._fail(exc) from None

    def schema_current(self) -> bool:
        head = ScriptDirectory.from_config(migrations_config()).get_current_head()
        try:
            with self.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision() == head
        except OperationalError as exc:
            raise self._fail(exc) from None

    def session(self) -> Session:
        return self._session()

    # --- endpoints and health ----------------------------------------------------------

    def sync_endpoints(self, endpoints: Iterable[tuple[str, str, str]]) -> dict[EndpointKey, int]:
        """Make sure a row exists for each (group, endpoint, base_url); return their ids.

        Rows of endpoints no longer configured are kept: their history stays readable and
        comes back if the endpoint does.
        """
        wanted = list(endpoints)
        with self.session() as session, session.begin():
            # Instances starting together would insert the same new endpoints twice.
            exclusive(session, "endpoints")
            rows = {(r.group_name, r.name): r for r in session.scalars(select(EndpointRow))}
            for group, name, base_url in wanted:
                row = rows.get((group, name))
                if row is None:
                    row = EndpointRow(
                        group_name=group,
                        name=name,
                        base_url=base_url,
                        health=Health.UNKNOWN.value,
                        successes=0,
                        failures=0,
                    )
                    session.add(row)
                    rows[(group, name)] = row
                elif row.base_url != base_url:
                    # A new URL is a new endpoint as far as health goes.
                    row.base_url = base_url
                    row.health, row.successes, row.failures = Health.UNKNOWN.value, 0, 0
                    row.health_since = None
                    session.execute(
                        delete(VantageHealthRow).where(VantageHealthRow.endpoint_id == row.id)
                    )
            session.flush()
            return {(g, n): rows[(g, n)].id for g, n, _ in wanted}

    def health(self) -> dict[EndpointKey, HealthState]:
        """Each endpoint's shared health: the one the failover decisions act on."""
        with self.session() as session:
            return {(r.group_name, r.name): _state(r) for r in session.scalars(select(EndpointRow))}

    def own_health(self) -> dict[EndpointKey, HealthState]:
        """This vantage's own view where it has judged an endpoint, else the shared one (a
        restart, or an upgrade from before vantages, still remembers a down)."""
        with self.session() as session:
            states = {
                (r.group_name, r.name): _state(r) for r in session.scalars(select(EndpointRow))
            }
            if self.vantage is not None:
                own = session.execute(
                    select(EndpointRow.group_name, EndpointRow.name, VantageHealthRow)
                    .join(VantageHealthRow, VantageHealthRow.endpoint_id == EndpointRow.id)
                    .where(VantageHealthRow.vantage == self.vantage)
                )
                states.update({(g, n): _state(row) for g, n, row in own})
            return states

    def vantage_health(self) -> dict[EndpointKey, dict[str, HealthState]]:
        """Every vantage's view of every endpoint it has judged."""
        # Plain columns, not ORM rows: the leader reads this every decision tick (3,000
        # rows for three instances on 1,000 endpoints), on the thread that also writes.
        v = VantageHealthRow
        query = select(
            EndpointRow.group_name,
            EndpointRow.name,
            v.vantage,
            v.health,
            v.successes,
            v.failures,
            v.health_since,
            v.last_probe_at,
        ).join(v, v.endpoint_id == EndpointRow.id)
        views: dict[EndpointKey, dict[str, HealthState]] = {}
        with self.session() as session:
            for group, name, vantage, health, ok, failed, since, probed in session.execute(query):
                views.setdefault((group, name), {})[vantage] = HealthState(
                    Health(health), ok, failed, since, probed
                )
        return views

    def probe_shapes(self) -> dict[EndpointKey, dict[str, Any]]:
        """The request shape each endpoint's probe was adapted to (only adapted ones)."""
        with self.session() as session:
            ids = {
                i: (g, n)
                for g, n, i in session.execute(
                    select(EndpointRow.group_name, EndpointRow.name, EndpointRow.id)
                )
            }
            rows = session.scalars(select(MetaRow).where(MetaRow.key.like(f"{_SHAPE}%")))
            out: dict[EndpointKey, dict[str, Any]] = {}
            for row in rows:
                key = ids.get(int(row.key.removeprefix(_SHAPE)))
                if key is not None:
                    out[key] = json.loads(row.value)
            return out

    def save_probe_shape(self, endpoint_id: int, shape: Mapping[str, Any]) -> None:
        with self.session() as session, session.begin():
            row = {"key": f"{_SHAPE}{endpoint_id}", "value": json.dumps(dict(shape))}
            upsert(session, MetaRow, row, ("key",))

    def endpoint_ids(self) -> dict[EndpointKey, int]:
        with self.session() as session:
            rows = session.execute(select(EndpointRow.group_name, EndpointRow.name, EndpointRow.id))
            return {(g, n): i for g, n, i in rows}

    def save(
        self,
        results: Sequence[tuple[int, ProbeResult]],
        states: Mapping[int, HealthState],
        *,
        shared: bool = True,
    ) -> None:
        """Write a batch of results and the health they led to, in one transaction.

        The health is this vantage's own; `shared` also makes it the endpoints' shared
        health (the one status shows and decisions act on): only the leader's is.
        """
        if not results and not states:
            return
        health = [
            {
                "endpoint_id": endpoint_id,
                "health": s.health.value,
                "successes": s.successes,
                "failures": s.failures,
                "health_since": s.since,
                "last_probe_at": s.last_probe_at,
            }
            for endpoint_id, s in states.items()
        ]
        with self.engine.begin() as connection:
            if results:
                vantage = self.vantage
                rows = [
                    {
                        "endpoint_id": endpoint_id,
                        "at": r.at,
                        "ok": r.ok,
                        "outcome": r.outcome.value,
                        "latency_ms": r.latency_ms,
                        "http_status": r.http_status,
                        "detail": _clean(r.detail),
                        "vantage": vantage,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                    }
                    for endpoint_id, r in results
                ]
                connection.exec_driver_sql(self._batch.results, rows)
            if health and shared:
                connection.exec_driver_sql(self._batch.health, health)
            if health and self.vantage is not None:
                for row in health:
                    row["vantage"] = self.vantage
                connection.exec_driver_sql(self._batch.vantage_health, health)

    def latencies(self, since: float) -> dict[EndpointKey, tuple[array[float], array[float]]]:
        """Every successful probe since `since`, per endpoint, oldest first, as two arrays:
        the times and the latencies (ms). What an endpoint's learned deadline starts from
        after a restart. This instance's own probes only: another vantage's network path
        says nothing about ours.

        Streamed from the driver into arrays: at 2,000 endpoints an hour is 720,000 rows,
        which read whole as ORM rows into lists of tuples took about 310 MB at the peak
        (benchmarks/probe_load.py --history 3600)."""
        query = (
            select(ResultRow.endpoint_id, ResultRow.at, ResultRow.latency_ms)
            .where(
                ResultRow.at >= since,
                ResultRow.ok.is_(True),
                ResultRow.latency_ms.is_not(None),
            )
            .order_by(ResultRow.at)
        )
        if self.vantage is not None:
            query = query.where(ResultRow.vantage == self.vantage)
        by_id: dict[int, tuple[array[float], array[float]]] = {}
        with self.engine.connect() as connection:
            keys = {
                endpoint_id: (group, name)
                for endpoint_id, group, name in connection.execute(
                    select(EndpointRow.id, EndpointRow.group_name, EndpointRow.name)
                )
            }
            rows = connection.execution_options(yield_per=_STREAM_ROWS).execute(query)
            for endpoint_id, at, latency in rows:
                if latency is None:
                    continue
                series = by_id.get(endpoint_id)
                if series is None:
                    series = by_id[endpoint_id] = (array("d"), array("d"))
                series[0].append(at)
                series[1].append(latency)
        return {keys[endpoint_id]: series for endpoint_id, series in by_id.items()}

    def last_probe(self, endpoint_id: int) -> LastProbe | None:
        with self.session() as session:
            row = session.scalars(
                select(ResultRow)
                .where(ResultRow.endpoint_id == endpoint_id)
                .order_by(ResultRow.at.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return LastProbe(row.at, row.ok, row.outcome, row.latency_ms, row.http_status, row.detail)

    def recent_results(self, endpoint_id: int, limit: int) -> list[LastProbe]:
        with self.session() as session:
            rows = session.scalars(
                select(ResultRow)
                .where(ResultRow.endpoint_id == endpoint_id)
                .order_by(ResultRow.at.desc())
                .limit(limit)
            ).all()
        return [
            LastProbe(r.at, r.ok, r.outcome, r.latency_ms, r.http_status, r.detail) for r in rows
        ]

    # --- windows, rollups, retention --------------------------------------------------

    def _meta(self, session: Session, key: str) -> str | None:
        row = session.get(MetaRow, key)
        return row.value if row else None

    def beat(self, at: float, pid: int, *, stopped: bool = False) -> None:
        """The daemon's proof of life, read by `status` and `explain` (another process)."""
        value = json.dumps({"at": at, "pid": pid, "stopped": stopped})
        with self.session() as session, session.begin():
            upsert(session, MetaRow, {"key": "heartbeat", "value": value}, ("key",))

    def last_beat(self) -> dict[str, Any] | None:
        with self.session() as session:
            value = self._meta(session, "heartbeat")
        return dict(json.loads(value)) if value else None

    def rolled_until(self) -> int:
        with self.session() as session:
            value = self._meta(session, "rolled_until")
        return int(value) if value else 0

    def window(self, endpoint_id: int, seconds: float, now: float) -> WindowStats:
        """Probes, successes and latency percentiles over the last `seconds`.

        Windows up to an hour are answered exactly from raw rows. Longer ones take raw rows
        for what has not been rolled up yet (the current hour) and rollups for the hours
        before, at hour resolution and histogram precision (percentiles <= 10% high).
        """
        start = now - seconds
        with self.session() as session:
            rolled = 0 if seconds <= HOUR else int(self._meta(session, "rolled_until") or 0)
            raw_from = max(start, rolled)
            latencies = list(
                session.scalars(
                    select(ResultRow.latency_ms)
                    .where(
                        ResultRow.endpoint_id == endpoint_id,
                        ResultRow.at >= raw_from,
                        ResultRow.at <= now,
                        ResultRow.ok.is_(True),
                    )
                    .order_by(ResultRow.latency_ms)
                )
            )
            probes = (
                session.scalar(
                    select(func.count())
                    .select_from(ResultRow)
                    .where(
                        ResultRow.endpoint_id == endpoint_id,
                        ResultRow.at >= raw_from,
                        ResultRow.at <= now,
                    )
                )
                or 0
            )
            successes = len(latencies)
            # Columns, not ORM objects: a 30-day window is 720 rows per endpoint, and
            # building objects for them was most of the cost of `status`.
            rollups = (
                session.execute(
                    select(RollupRow.probes, RollupRow.successes, RollupRow.histogram).where(
                        RollupRow.endpoint_id == endpoint_id,
                        RollupRow.hour + HOUR > start,
                        RollupRow.hour < rolled,
                    )
                ).all()
                if start < rolled
                else []
            )
        values = [v for v in latencies if v is not None]
        if not rollups:
            return WindowStats(probes, successes, percentile(values, 50), percentile(values, 95))
        hist = histogram(values)
        for row in rollups:
            probes += row.probes
            successes += row.successes
            merge(hist, {int(k): n for k, n in json.loads(row.histogram).items()})
        return WindowStats(probes, successes, hist_percentile(hist, 50), hist_percentile(hist, 95))

    def hours(
        self, endpoint_id: int, start: float, now: float, *, histograms_from: float
    ) -> tuple[list[Bucket], list[tuple[float, bool, float | None]]]:
        """What was recorded from `start` to `now`: the hourly rollups, and the raw results
        (at, ok, latency_ms) not rolled up yet, both oldest first. Rollup histograms only
        for hours ending after `histograms_from`: parsing 90 days of them for a bar of
        uptime would be wasted work."""
        first_hour = int(start // HOUR) * HOUR
        with self.session() as session:
            rolled = int(self._meta(session, "rolled_until") or 0)
            rollups = session.execute(
                select(RollupRow.hour, RollupRow.probes, RollupRow.successes, RollupRow.histogram)
                .where(
                    RollupRow.endpoint_id == endpoint_id,
                    RollupRow.hour >= first_hour,
                    RollupRow.hour < rolled,
                )
                .order_by(RollupRow.hour)
            ).all()
            raw = session.execute(
                select(ResultRow.at, ResultRow.ok, ResultRow.latency_ms)
                .where(
                    ResultRow.endpoint_id == endpoint_id,
                    ResultRow.at >= max(start, rolled),
                    ResultRow.at <= now,
                )
                .order_by(ResultRow.at)
            ).all()
        hours = [
            Bucket(
                hour,
                HOUR,
                probes,
                successes,
                {int(k): n for k, n in json.loads(text).items()}
                if hour + HOUR > histograms_from
                else {},
            )
            for hour, probes, successes, text in rollups
        ]
        return hours, [(at, ok, latency) for at, ok, latency in raw]

    def usage(self, endpoint_id: int, start: float, now: float) -> Usage:
        """Probes and tokens from `start` to `now`: rollups for the hours already folded
        (whole hours, so up to an hour more than asked at the start), raw rows after."""
        with self.session() as session:
            rolled = int(self._meta(session, "rolled_until") or 0)
            first_hour = int(start // HOUR) * HOUR
            folded = session.execute(
                select(
                    func.coalesce(func.sum(RollupRow.probes), 0),
                    func.coalesce(func.sum(RollupRow.prompt_tokens), 0),
                    func.coalesce(func.sum(RollupRow.completion_tokens), 0),
                ).where(
                    RollupRow.endpoint_id == endpoint_id,
                    RollupRow.hour >= first_hour,
                    RollupRow.hour < rolled,
                )
            ).one()
            raw = session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(ResultRow.prompt_tokens), 0),
                    func.coalesce(func.sum(ResultRow.completion_tokens), 0),
                ).where(
                    ResultRow.endpoint_id == endpoint_id,
                    ResultRow.at >= max(start, rolled),
                    ResultRow.at <= now,
                )
            ).one()
        return Usage(
            probes=int(folded[0]) + int(raw[0]),
            prompt_tokens=int(folded[1]) + int(raw[1] or 0),
            completion_tokens=int(folded[2]) + int(raw[2] or 0),
        )

    def rollup(self, now: float) -> int:
        """Fold every complete hour not yet rolled up into rollups; return hours folded."""
        current_hour = int(now // HOUR) * HOUR
        folded = 0
        with self.session() as session, session.begin():
            exclusive(session, "rollup")
            rolled = int(self._meta(session, "rolled_until") or 0)
            if rolled == 0:
                first = session.scalar(select(func.min(ResultRow.at)))
                if first is None:
                    return 0
                rolled = int(first // HOUR) * HOUR
            hour = rolled
            while hour < current_hour:
                # Streamed and folded row by row, latencies kept as C doubles: an hour at
                # 2,000 endpoints is 720,000 rows, and buffered with a list of latency
                # floats per endpoint it took about 90 MB at its peak, every hour.
                rows = session.execute(
                    select(
                        ResultRow.endpoint_id,
                        ResultRow.ok,
                        ResultRow.latency_ms,
                        ResultRow.prompt_tokens,
                        ResultRow.completion_tokens,
                    ).where(ResultRow.at >= hour, ResultRow.at < hour + HOUR),
                    execution_options={"yield_per": _STREAM_ROWS},
                )
                folds: dict[int, _HourFold] = {}
                for endpoint_id, ok, latency, prompt, completion in rows:
                    fold = folds.get(endpoint_id)
                    if fold is None:
                        fold = folds[endpoint_id] = _HourFold()
                    fold.add(ok, latency, prompt, completion)
                for endpoint_id, fold in folds.items():
                    counts = histogram(fold.latencies)
                    upsert(
                        session,
                        RollupRow,
                        {
                            "endpoint_id": endpoint_id,
                            "hour": hour,
                            "probes": fold.probes,
                            "successes": fold.successes,
                            "histogram": json.dumps(counts, separators=(",", ":")),
                            "prompt_tokens": fold.prompt_tokens,
                            "completion_tokens": fold.completion_tokens,
                        },
                        ("endpoint_id", "hour"),
                    )
                hour += HOUR
                folded += 1
            upsert(session, MetaRow, {"key": "rolled_until", "value": str(hour)}, ("key",))
        return folded

    def prune(self, now: float, retention: float, rollup_retention: float) -> int:
        """Delete raw results older than `retention` (in short batches); return rows removed."""
        removed = 0
        cutoff = now - retention
        while True:
            with self.session() as session, session.begin():
                ids = select(ResultRow.id).where(ResultRow.at < cutoff).limit(_PRUNE_BATCH)
                result = session.execute(delete(ResultRow).where(ResultRow.id.in_(ids)))
                count = int(getattr(result, "rowcount", 0) or 0)
            removed += count
            if count < _PRUNE_BATCH:
                break
        with self.session() as session, session.begin():
            session.execute(delete(RollupRow).where(RollupRow.hour < now - rollup_retention))
        return removed

    def result_count(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(ResultRow)) or 0
