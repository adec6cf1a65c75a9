"""BulkWriter: an executemany through the driver stores exactly what `Connection.execute` stores, on every backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite

from xsha_common.bulk_write import BulkWriter, compile_for_driver
from xsha_common.db import create_engine_for

metadata = MetaData()
things = Table(
    "bulk_things",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64)),
    Column("ref", String(64), default="none"),
    Column("size", BigInteger),
    Column("flag", Boolean),
    Column("seen", DateTime, nullable=True),
    Column("blob", LargeBinary),
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for(db_url, pool_size=2)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def _rows(count: int, when: dt.datetime, offset: int = 0) -> list[dict[str, Any]]:
    # One timestamp shared by many rows (as a batch's is), some distinct, and None.
    return [
        {
            "name": f"thing-{offset + i}",
            "size": (offset + i) * 1_000_000_007,
            "flag": i % 3 == 0,
            "seen": None if i % 5 == 4 else when if i % 2 else when + dt.timedelta(microseconds=i),
            "blob": bytes([i % 256]) * 3,
        }
        for i in range(count)
    ]


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(things).order_by(things.c.id))]


def _raw_seen(engine: Engine) -> list[Any]:
    """The timestamps as the database holds them (on SQLite, the text SQLAlchemy formats, which queries compare)."""
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT seen FROM bulk_things ORDER BY id"))]


def test_inserts_and_updates_store_what_connection_execute_stores(engine: Engine) -> None:
    when = dt.datetime(2026, 11, 26, 15, 4, 5, 0)  # microsecond 0: the format must still carry ".000000"
    writer = BulkWriter(engine.dialect)
    with engine.begin() as connection:
        connection.execute(insert(things), _rows(12, when))
    expected, expected_raw = _stored(engine), _raw_seen(engine)
    with engine.begin() as connection:
        connection.execute(things.delete())
        writer.executemany(connection, insert(things), _rows(12, when))
    assert [row[1:] for row in _stored(engine)] == [row[1:] for row in expected]  # ids aside: new rows, new ids
    expected = _stored(engine)
    assert _raw_seen(engine) == expected_raw
    assert all(row[2] == "none" for row in expected)  # the column default filled the bind no row carried

    by_id = update(things).where(things.c.id == bindparam("row_id"))
    later = when + dt.timedelta(hours=1)
    changes = [{"row_id": row[0], "name": f"renamed-{row[0]}", "flag": not row[4], "seen": later} for row in expected]
    with engine.begin() as connection:
        writer.executemany(connection, by_id, changes)
    stored = _stored(engine)
    wanted = [(f"renamed-{row[0]}", not row[4], later) for row in expected]
    assert [(row[1], row[4], row[5]) for row in stored] == wanted
    assert [row[3] for row in stored] == [row[3] for row in expected]  # columns no row named are left alone


def test_a_statement_is_compiled_once_per_set_of_keys(engine: Engine) -> None:
    writer = BulkWriter(engine.dialect)
    statement = insert(things)
    first = writer.compiled(statement, ("name", "size"))
    assert writer.compiled(statement, ("name", "size")) is first
    assert writer.compiled(statement, ("name", "size", "flag")) is not first


def test_equal_values_in_a_column_are_processed_once() -> None:
    when = dt.datetime(2026, 11, 26, 15, 4, 5, 123456)
    compiled = compile_for_driver(insert(things), ("name", "seen"), sqlite.dialect())
    calls: list[Any] = []
    position, name, process = next(p for p in compiled.processors if p[1] == "seen")

    def counting(value: Any) -> Any:
        calls.append(value)
        return process(value)

    counted = type(compiled)(
        compiled.sql, compiled.names, compiled.positional, ((position, name, counting),), compiled.constants
    )
    rows: list[dict[str, Any]] = [{"name": "a", "seen": when}, {"name": "b", "seen": when}, {"name": "c", "seen": None}]
    rows.append({"name": "d", "seen": when.replace(microsecond=1)})
    parameters = counted.parameters(rows)
    assert calls == [when, when.replace(microsecond=1)]
    assert [values[position] for values in parameters] == [
        "2026-11-26 15:04:05.123456",
        "2026-11-26 15:04:05.123456",
        None,
        "2026-11-26 15:04:05.000001",
    ]


def test_statements_a_driver_executemany_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="expanding"):
        compile_for_driver(
            update(things).where(things.c.name.in_(bindparam("names", expanding=True))),
            ("size", "names"),
            sqlite.dialect(),
        )
    with pytest.raises(ValueError, match="'size_is' is in no row"):
        compile_for_driver(update(things).where(things.c.size == bindparam("size_is")), ("name",), sqlite.dialect())
