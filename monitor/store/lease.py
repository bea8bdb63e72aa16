"""The leader lease and instance heartbeats, kept in the shared database.

One row names the leader, its fencing token and when the lease lapses. Every time and
expiry is the database's own clock (never a host's), so clock skew between instances does
not matter: whoever takes or renews the lease asks the database what time it is inside
the same locked transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from monitor import __version__
from monitor.store.store import Store, upsert
from monitor.store.tables import InstanceRow, LeaseRow

LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str | None
    token: int
    expires_at: float
    now: float  # the database's clock when this was read

    @property
    def live(self) -> bool:
        return self.holder is not None and self.expires_at > self.now


@dataclass(frozen=True, slots=True)
class Instance:
    name: str
    version: str
    started_at: float
    heartbeat_at: float
    isolated: bool = False


def db_now(session: Session) -> float:
    """Epoch seconds by the database's clock."""
    if session.get_bind().dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the transaction's start.
        query = "SELECT extract(epoch FROM clock_timestamp())"
    else:
        query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    return float(session.execute(sql_text(query)).scalar_one())


def current(session: Session, token: int) -> bool:
    """Inside a write's transaction: is `token` the live lease's? The row is share-locked
    until the write commits, so the lease cannot change hands in between."""
    row = session.scalars(
        select(LeaseRow).where(LeaseRow.name == LEADER).with_for_update(read=True)
    ).one()
    return row.token == token and row.holder is not None and row.expires_at > db_now(session)


class Leases:
    def __init__(self, store: Store) -> None:
        self.store = store

    def acquire(self, name: str, ttl: float, started_at: float, *, isolated: bool = False) -> Lease:
        """Take the lease if it is free or lapsed, renew it if `name` holds it; record a
        heartbeat either way. Returns the lease as it stands after this call.

        An isolated instance (it reaches neither the endpoints nor Convai) steps aside
        while another live instance is not isolated: it could switch nothing anyway.
        """
        with self.store.session() as session, session.begin():
            row = session.scalars(
                select(LeaseRow).where(LeaseRow.name == LEADER).with_for_update()
            ).one()
            now = db_now(session)
            if isolated and self._better(session, name, now - ttl):
                if row.holder == name:
                    row.holder, row.expires_at = None, now
            elif row.holder == name and row.expires_at > now:
                row.expires_at, row.renewed_at = now + ttl, now
            elif row.holder is None or row.expires_at <= now:
                # A new term, even for the same holder after a lapse: whatever it started
                # before may have been taken over and must not complete.
                row.holder, row.token = name, row.token + 1
                row.expires_at, row.renewed_at = now + ttl, now
            upsert(
                session,
                InstanceRow,
                {
                    "name": name,
                    "version": __version__,
                    "started_at": started_at,
                    "heartbeat_at": now,
                    "isolated": isolated,
                },
                ("name",),
            )
            return Lease(row.holder, row.token, row.expires_at, now)

    @staticmethod
    def _better(session: Session, name: str, alive_since: float) -> bool:
        """Another instance, alive within the lease's time, that is not isolated."""
        found = session.scalars(
            select(InstanceRow.name)
            .where(InstanceRow.name != name)
            .where(InstanceRow.heartbeat_at > alive_since)
            .where(InstanceRow.isolated.is_(False))
            .limit(1)
        ).first()
        return found is not None

    def release(self, name: str, token: int) -> bool:
        """Give the lease up at shutdown (another instance takes over at once)."""
        with self.store.session() as session, session.begin():
            row = session.scalars(
                select(LeaseRow).where(LeaseRow.name == LEADER).with_for_update()
            ).one()
            if row.holder != name or row.token != token:
                return False
            row.holder, row.expires_at = None, db_now(session)
            return True

    def read(self) -> tuple[Lease, list[Instance]]:
        with self.store.session() as session:
            row = session.get_one(LeaseRow, LEADER)
            lease = Lease(row.holder, row.token, row.expires_at, db_now(session))
            instances = [
                Instance(r.name, r.version, r.started_at, r.heartbeat_at, r.isolated)
                for r in session.scalars(select(InstanceRow).order_by(InstanceRow.name))
            ]
        return lease, instances
