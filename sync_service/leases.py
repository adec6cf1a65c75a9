"""Pools shared among sync_service replicas through database leases (SPEC section 7).

Each replica heartbeats a row in `sync_replicas` and, every `period / 3`, renews the pool leases it holds
(`sync_pool_leases`), counts the live replicas, and claims free or expired pools up to its fair share
(ceil(pools / live replicas)), giving back what it holds beyond it. Taking a lease bumps its epoch; every batch a
watcher writes checks (holder, epoch) under the lease's row lock first (`check_fence`), so a replica that was paused
past its lease and then resumes has its writes refused (StaleWatcherError) and steps down for that pool.
All expiry comparisons use the database's clock.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import ColumnElement, Connection, Engine, Table, delete, exists, func, select, update
from sqlalchemy.orm import Session

from sync_service.store.models import PoolLeaseRow, ReplicaRow
from xsha_common.db import write_transaction
from xsha_common.leases import LeaseTable, db_now, holder_id, insert_ignore

log = logging.getLogger(__name__)

LEASES = LeaseTable(
    cast(Table, PoolLeaseRow.__table__), "cluster_id", "owner", "epoch", "expire_time", touch="update_time"
)
_REPLICAS = cast(Table, ReplicaRow.__table__)
# Replica rows dead this many lease periods are deleted (they no longer count either way).
_FORGET_AFTER_PERIODS = 30


@dataclass(frozen=True)
class LeaseSettings:
    period: float = 10.0

    @property
    def renew_interval(self) -> float:
        return self.period / 3


@dataclass
class LeasePlan:
    """The outcome of one lease round: pools held (cluster_id -> epoch), pools to give back once their watchers
    stopped, pools lost to another replica, and each pool's current holder (for status)."""

    held: dict[str, int] = field(default_factory=dict)
    release: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    holders: dict[str, str] = field(default_factory=dict)
    live_replicas: int = 1
    share: int = 0


def check_fence(session: Session, cluster_id: str, holder: str, epoch: int) -> bool:
    """At the start of a batch's transaction: does `holder` still hold the pool's lease at `epoch`? Locks the lease
    row until commit, so a takeover waits for this batch, and a batch after a takeover is refused."""
    return LEASES.holds(session.connection(), cluster_id, holder, epoch)


def lease_held(cluster_id: str, holder: str, epoch: int) -> ColumnElement[bool]:
    """A condition for other writes (sync status): true while `holder` holds the pool's lease at `epoch`."""
    return exists().where(
        PoolLeaseRow.cluster_id == cluster_id, PoolLeaseRow.owner == holder, PoolLeaseRow.epoch == epoch
    )


