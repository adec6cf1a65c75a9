"""LiteralCursor: the SQL text it renders is PyMySQL's own, value for value, in both of the server's backslash
modes; values round-trip through MariaDB; and xsha's MySQL engines use it."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest
from pymysql.constants import SERVER_STATUS  # type: ignore[import-untyped]
from sqlalchemy import Engine, text

from xsha_common.mysql_literals import LiteralCursor

_UTC = dt.UTC

STRINGS = [
    "",
    "plain",
    "0f3c0c1e-1111-2222-3333-444455556666",
    "it's",
    'say "hi"',
    "back\\slash",
    "trailing\\",
    "\\'",
    "nul\x00byte",
    "line\nbreak\rreturn",
    "ctrl-z\x1a",
    "tab\tstays",
    "percent % and %(name)s and %s",
    "ünïcödé ☃ 🐧",
    "'; DROP TABLE t; --",
    "''",
    "\\\\",
]

VALUES: list[Any] = [
    *STRINGS,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**70,
    True,
    False,
    None,
    dt.datetime(2026, 11, 27, 11, 0, 0),
    dt.datetime(2026, 11, 27, 11, 0, 0, 1),
    dt.datetime(2026, 11, 27, 11, 0, 0, 999999),
    dt.datetime(999, 1, 2, 3, 4, 5, 60),
    dt.datetime(2026, 11, 27, 11, 0, 0, 123456, tzinfo=_UTC),
    dt.datetime(2026, 11, 27, 11, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    dt.date(2026, 11, 27),
    dt.time(1, 2, 3),
    dt.timedelta(seconds=90),
    1.5,
    -0.0,
    1e300,
    decimal.Decimal("12.50"),
    b"",
    b"\x00\xff'\\bytes",
    bytearray(b"array"),
]


class _Subclassed(str):
    """A str subclass: not the fast path's exact type, so PyMySQL must render it."""


def _connection(no_backslash_escapes: bool) -> Any:
    # Not connected: rendering needs only the connection's encoders and server status.
    connection = pymysql.connect(defer_connect=True, charset="utf8mb4")
    connection.server_status = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES if no_backslash_escapes else 0
    return connection


def _both(connection: Any, query: str, args: Any) -> tuple[str, str]:
    ours = LiteralCursor(connection)._mogrify(query, args)
    theirs = pymysql.cursors.Cursor(connection)._mogrify(query, args)
    return ours, theirs


@pytest.mark.parametrize("no_backslash_escapes", [False, True], ids=["backslash-escapes", "no-backslash-escapes"])
def test_every_value_renders_as_pymysql_renders_it(no_backslash_escapes: bool) -> None:
    connection = _connection(no_backslash_escapes)
    for value in [*VALUES, _Subclassed("it's")]:
        ours, theirs = _both(connection, "SELECT %s", (value,))
        assert ours == theirs, value
        ours, theirs = _both(connection, "SELECT %(v)s", {"v": value})
        assert ours == theirs, value


@pytest.mark.parametrize("no_backslash_escapes", [False, True], ids=["backslash-escapes", "no-backslash-escapes"])
def test_random_rows_render_as_pymysql_renders_them(no_backslash_escapes: bool) -> None:
    connection = _connection(no_backslash_escapes)
    generator = random.Random(20261127)
    alphabet = "ab'\"\\\x00\n\r\x1a%() é🐧"
    query = "(" + ", ".join(f"%(c{i})s" for i in range(6)) + ")"
    shared = dt.datetime(2026, 11, 27, 12, 30, 0, 250000)
    for _ in range(500):
        row: dict[str, Any] = {}
        for i in range(6):
            kind = generator.randrange(5)
            if kind == 0:
                row[f"c{i}"] = "".join(generator.choice(alphabet) for _ in range(generator.randrange(12)))
            elif kind == 1:
                row[f"c{i}"] = generator.randrange(-(2**40), 2**40)
            elif kind == 2:
                row[f"c{i}"] = shared  # the same object again and again, as a batch's commit time is
            elif kind == 3:
                row[f"c{i}"] = shared + dt.timedelta(microseconds=generator.randrange(-(10**7), 10**7))
            else:
                row[f"c{i}"] = generator.choice([None, True, False])
        ours, theirs = _both(connection, query, row)
        assert ours == theirs, row


def test_a_mode_change_on_a_live_connection_takes_effect_on_the_next_statement() -> None:
    connection = _connection(False)
    cursor = LiteralCursor(connection)
    assert cursor._mogrify("SELECT %s", ("a\\b",)) == "SELECT 'a\\\\b'"
    connection.server_status |= SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
    assert cursor._mogrify("SELECT %s", ("a\\b",)) == "SELECT 'a\\b'"


@pytest.mark.parametrize(
    ("query", "args"),
    [("SELECT %(a)s, %(b)s", {"a": 1}), ("SELECT %s, %s", (1,)), ("SELECT %s", (1, 2)), ("SELECT %(a)s", (1,))],
)
def test_a_placeholder_argument_mismatch_raises_what_pymysql_raises(query: str, args: Any) -> None:
    connection = _connection(False)
    with pytest.raises(Exception) as theirs:
        pymysql.cursors.Cursor(connection)._mogrify(query, args)
    with pytest.raises(type(theirs.value)):
        LiteralCursor(connection)._mogrify(query, args)


@pytest.mark.parametrize("db_backend", [pytest.param("mysql", marks=pytest.mark.mysql)])
@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_values_round_trip_through_mariadb(db_engine: Engine, sql_mode: str) -> None:
    with db_engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE literals (id INT PRIMARY KEY, s VARCHAR(64), n BIGINT, b BOOL, t DATETIME(6))"
        )
    when = dt.datetime(2026, 11, 27, 11, 0, 0, 123456)
    rows = [
        (i, s, n, flag, when if i % 2 else when.replace(microsecond=0))
        for i, (s, n, flag) in enumerate(
            zip(STRINGS, itertools.cycle([0, -(2**63), 2**63 - 1]), itertools.cycle([True, False]))
        )
    ]
    raw = db_engine.raw_connection()
    try:
        assert isinstance(raw.driver_connection, pymysql.connections.Connection)
        cursor = raw.driver_connection.cursor()
        assert type(cursor) is LiteralCursor
        cursor.execute("SET SESSION sql_mode = %s", (sql_mode,))
        # executemany's multi-row INSERT renders every row through _mogrify.
        cursor.executemany("INSERT INTO literals (id, s, n, b, t) VALUES (%s, %s, %s, %s, %s)", rows)
        raw.driver_connection.commit()
        cursor.execute("SELECT id, s, n, b, t FROM literals WHERE s = %s OR s = %s ORDER BY id", ("it's", "\\'"))
        assert [row[1] for row in cursor.fetchall()] == ["it's", "\\'"]
        cursor.close()
    finally:
        raw.close()
    with db_engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(text("SELECT id, s, n, b, t FROM literals ORDER BY id"))]
    assert stored == [(i, s, n, int(flag), t) for i, s, n, flag, t in rows]
