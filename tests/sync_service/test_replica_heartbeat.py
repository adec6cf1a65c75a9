"""Replica heartbeats (sync_replicas): two replicas heartbeating at once never wait on each other's rows."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, select

from sync_service.leases import LeaseSettings, PoolLeases
from sync_service.store.models import VERSION_TABLE, ReplicaRow
from tests.harness.db_locks import bound_lock_wait
from xsha_common.db import create_engine_for, upgrade_to_head, write_transaction
from xsha_common.leases import db_now

_LOCK_WAIT_SECONDS = 2


def _heartbeat(leases: PoolLeases) -> None:
    with write_transaction(leases.engine) as connection:
        leases._heartbeat(connection, db_now(connection))


@pytest.fixture
def engine(db_url: str, db_backend: str) -> Any:
    if db_backend == "sqlite":
        pytest.skip("SQLite means one replica: its write transactions never overlap")
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url, pool_size=4)
    yield engine
    engine.dispose()


def test_a_heartbeat_takes_no_lock_on_a_live_replicas_row(engine: Any, db_backend: str) -> None:
    """Replica b has updated its own row and not committed yet; replica a's heartbeat, which also forgets
    replicas dead long ago, must neither wait for b's row nor lose the dead one. (A range DELETE on expire_time
    locked every row it scanned on MariaDB, so two replicas' heartbeats deadlocked.)"""
    settings = LeaseSettings(period=10.0)
    replica_a, replica_b = PoolLeases(engine, "a", settings), PoolLeases(engine, "b", settings)
    _heartbeat(replica_a)
    _heartbeat(replica_b)
    with engine.connect() as connection_b:
        transaction_b = connection_b.begin()
        replica_b._heartbeat(connection_b, db_now(connection_b))  # b's row stays locked until b ends
        try:
            with engine.begin() as connection:
                long_dead = db_now(connection) - 1_000 * settings.period
                row = {"replica_id": "dead", "address": "", "expire_time": long_dead, "start_time": 0.0}
                connection.execute(insert(ReplicaRow), [row])
            with engine.connect() as connection_a:
                bound_lock_wait(connection_a, db_backend, _LOCK_WAIT_SECONDS)
                with connection_a.begin():
                    live = replica_a._heartbeat(connection_a, db_now(connection_a))
        finally:
            transaction_b.rollback()

    assert live == 2
    with engine.connect() as connection:
        remaining = sorted(connection.execute(select(ReplicaRow.replica_id)).scalars())
    assert remaining == sorted([replica_a.holder, replica_b.holder])  # the long-dead replica is forgotten
