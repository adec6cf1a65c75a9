"""Lock-wait bounds for tests that hold a row lock on purpose: a test that would otherwise wait forever fails."""

from __future__ import annotations

from sqlalchemy import Connection


def bound_lock_wait(connection: Connection, backend: str, seconds: int) -> None:
    """Makes `connection` give up waiting for a row lock after `seconds` (MariaDB or PostgreSQL), for the rest of
    its session. Commits, so the caller starts its own transaction afterwards."""
    if backend == "mysql":
        connection.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {int(seconds)}")
    else:
        connection.exec_driver_sql(f"SET lock_timeout = '{int(seconds)}s'")
    connection.commit()
