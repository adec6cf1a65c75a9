"""LeaseTable.renew_all: one round renews exactly the leases a holder still holds at their epochs, on every
backend, whatever their number."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Column, Double, Engine, Integer, MetaData, String, Table, select, update

from tests.harness.db_locks import bound_lock_wait
from xsha_common.db import write_transaction
from xsha_common.leases import LeaseTable, db_now

metadata = MetaData()
lease_rows = Table(
    "test_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("expire_time", Double, nullable=False),
    Column("update_time", Double, nullable=False),
)
LEASES = LeaseTable(lease_rows, "name", "owner", "epoch", "expire_time", touch="update_time")
PERIOD = 30.0
_LOCK_WAIT_SECONDS = 2


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    """The shared fresh-database engine with this module's tables (the database goes with the test)."""
    metadata.create_all(db_engine)
    return db_engine


def _take(engine: Engine, names: list[str], holder: str) -> dict[str, int]:
    """`holder` takes each (new) lease; returns name -> epoch."""
    epochs: dict[str, int] = {}
    with write_transaction(engine) as connection:
        for name in names:
            epoch = LEASES.acquire(connection, name, holder, PERIOD)
            assert epoch is not None
            epochs[name] = epoch
    return epochs


def _expiries(engine: Engine) -> dict[str, tuple[str, int, float]]:
    with engine.connect() as connection:
        return {
            str(row.name): (str(row.owner), int(row.epoch), float(row.expire_time))
            for row in connection.execute(select(lease_rows))
        }


def test_renew_all_extends_the_held_leases_and_reports_the_taken_over_ones(engine: Engine) -> None:
    mine = _take(engine, ["a", "b", "c", "d"], "me")
    _take(engine, ["z"], "other")
    with write_transaction(engine) as connection:
        # "b" was taken over (another holder, epoch + 1); "c" was released, then taken by us again at a new epoch,
        # so the epoch this round expects is stale.
        connection.execute(update(lease_rows).where(lease_rows.c.name == "b").values(owner="other", epoch=2))
        LEASES.release(connection, "c", "me", mine["c"])
        assert LEASES.acquire(connection, "c", "me", PERIOD) == mine["c"] + 1
    before = _expiries(engine)

    with write_transaction(engine) as connection:
        now = db_now(connection) + 100.0
        renewed = LEASES.renew_all(connection, "me", mine, PERIOD, now)

    assert renewed == {"a", "d"}
    after = _expiries(engine)
    for name in ("a", "d"):
        owner, epoch, expire = after[name]
        assert (owner, epoch) == ("me", mine[name])
        assert expire == pytest.approx(now + PERIOD)
    for name in ("b", "c", "z"):  # not extended: taken over, held at another epoch, another holder's
        assert after[name] == before[name]


def test_renew_all_handles_more_leases_than_one_statement_takes(engine: Engine) -> None:
    names = [f"pool-{i:04d}" for i in range(620)]
    mine = _take(engine, names, "me")
    with write_transaction(engine) as connection:
        lost = {"pool-0007", "pool-0300", "pool-0619"}
        connection.execute(update(lease_rows).where(lease_rows.c.name.in_(lost)).values(owner="other"))
        now = db_now(connection) + 100.0
        renewed = LEASES.renew_all(connection, "me", mine, PERIOD, now)

    assert renewed == set(names) - lost
    after = _expiries(engine)
    assert all(after[name][2] == pytest.approx(now + PERIOD) for name in renewed)
    assert all(after[name][2] < now for name in lost)


def test_renew_all_with_nothing_held_writes_nothing(engine: Engine) -> None:
    _take(engine, ["a"], "me")
    before = _expiries(engine)
    with write_transaction(engine) as connection:
        assert LEASES.renew_all(connection, "me", {}, PERIOD, db_now(connection) + 100.0) == set()
    assert _expiries(engine) == before


def test_renew_all_locks_the_leases_in_key_order(engine: Engine, db_backend: str) -> None:
    """A fenced write locks its pools' leases in key order. A renewal that meets one of them locked must wait
    holding only the leases before it, so the write can still lock a later one: locked in the table's physical
    order instead (c before b here), the two would wait on each other until the deadlock detector stepped in."""
    if db_backend == "sqlite":
        pytest.skip("SQLite: a writer holds the whole database, so writers never interleave their locks")
    mine = _take(engine, ["c", "b", "a"], "me")  # inserted, so stored, in this order
    renewed: list[set[str]] = []

    def renew() -> None:
        with write_transaction(engine) as connection:
            renewed.append(LEASES.renew_all(connection, "me", mine, PERIOD, db_now(connection) + 100.0))

    with engine.connect() as writer:
        bound_lock_wait(writer, db_backend, _LOCK_WAIT_SECONDS)
        with writer.begin():
            LEASES.holds(writer, "b", "me", mine["b"])
            renewer = threading.Thread(target=renew)
            renewer.start()
            time.sleep(0.5)  # the renewal reaches "b" and waits for it
            assert LEASES.holds(writer, "c", "me", mine["c"])  # not held by the waiting renewal
        renewer.join(10)
    assert renewed == [{"a", "b", "c"}]
