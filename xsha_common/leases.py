"""Database leases with fencing epochs, shared by sync_service (one lease per pool) and ha_service (one lease for
the controller).

A lease row holds (key, holder, epoch, expire time). Expiry is compared with the database's clock (`db_now`), never
a replica's, so clock skew between replicas does not matter. Taking a lease bumps the epoch under the row lock; the
holder proves it still owns the lease by holder *and* epoch, so a replica that was paused past its expiry and then
wakes up is refused (the new holder bumped the epoch). Rows are never deleted, so epochs only grow.

SQLite means one replica: `SqliteReplicaLock` holds an exclusive lock file next to the database for the process's
lifetime, and a second replica on the same file is refused at start-up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Column, Connection, Engine, Select, Table, bindparam, select, text, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url

from xsha_common.db import write_transaction

log = logging.getLogger(__name__)

# Leases renewed per statement by `renew_all`: two binds each, well under every backend's bind limit.
_RENEW_CHUNK = 250


class ReplicaRefusedError(RuntimeError):
    """Another replica already runs on this (SQLite) database: SQLite means one replica."""


def holder_id(replica_id: str) -> str:
    """A lease holder name unique to this process incarnation (a restarted replica with the same configured name
    must not inherit its previous life's leases)."""
    return f"{replica_id}#{secrets.token_hex(4)}"


def db_now(connection: Connection) -> float:
    """The database server's clock, as epoch seconds."""
    name = connection.dialect.name
    if name == "postgresql":
        query = "SELECT EXTRACT(EPOCH FROM clock_timestamp())"
    elif name in ("mysql", "mariadb"):
        query = "SELECT UNIX_TIMESTAMP(NOW(6))"
    else:
        query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    return float(connection.execute(text(query)).scalar_one())


def insert_ignore(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows whose key may already exist, leaving existing rows alone (INSERT IGNORE / ON CONFLICT DO
    NOTHING), so concurrent replicas creating the same row never fail."""
    if not rows:
        return
    name = connection.dialect.name
    if name == "postgresql":
        connection.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    elif name in ("mysql", "mariadb"):
        connection.execute(mysql.insert(table).prefix_with("IGNORE"), rows)
    else:
        connection.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


@dataclass(frozen=True)
class LeaseTable:
    """Where the leases live: a table and the names of its key, holder, epoch and expire-time columns (epoch
    seconds, double). `defaults` fill the table's other NOT NULL columns when a lease row is created; `touch`
    names a column set to the database time on each lease write."""

    table: Table
    key: str
    holder: str
    epoch: str
    expire: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    touch: str = ""

    def column(self, name: str) -> Column[Any]:
        return self.table.c[name]

    def ensure_rows(self, connection: Connection, keys: list[str]) -> None:
        insert_ignore(
            connection,
            self.table,
            [
                {self.key: key, self.holder: "", self.epoch: 0, self.expire: 0.0, **self.defaults}
                | ({self.touch: 0.0} if self.touch else {})
                for key in keys
            ],
        )

    def _stamp(self, values: dict[str, Any], now: float) -> dict[str, Any]:
        if self.touch:
            values[self.touch] = now
        return values

    def take(self, connection: Connection, key: str, holder: str, epoch: int, period: float, now: float) -> bool:
        """Take a lease seen at `epoch` (free or expired): conditional on the epoch, so two replicas racing for it
        cannot both win. The new epoch is `epoch + 1`."""
        result = connection.execute(
            update(self.table)
            .where(self.column(self.key) == key, self.column(self.epoch) == epoch)
            .values(self._stamp({self.holder: holder, self.epoch: epoch + 1, self.expire: now + period}, now))
        )
        return result.rowcount == 1

    def renew(self, connection: Connection, key: str, holder: str, epoch: int, period: float, now: float) -> bool:
        """Extend a lease we hold; False when it was taken over (the epoch moved on)."""
        return key in self.renew_all(connection, holder, {key: epoch}, period, now)

    def renew_all(
        self, connection: Connection, holder: str, epochs: Mapping[str, int], period: float, now: float
    ) -> set[str]:
        """`renew` for every lease `holder` holds (key -> epoch), in two statements per `_RENEW_CHUNK` leases
        rather than one per lease; returns the keys renewed (the others were taken over). On SQLite a round of
        200 single renewals held the one write lock for 50-200 ms, and every pool's event batches queued behind
        it.

        The rows are locked first, in key order, as a fenced write locks its leases (`holds`, in key order within a
        group): an UPDATE locks rows in whatever order its scan meets them, and on PostgreSQL one that crossed a
        group's locks waited a whole `deadlock_timeout` (1 s) before either could go on."""
        renewed: set[str] = set()
        key, epoch = self.column(self.key), self.column(self.epoch)
        locking = connection.dialect.name != "sqlite"  # SQLite: the transaction holds the database's write lock
        items = sorted(epochs)
        for start in range(0, len(items), _RENEW_CHUNK):
            chunk = items[start : start + _RENEW_CHUNK]
            query = select(key, epoch).where(self.column(self.holder) == holder, key.in_(chunk)).order_by(key)
            # Only this holder writes its name into a row, and the rows stay locked until commit: those naming it
            # at the expected epoch are exactly the leases still held.
            held = [
                str(found_key)
                for found_key, found_epoch in connection.execute(query.with_for_update() if locking else query)
                if epochs[str(found_key)] == int(found_epoch)
            ]
            if held:
                connection.execute(
                    update(self.table)
                    .where(self.column(self.holder) == holder, key.in_(held))
                    .values(self._stamp({self.expire: now + period}, now))
                )
                renewed.update(held)
        return renewed

    def release(self, connection: Connection, key: str, holder: str, epoch: int) -> bool:
        """Give a lease up at once (the epoch stays, so the next holder's is higher)."""
        now = db_now(connection)
        result = connection.execute(
            update(self.table)
            .where(
                self.column(self.key) == key,
                self.column(self.holder) == holder,
                self.column(self.epoch) == epoch,
            )
            .values(self._stamp({self.holder: "", self.expire: 0.0}, now))
        )
        return result.rowcount == 1

    def holds(self, connection: Connection, key: str, holder: str, epoch: int) -> bool:
        """Whether `holder` still holds the lease at `epoch`, locking the row until the caller's transaction ends:
        a takeover waits for a write already checked, and a write after a takeover is refused."""
        query = self._holds_query if connection.dialect.name == "sqlite" else self._holds_query_locking
        row = connection.execute(query, {"lease_key": key}).first()
        return row is not None and row[0] == holder and int(row[1]) == epoch

    # Built once: `holds` runs in every fenced write transaction.
    @cached_property
    def _holds_query(self) -> Select[Any]:
        return select(self.column(self.holder), self.column(self.epoch)).where(
            self.column(self.key) == bindparam("lease_key")
        )

    @cached_property
    def _holds_query_locking(self) -> Select[Any]:
        return self._holds_query.with_for_update()

    def acquire(
        self, connection: Connection, key: str, holder: str, period: float, *, force: bool = False
    ) -> int | None:
        """Take the lease when free or expired (or always, with `force`); the new epoch, or None when a live
        holder has it."""
        self.ensure_rows(connection, [key])
        now = db_now(connection)
        query = select(self.column(self.holder), self.column(self.epoch), self.column(self.expire)).where(
            self.column(self.key) == key
        )
        if connection.dialect.name != "sqlite":
            query = query.with_for_update()
        row = connection.execute(query).first()
        if row is None:
            return None
        current_holder, epoch, expire = str(row[0]), int(row[1]), float(row[2] or 0.0)
        if current_holder and expire > now and not force:
            return None
        return epoch + 1 if self.take(connection, key, holder, epoch, period, now) else None


class SingleActiveLease:
    """One lease, one active holder among replicas: a thread takes it when free or expired, renews it every
    `period / 3`, and calls `on_acquired` / `on_lost` on each change. A renewal that has not succeeded for a
    whole period counts as lost (we cannot prove we still hold it)."""

    def __init__(
        self,
        engine: Engine,
        spec: LeaseTable,
        key: str,
        holder: str,
        *,
        period: float,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[], None],
        force: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.engine = engine
        self.spec = spec
        self.key = key
        self.holder = holder
        self.period = period
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.force = force
        self._monotonic = clock or time.monotonic
        self.epoch: int | None = None
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        with self._lock:
            return self.epoch is not None and self._monotonic() - self._renewed_at < self.period

    def start(self) -> None:
        self.step()  # a lone replica becomes active before start() returns
        self._thread = threading.Thread(target=self._run, name=f"xsha-lease-{self.key}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            epoch, self.epoch = self.epoch, None
        if epoch is not None:
            self.on_lost()
            try:
                with write_transaction(self.engine) as connection:
                    self.spec.release(connection, self.key, self.holder, epoch)
            except Exception:  # it expires by itself
                log.warning("could not release the %s lease", self.key, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period / 3):
            try:
                self.step()
            except Exception:
                log.warning("lease %s: renewal failed; retrying", self.key, exc_info=True)
                if self.epoch is not None and not self.active:
                    self._lose()

    def _lose(self) -> None:
        with self._lock:
            self.epoch = None
        log.warning("lease %s lost; standing by", self.key, extra={"holder": self.holder})
        self.on_lost()

    def step(self) -> None:
        started = self._monotonic()
        if self.epoch is not None:
            with write_transaction(self.engine) as connection:
                renewed = self.spec.renew(
                    connection, self.key, self.holder, self.epoch, self.period, db_now(connection)
                )
            if renewed:
                with self._lock:
                    self._renewed_at = started
            else:
                self._lose()
            return
        with write_transaction(self.engine) as connection:
            epoch = self.spec.acquire(connection, self.key, self.holder, self.period, force=self.force)
        self.force = False  # only the first take may ignore a (dead) previous holder
        if epoch is not None:
            with self._lock:
                self.epoch = epoch
                self._renewed_at = started
            log.info("lease %s acquired", self.key, extra={"holder": self.holder, "epoch": epoch})
            self.on_acquired(epoch)


class SqliteReplicaLock:
    """An exclusive lock on `<database>.<service>.lock`, held while the process runs: SQLite means one replica."""

    def __init__(self, database_url: str, service: str) -> None:
        self.path: Path | None = None
        self.database = ""
        self._file: TextIO | None = None
        url = make_url(database_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return
        self.database = url.database
        self.path = Path(f"{url.database}.{service}.lock")

    def acquire(self) -> SqliteReplicaLock:
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the process's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            other = handle.read().strip()
            handle.close()
            raise ReplicaRefusedError(
                f"another replica ({other or 'unknown'}) already runs on the SQLite database "
                f"{self.database}: SQLite supports one replica; use MariaDB or "
                "PostgreSQL to run several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.uname().nodename}:{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
