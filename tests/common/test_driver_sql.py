"""DriverSql: an executemany through the driver stores exactly what `Connection.execute` stores, and a read returns
what it returns and raises what it raises, on every backend; insert_many (a COPY on PostgreSQL) stores what the
executemany stores."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    TypeDecorator,
    bindparam,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound

from xsha_common import driver_sql
from xsha_common.db import is_transient_db_error
from xsha_common.driver_sql import DriverSql, InListQuery, compile_for_driver, compile_query_for_driver

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
    Column("weight", Double, nullable=True),
)


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    """The shared fresh-database engine with this module's tables (the database goes with the test)."""
    metadata.create_all(db_engine)
    return db_engine


def _rows(count: int, when: dt.datetime, offset: int = 0) -> list[dict[str, Any]]:
    # One timestamp shared by many rows (as a batch's is), some distinct, and None.
    return [
        {
            "name": f"thing-{offset + i}",
            "size": (offset + i) * 1_000_000_007,
            "flag": i % 3 == 0,
            "seen": None if i % 5 == 4 else when if i % 2 else when + dt.timedelta(microseconds=i),
            "blob": bytes([i % 256]) * 3,
            "weight": None if i % 4 == 3 else i * 1.25,
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
    writer = DriverSql(engine.dialect)
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
    writer = DriverSql(engine.dialect)
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


def _filled(engine: Engine, count: int = 12) -> None:
    with engine.begin() as connection:
        connection.execute(insert(things), _rows(count, dt.datetime(2026, 11, 27, 6, 7, 8, 90)))


def test_a_read_returns_what_connection_execute_returns(engine: Engine) -> None:
    _filled(engine)
    sql = DriverSql(engine.dialect)
    queries: list[tuple[Select[Any], dict[str, Any]]] = [
        (select(things).order_by(things.c.id), {}),
        (select(things.c.name, things.c.flag, things.c.seen).where(things.c.size > bindparam("above")), {"above": 3e9}),
        (select(things.c.id, things.c.weight).where(things.c.flag == True).order_by(things.c.id), {}),  # noqa: E712
        (select(things.c.blob).where(things.c.name == bindparam("name")), {"name": "thing-4"}),
    ]
    with engine.connect() as connection:
        for query, values in queries:
            expected = connection.execute(query, values).all()
            rows = sql.fetch(connection, query, values)
            assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
            assert [type(value) for row in rows for value in row] == [type(v) for row in expected for v in row]
            assert rows[0]._fields == tuple(query.selected_columns.keys())
            assert rows[0].__class__ is sql.fetch(connection, query, values)[0].__class__  # compiled once
        flags = [row.flag for row in sql.fetch(connection, queries[0][0])]
    assert {type(flag) for flag in flags} == {bool}  # an integer column on SQLite and MySQL, read back as bool
    assert set(flags) == {True, False}


def test_one_and_optional_raise_as_sqlalchemy_results_do(engine: Engine) -> None:
    _filled(engine, 3)
    sql = DriverSql(engine.dialect)
    by_name = select(things.c.id).where(things.c.name == bindparam("name"))
    everything = select(things.c.id)
    with engine.connect() as connection:
        assert sql.fetch_one(connection, by_name, {"name": "thing-1"}).id == 2
        assert sql.fetch_optional(connection, by_name, {"name": "thing-9"}) is None
        with pytest.raises(NoResultFound):
            sql.fetch_one(connection, by_name, {"name": "thing-9"})
        with pytest.raises(MultipleResultsFound):
            sql.fetch_one(connection, everything)
        with pytest.raises(MultipleResultsFound):
            sql.fetch_optional(connection, everything)
        with pytest.raises(ValueError, match="no value for bind parameter"):
            sql.fetch(connection, by_name)


def test_an_in_list_gives_the_rows_an_expanding_in_gives_with_a_form_per_power_of_two(engine: Engine) -> None:
    _filled(engine, 20)
    sql = DriverSql(engine.dialect)
    names = InListQuery(
        lambda slots: (
            select(things.c.id, things.c.name)
            .where(things.c.flag == bindparam("flag"), things.c.name.in_(slots))
            .order_by(things.c.id)
        ),
        "name",
    )
    expanding = (
        select(things.c.id, things.c.name)
        .where(things.c.flag == bindparam("flag"), things.c.name.in_(bindparam("names", expanding=True)))
        .order_by(things.c.id)
    )
    forms = set()
    with engine.connect() as connection:
        for count in range(1, 18):
            wanted = [f"thing-{i}" for i in range(1, 2 * count, 2)]
            query, values = names.bind(wanted[:count], flag=False)
            forms.add(query)
            rows = sql.fetch(connection, query, values)
            expected = connection.execute(expanding, {"names": wanted[:count], "flag": False}).all()
            assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
            assert rows  # every list holds at least one unflagged thing
    assert len(forms) == 6  # 1, 2, 4, 8, 16 and 32 slots
    with pytest.raises(ValueError, match="at least one value"):
        names.bind([], flag=False)


def test_queries_driver_sql_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="expanding"):
        compile_query_for_driver(
            select(things.c.id).where(things.c.name.in_(bindparam("names", expanding=True))), sqlite.dialect()
        )
    with pytest.raises(ValueError, match="distinct plain names"):
        compile_query_for_driver(select(things.c.id, things.c.size + 1), sqlite.dialect())


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(engine: Engine) -> None:
    sql = DriverSql(engine.dialect)
    missing = Table("bulk_no_such_table", MetaData(), Column("id", Integer, primary_key=True))
    with engine.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            sql.fetch(connection, select(missing.c.id))
        assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
        assert "bulk_no_such_table" in str(raised.value)
        assert not raised.value.connection_invalidated
        assert not is_transient_db_error(raised.value)
    with engine.connect() as connection, pytest.raises(IntegrityError):
        sql.executemany(connection, insert(things), [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])


def test_a_dead_connection_is_invalidated_and_its_error_is_transient(engine: Engine) -> None:
    sql = DriverSql(engine.dialect)
    _filled(engine, 2)
    with engine.connect() as connection:
        connection.connection.dbapi_connection.close()  # type: ignore[union-attr]  # the link dies under the pool
        with pytest.raises(DBAPIError) as raised:
            sql.fetch(connection, select(things.c.id))
        assert raised.value.connection_invalidated
        assert connection.invalidated
        assert is_transient_db_error(raised.value)
    with engine.connect() as connection:  # the pool hands out a working connection again
        assert len(sql.fetch(connection, select(things.c.id))) == 2


def test_cursor_listeners_see_driver_statements(engine: Engine) -> None:
    _filled(engine, 4)
    sql = DriverSql(engine.dialect)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    query = select(things.c.id, things.c.flag).order_by(things.c.id)
    with engine.connect() as connection:
        plain = sql.fetch(connection, query)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as connection:
            listened = sql.fetch(connection, query)
            sql.executemany(connection, insert(things), _rows(2, dt.datetime(2026, 11, 27), offset=50))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert listened == plain
    assert [statement.split()[0].upper() for statement in seen if not statement.upper().startswith("BEGIN")] == [
        "SELECT",
        "INSERT",
    ]


def _tricky_changes(stored: list[tuple[Any, ...]], later: dt.datetime) -> list[dict[str, Any]]:
    """Values of every column type, with quotes, backslashes, NULLs and a shared timestamp."""
    return [
        {
            "row_id": row[0],
            "name": ["it's", 'say "hi"', "back\\slash", "", "naïve"][i % 5] + f"-{i}",
            "flag": not row[4],
            "seen": None if i % 3 == 0 else later,
            "blob": bytes([0, 39, 92, i % 256]),
            "weight": None if i % 2 else -i / 8,
        }
        for i, row in enumerate(stored)
    ]


@pytest.mark.parametrize("chunk", [500, 5])
def test_an_update_by_id_stores_what_connection_execute_stores(
    engine: Engine, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver_sql, "UPDATE_CHUNK", chunk)
    _filled(engine, 12)
    original = _stored(engine)
    changes = _tricky_changes(original[::2], dt.datetime(2026, 11, 27, 18, 0, 0, 250))  # every other row
    by_id = update(things).where(things.c.id == bindparam("row_id"))

    def restore() -> None:
        with engine.begin() as connection:
            rows = [{"row_id": row[0], **dict(zip(things.c.keys()[1:], row[1:], strict=True))} for row in original]
            connection.execute(by_id, rows)
        assert _stored(engine) == original

    with engine.begin() as connection:
        connection.execute(by_id, changes)
    expected, expected_raw = _stored(engine), _raw_seen(engine)
    restore()
    sql = DriverSql(engine.dialect)
    with engine.begin() as connection:  # straight on the driver's cursor
        sql.update_by_id(connection, things, changes)
    assert _stored(engine) == expected
    assert _raw_seen(engine) == expected_raw
    assert [row[3] for row in _stored(engine)] == [row[3] for row in original]  # columns no row named stay

    restore()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as connection:  # through exec_driver_sql, which listeners see
            sql.update_by_id(connection, things, changes)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert _stored(engine) == expected
    updates = [statement for statement in statements if statement.startswith("UPDATE")]
    if engine.dialect.name in ("mysql", "mariadb"):  # one multi-row statement per chunk
        assert len(updates) == -(-len(changes) // chunk)
    else:  # one executemany
        assert len(updates) == 1


def test_updates_by_id_without_a_row_id_or_a_column_are_refused(engine: Engine) -> None:
    sql = DriverSql(engine.dialect)
    with engine.begin() as connection:
        for keys in (("name",), ("row_id",), ("row_id", "id", "name"), ("row_id", "colour")):
            with pytest.raises(ValueError, match=r"row_id|colour"):
                sql.update_by_id(connection, things, [dict.fromkeys(keys, 1)])


def test_an_update_by_id_on_mysql_locks_only_the_rows_it_updates(engine: Engine) -> None:
    """On a table of a few rows, MariaDB's optimizer would scan the table and lock every row: another writer's
    update of a row outside the statement would wait. Under REPEATABLE READ, which keeps the locks of the rows a
    statement reads, the other writer's update goes through at once."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("MySQL and MariaDB only: the other databases' update by id is a plain UPDATE ... WHERE id = ?")
    _filled(engine, 3)
    ids = [row[0] for row in _stored(engine)]
    with engine.connect() as updater, engine.connect() as other:
        updater = updater.execution_options(isolation_level="REPEATABLE READ")
        with updater.begin():
            held = [{"row_id": row_id, "name": "held"} for row_id in ids[:2]]  # one row would be a constant table
            DriverSql(engine.dialect).update_by_id(updater, things, held)
            with other.begin():
                other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                other.execute(update(things).where(things.c.id == ids[2]).values(name="not waiting"))
    assert [row[1] for row in _stored(engine)] == ["held", "held", "not waiting"]


changes_log = Table(
    "bulk_log",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16)),
    Column("commit_time", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
    Column("payload", LargeBinary),
)


class PlainBytes(TypeDecorator[bytes]):
    """Bytes bound as they are, as sync_service binds its change-log payloads: no processor stands in COPY's way."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


# As sync_service's change-log insert.
insert_log = insert(changes_log).values(payload=bindparam("payload", type_=PlainBytes()))


def _log_rows(first: int, count: int) -> list[dict[str, Any]]:
    # What COPY's text format must escape: tabs, newlines, backslashes, NUL bytes, and a late-night microsecond.
    when = dt.datetime(2026, 11, 28, 23, 59, 59, 999_999)
    return [
        {
            "revision": first + i,
            "kind": ["vm", "tab\there", "line\nbreak\\", "naïve ✓"][i % 4],
            "commit_time": when - dt.timedelta(microseconds=i),
            "payload": bytes([0, 9, 10, 13, 92, i % 256]) + b"\\N\x00",
        }
        for i in range(count)
    ]


def _stored_log(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(changes_log).order_by(changes_log.c.revision))]


def test_insert_many_stores_what_the_executemany_stores(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[str] = []
    if engine.dialect.name == "postgresql":
        import psycopg

        copy = psycopg.Cursor.copy

        def recording(cursor: psycopg.Cursor[Any], statement: Any, *args: Any, **kwargs: Any) -> Any:
            copies.append(str(statement))
            return copy(cursor, statement, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "copy", recording)
    writer = DriverSql(engine.dialect)
    rows = _log_rows(1, 40)
    with engine.begin() as connection:
        writer.executemany(connection, insert_log, rows)
    expected = _stored_log(engine)
    assert [row[1:] for row in expected] == [tuple(row.values())[1:] for row in rows]
    with engine.begin() as connection:
        connection.execute(changes_log.delete())
        writer.insert_many(connection, insert_log, rows)
        writer.insert_many(connection, insert_log, [])
    assert _stored_log(engine) == expected
    if engine.dialect.name == "postgresql":
        assert copies == ["COPY bulk_log (revision, kind, commit_time, payload) FROM STDIN"]
    # In the caller's transaction: rolled back with it.
    with engine.connect() as connection, connection.begin() as transaction:
        writer.insert_many(connection, insert_log, _log_rows(100, 3))
        transaction.rollback()
    assert _stored_log(engine) == expected


def test_insert_many_runs_the_executemany_where_copy_would_store_otherwise(engine: Engine) -> None:
    """A column default no row carries (bulk_things.ref) is filled as the executemany fills it."""
    writer = DriverSql(engine.dialect)
    with engine.begin() as connection:
        writer.insert_many(connection, insert(things), [{"name": "a", "size": 1, "flag": True}])
    [row] = _stored(engine)
    assert (row[1], row[2], row[3], row[4]) == ("a", "none", 1, True)


def test_insert_many_errors_are_raised_as_sqlalchemy_raises_them(engine: Engine) -> None:
    writer = DriverSql(engine.dialect)
    with engine.begin() as connection:
        writer.insert_many(connection, insert_log, _log_rows(1, 2))
    with engine.connect() as connection, pytest.raises(IntegrityError) as raised:
        writer.insert_many(connection, insert_log, _log_rows(2, 2))
    assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
    assert not is_transient_db_error(raised.value)
    with engine.connect() as connection:
        connection.connection.dbapi_connection.close()  # type: ignore[union-attr]  # the link dies under the pool
        with pytest.raises(DBAPIError) as dead:
            writer.insert_many(connection, insert_log, _log_rows(10, 2))
        assert dead.value.connection_invalidated
        assert is_transient_db_error(dead.value)


def test_cursor_listeners_see_insert_many_as_an_insert(engine: Engine) -> None:
    writer = DriverSql(engine.dialect)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as connection:
            writer.insert_many(connection, insert_log, _log_rows(1, 3))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [statement.split()[0].upper() for statement in seen if not statement.upper().startswith("BEGIN")] == [
        "INSERT"
    ]
    assert len(_stored_log(engine)) == 3