class PoolLeases:
    """This replica's pool leases. Not thread-safe: the supervisor calls it under its lock."""

    def __init__(
        self, engine: Engine, replica_id: str, settings: LeaseSettings, *, address: str = "", single: bool = False
    ) -> None:
        self.engine = engine
        self.holder = holder_id(replica_id)
        self.settings = settings
        self.address = address
        # SQLite: this is the only replica (a lock file proves it), so a dead predecessor's leases are taken at once.
        self.single = single
        self.held: dict[str, int] = {}
        self.holders: dict[str, str] = {}
        self.stale_refusals = 0
        self._lock = threading.Lock()

    def _heartbeat(self, connection: Connection, now: float) -> int:
        expire = now + self.settings.period
        result = connection.execute(
            update(_REPLICAS)
            .where(_REPLICAS.c.replica_id == self.holder)
            .values(expire_time=expire, address=self.address)
        )
        if result.rowcount != 1:
            insert_ignore(
                connection,
                _REPLICAS,
                [{"replica_id": self.holder, "address": self.address, "expire_time": expire, "start_time": now}],
            )
        # Replicas dead long ago are found by a plain read and deleted by key. A DELETE ranging over expire_time
        # locked every row it scanned on MariaDB, including the row another replica's heartbeat had just updated,
        # and two heartbeats deadlocked.
        cutoff = now - _FORGET_AFTER_PERIODS * self.settings.period
        forgotten = sorted(
            connection.execute(select(_REPLICAS.c.replica_id).where(_REPLICAS.c.expire_time < cutoff)).scalars()
        )
        if forgotten:
            connection.execute(
                delete(_REPLICAS).where(_REPLICAS.c.replica_id.in_(forgotten), _REPLICAS.c.expire_time < cutoff)
            )
        live = connection.execute(
            select(func.count()).select_from(_REPLICAS).where(_REPLICAS.c.expire_time > now)
        ).scalar_one()
        return max(1, int(live))

    def round(self, cluster_ids: list[str]) -> LeasePlan:
        """Heartbeat, renew, rebalance. Pools in `release` are still held: stop their watchers, then `release`."""
        period = self.settings.period
        plan = LeasePlan()
        registered = sorted(set(cluster_ids))
        with write_transaction(self.engine) as connection:
            now = db_now(connection)
            plan.live_replicas = 1 if self.single else self._heartbeat(connection, now)
            renewed = LEASES.renew_all(connection, self.holder, self.held, period, now)
            for cluster_id, epoch in sorted(self.held.items()):
                if cluster_id in renewed:
                    plan.held[cluster_id] = epoch
                else:
                    plan.lost.append(cluster_id)
        plan.share = math.ceil(len(registered) / plan.live_replicas) if registered else 0
        # Deregistered pools are given back; beyond the fair share, the last ones (by id) are given back.
        keep = [cluster_id for cluster_id in sorted(plan.held) if cluster_id in set(registered)]
        for cluster_id in [c for c in plan.held if c not in set(keep)] + keep[plan.share :]:
            plan.release[cluster_id] = plan.held[cluster_id]
        wanted = plan.share - (len(keep) - len(keep[plan.share :]))
        if wanted > 0:
            plan.held.update(self._claim(registered, wanted))
        with self.engine.connect() as connection:
            plan.holders = {
                str(row[0]): str(row[1])
                for row in connection.execute(select(PoolLeaseRow.cluster_id, PoolLeaseRow.owner))
            }
        self.held = dict(plan.held)
        self.holders = plan.holders
        for cluster_id in plan.lost:
            log.warning("pool lease lost to another replica; stepping down", extra={"cluster_id": cluster_id})
        return plan

    def _claim(self, registered: list[str], wanted: int) -> dict[str, int]:
        """Take up to `wanted` free or expired pool leases (SKIP LOCKED: replicas claiming at once do not queue
        behind each other's row locks)."""
        claimed: dict[str, int] = {}
        with write_transaction(self.engine) as connection:
            LEASES.ensure_rows(connection, [c for c in registered if c not in self.holders])
            now = db_now(connection)
            table = LEASES.table
            query = (
                select(table.c.cluster_id, table.c.epoch)
                .where(table.c.cluster_id.in_(registered), table.c.owner != self.holder)
                .order_by(table.c.cluster_id)
            )
            if not self.single:
                query = query.where((table.c.owner == "") | (table.c.expire_time < now))
            if connection.dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            for cluster_id, epoch in connection.execute(query).all():
                if len(claimed) >= wanted:
                    break
                if LEASES.take(connection, cluster_id, self.holder, int(epoch), self.settings.period, now):
                    claimed[str(cluster_id)] = int(epoch) + 1
        for cluster_id, epoch in claimed.items():
            log.info("pool lease acquired", extra={"cluster_id": cluster_id, "epoch": epoch, "holder": self.holder})
        return claimed

    def release(self, cluster_id: str, epoch: int) -> None:
        self.held.pop(cluster_id, None)
        try:
            with write_transaction(self.engine) as connection:
                LEASES.release(connection, cluster_id, self.holder, epoch)
            log.info("pool lease released", extra={"cluster_id": cluster_id, "epoch": epoch})
        except Exception:  # it expires by itself
            log.warning("could not release a pool lease", extra={"cluster_id": cluster_id}, exc_info=True)

    def forget(self, cluster_id: str) -> None:
        """A watcher found its lease taken over (a refused write): the pool is no longer ours."""
        self.held.pop(cluster_id, None)

    def retire(self) -> None:
        """Shutdown: give every lease back and leave the replica table, so others take over at once."""
        for cluster_id, epoch in sorted(self.held.items()):
            self.release(cluster_id, epoch)
        try:
            with write_transaction(self.engine) as connection:
                connection.execute(delete(_REPLICAS).where(_REPLICAS.c.replica_id == self.holder))
        except Exception:
            log.warning("could not leave the replica table", exc_info=True)

    def owner_of(self, cluster_id: str) -> str:
        return self.holders.get(cluster_id, "")
