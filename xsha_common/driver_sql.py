"""Statements run on the driver's cursor, each compiled once per dialect: executemany writes and plain reads.

`Connection.execute` does a statement's work in SQLAlchemy's generic machinery: parameters through
`construct_params` and each type's bind processor, then an execution context and a result object. In sync_service's
ingest profiles the parameter building was a fifth of the committing thread, more than SQLite took to write the
rows; in ha_service's decisions the per-statement work of a handful of small reads was a third of a decision.

Here a statement is compiled once per set of keys. A write's rows become the driver's parameters with one tuple (or
the dict as given) and only the bind processors the dialect really has (SQLite's DATETIME formatting, say); values
repeated from the previous row (a batch's one timestamp) are processed once. A read's rows come back as named tuples
with only the result processors the dialect really has (an integer to a bool on SQLite and MySQL, say). The SQL and
the values are those SQLAlchemy would have sent and returned.

What stays SQLAlchemy's: the connection and its transaction, the dialect's execute hooks, and the handling of a
driver error (wrapped in `DBAPIError`, a dead connection invalidated, `handle_error` events run), so callers and
`is_transient_db_error` see what `Connection.execute` would have raised. When the engine has cursor-execute event
listeners, statements go through `exec_driver_sql` so the listeners see them.
"""

from __future__ import annotations

import itertools
import operator
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql import Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update, UpdateBase
from sqlalchemy.sql.elements import BindParameter

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """One statement compiled for one dialect and one set of row keys."""

    sql: str
    names: tuple[str, ...]  # bind names, in the driver's order when it takes positional parameters
    positional: bool
    processors: tuple[tuple[int, str, Processor], ...]  # (position in `names`, name, processor)
    constants: tuple[tuple[str, Any], ...]  # binds no row carries: column defaults

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Each row as the driver takes it: a tuple in bind order, or a dict by bind name."""
        if self.constants:
            defaults = dict(self.constants)
            rows = [{**defaults, **row} for row in rows]
        if not self.positional:
            if not self.processors:
                return list(rows)
            dicts = [dict(row) for row in rows]
            for _position, name, process in self.processors:
                _process_column(dicts, name, process)
            return dicts
        pick = operator.itemgetter(*self.names)
        if len(self.names) == 1:
            return [(pick(row),) for row in rows]
        if not self.processors:
            return [pick(row) for row in rows]
        lists = [list(pick(row)) for row in rows]
        for position, _name, process in self.processors:
            _process_column(lists, position, process)
        return [tuple(values) for values in lists]


def _process_column(rows: Sequence[Any], key: Any, process: Processor) -> None:
    """Applies `process` to one column of every row in place; a value equal to the previous row's (a batch's one
    timestamp, a flag) is processed once."""
    last_in: Any = _UNSET
    last_out: Any = None
    for values in rows:
        value = values[key]
        if value is None:
            continue
        if value is not last_in and value != last_in:
            last_in = value
            last_out = process(value)
        values[key] = last_out


_UNSET: Any = object()


class DriverSql:
    """Compiles and caches statements for one dialect, and runs them on a connection's driver cursor. Statements
    are cached by identity: pass ones built once (module constants, an InListQuery's forms), not new ones per call."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # No lock: two threads compiling the same statement at once store equal results, and a dict's item
        # assignment is atomic.
        self._compiled: dict[tuple[UpdateBase, tuple[str, ...]], DriverStatement] = {}
        self._queries: dict[Select[Any], DriverQuery] = {}
        self._updates_by_id: dict[tuple[Table, tuple[str, ...]], JoinedUpdate | Update] = {}
        self._copies: dict[tuple[Insert, tuple[str, ...]], str | None] = {}

    def executemany(
        self, connection: Connection, statement: Insert | Update, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Runs `statement` once per row (every row with the same keys), as `connection.execute` would."""
        if not rows:
            return
        compiled = self.compiled(statement, tuple(rows[0]))
        run_on_driver(connection, compiled.sql, compiled.parameters(rows), many=True)

    def insert_many(self, connection: Connection, statement: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
        """`executemany(statement, rows)`, or on PostgreSQL through psycopg one COPY of the rows into the
        statement's table: the server parses one stream instead of a statement a row, and the client binds no
        statement a row. It copies only when every bind is a row's key and none has a bind processor (otherwise
        it runs the executemany): COPY fills no column default and takes the values as psycopg adapts them."""
        if not rows:
            return
        keys = tuple(rows[0])
        sql = self._copy_sql(statement, keys) if _can_copy(connection) else None
        if sql is None:
            self.executemany(connection, statement, rows)
            return
        pick = operator.itemgetter(*keys)
        values = pick if len(keys) > 1 else lambda row: (pick(row),)
        cursor = None
        try:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]  # a live one has it
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(values(row))
        except BaseException as error:
            # As run_on_driver: SQLAlchemy's handling of a driver error, for the callers' retries.
            connection._handle_dbapi_exception(error, sql, rows, cursor, None)
        cursor.close()

    def _copy_sql(self, statement: Insert, keys: tuple[str, ...]) -> str | None:
        """The COPY that stores what `statement` stores for rows with `keys`; None where it would not (column
        defaults to fill, values to process). Decided once per statement and key set."""
        cache_key = (statement, keys)
        if cache_key in self._copies:
            return self._copies[cache_key]
        compiled = self.compiled(statement, keys)
        sql = None
        if not compiled.constants and not compiled.processors and set(compiled.names) == set(keys):
            table = cast(Table, statement.table)
            quote = self.dialect.identifier_preparer
            columns = ", ".join(quote.format_column(table.c[key]) for key in keys)
            sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN"
        self._copies[cache_key] = sql
        return sql

    def update_by_id(self, connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Sets each row's values on `table`'s row whose `id` is the row's `row_id` (every row with the same keys,
        each id at most once). On MySQL and MariaDB, one statement per `UPDATE_CHUNK` rows: PyMySQL runs an
        UPDATE executemany as one round trip per row. Elsewhere, an executemany of `UPDATE ... WHERE id = ?`."""
        if not rows:
            return
        cache_key = (table, tuple(rows[0]))
        statement = self._updates_by_id.get(cache_key)
        if statement is None:  # checked and built once per table and key set
            columns = _updated_columns(*cache_key)
            if _is_mysql(self.dialect):
                statement = JoinedUpdate.build(table, columns, self.dialect)
            else:
                statement = update(table).where(table.c.id == bindparam("row_id"))
            self._updates_by_id[cache_key] = statement
        if not isinstance(statement, JoinedUpdate):
            self.executemany(connection, statement, rows)
            return
        for start in range(0, len(rows), UPDATE_CHUNK):
            chunk = rows[start : start + UPDATE_CHUNK]
            run_on_driver(connection, statement.sql(len(chunk)), statement.parameters(chunk))

    def compiled(self, statement: Insert | Update, keys: tuple[str, ...]) -> DriverStatement:
        cache_key = (statement, keys)
        found = self._compiled.get(cache_key)
        if found is None:
            found = compile_for_driver(statement, keys, self.dialect)
            self._compiled[cache_key] = found
        return found

    def fetch(self, connection: Connection, query: Select[Any], values: Mapping[str, Any] | None = None) -> list[Any]:
        """The rows of `query` as named tuples keyed like its selected columns, with `values` for its binds."""
        compiled = self.query(query)
        rows, description = run_on_driver(connection, compiled.sql, compiled.parameters(values or {}))
        return compiled.rows(rows, description)

    def fetch_one(self, connection: Connection, query: Select[Any], values: Mapping[str, Any] | None = None) -> Any:
        """The one row of `query`; raises NoResultFound or MultipleResultsFound as `Result.one()` does."""
        rows = self.fetch(connection, query, values)
        if not rows:
            raise NoResultFound("No row was found when one was required")
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return rows[0]

    def fetch_optional(
        self, connection: Connection, query: Select[Any], values: Mapping[str, Any] | None = None
    ) -> Any | None:
        """The row of `query`, or None; raises MultipleResultsFound as `Result.one_or_none()` does."""
        rows = self.fetch(connection, query, values)
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None

    def query(self, query: Select[Any]) -> DriverQuery:
        found = self._queries.get(query)
        if found is None:
            found = compile_query_for_driver(query, self.dialect)
            self._queries[query] = found
        return found


# Rows per MySQL multi-row UPDATE: 500 rows of a VM's columns are about 150 KB of SQL, far below the server's
# max_allowed_packet (16 MB by default on MariaDB, 64 MB on MySQL 8).
UPDATE_CHUNK: Final = 500


def _is_mysql(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


def _updated_columns(table: Table, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The columns an update by id sets: `keys` but `row_id`. Raises ValueError unless `table`'s primary key is
    `id` and the columns are some of its others, with `row_id` beside them."""
    if [column.name for column in table.primary_key.columns] != ["id"]:
        raise ValueError(f"an update by id needs a table whose primary key is id, not {table.name}")
    columns = tuple(key for key in keys if key != "row_id")
    if "row_id" not in keys or not columns or "id" in columns:
        raise ValueError(f"an update by id needs row_id and at least one column other than id, not {list(keys)}")
    unknown = [name for name in columns if name not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {', '.join(unknown)}")
    return columns


@dataclass(frozen=True, slots=True)
class JoinedUpdate:
    """A multi-row UPDATE for MySQL and MariaDB: the rows' values as a derived table of `SELECT ... UNION ALL
    SELECT ...`, joined to the table by id, and only the columns given set. Against the multi-row
    `INSERT ... ON DUPLICATE KEY UPDATE` it replaces, which must carry every NOT NULL column, a power flip's 7
    changed columns of 250 VM rows took 5.2 ms instead of 7.4 ms, 0.9 ms of client CPU instead of 2.2 ms (MariaDB
    10.11, 20,000 rows). STRAIGHT_JOIN and FORCE INDEX keep the plan the derived table first, then the table's
    rows by primary key, so the statement locks the rows it updates and no others: left to itself, the optimizer
    scanned a small table first and locked every row of it, other writers' rows too."""

    head: str  # `UPDATE (SELECT %s AS id, %s AS c1, ...`
    more: str  # ` UNION ALL SELECT %s, %s, ...`, once per further row
    tail: str  # `) AS v STRAIGHT_JOIN table AS t FORCE INDEX (PRIMARY) ON t.id = v.id SET t.c1 = v.c1, ...`
    keys: tuple[str, ...]  # row keys in parameter order, `row_id` first
    processors: tuple[tuple[int, Processor], ...]  # (position in `keys`, bind processor)

    @classmethod
    def build(cls, table: Table, columns: tuple[str, ...], dialect: Dialect) -> JoinedUpdate:
        """The statement setting `columns` (checked by _updated_columns) from rows that also carry `row_id`."""
        quote = dialect.identifier_preparer.quote
        head = "UPDATE (SELECT %s AS id, " + ", ".join(f"%s AS {quote(name)}" for name in columns)
        more = " UNION ALL SELECT " + ", ".join(["%s"] * (len(columns) + 1))
        assignments = ", ".join(f"t.{quote(name)} = v.{quote(name)}" for name in columns)
        target = dialect.identifier_preparer.format_table(table)
        tail = f") AS v STRAIGHT_JOIN {target} AS t FORCE INDEX (PRIMARY) ON t.id = v.id SET {assignments}"
        processors = tuple(
            (position, process)
            for position, name in enumerate(columns, start=1)
            if (process := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        return cls(head, more, tail, ("row_id", *columns), processors)

    def sql(self, rows: int) -> str:
        return self.head + self.more * (rows - 1) + self.tail

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
        """The rows' values in the statement's order, one flat tuple (`keys` has two or more: a tuple a row)."""
        picked: Iterable[Sequence[Any]] = map(operator.itemgetter(*self.keys), rows)
        if self.processors:
            lists = [list(values) for values in picked]
            for position, process in self.processors:
                _process_column(lists, position, process)
            picked = lists
        return tuple(itertools.chain.from_iterable(picked))


Description = Sequence[Sequence[Any]]


def _has_cursor_listeners(connection: Connection) -> bool:
    return bool(connection.dispatch.before_cursor_execute or connection.dispatch.after_cursor_execute)


def _can_copy(connection: Connection) -> bool:
    """Whether insert_many may copy: psycopg on PostgreSQL, and no cursor-execute listener that would miss a COPY."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg" and not _has_cursor_listeners(connection)


def run_on_driver(
    connection: Connection, sql: str, parameters: Any, *, many: bool = False
) -> tuple[list[Sequence[Any]], Description | None]:
    """Runs `sql` on the connection's driver cursor through the dialect's execute hooks; returns the rows it
    returned (none for a statement without a result) and the cursor's description. A driver error is handled as
    `Connection.execute` handles it (see the module's docstring)."""
    if _has_cursor_listeners(connection):
        result = connection.exec_driver_sql(sql, parameters)
        if not result.returns_rows:
            return [], None
        description = result.cursor.description
        return list(result.fetchall()), description
    dialect = connection.dialect
    cursor = None
    try:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # a live one has it
        if many:
            dialect.do_executemany(cursor, sql, parameters)
        else:
            dialect.do_execute(cursor, sql, parameters)
        description = cursor.description
        rows = list(cursor.fetchall()) if description is not None else []
    except BaseException as error:
        # SQLAlchemy's own handling, as for any statement it runs: wraps the error, runs handle_error events and
        # invalidates the connection (and the pool) when the error says the connection is dead.
        connection._handle_dbapi_exception(error, sql, parameters, cursor, None)
    cursor.close()
    return rows, description


class DriverQuery:
    """One SELECT compiled for one dialect: its driver SQL, how its parameters are laid out, and how a row is
    made (result processors are chosen from the driver's column types, as SQLAlchemy chooses them)."""

    __slots__ = (
        "_dialect",
        "_result_processors",
        "_types",
        "defaults",
        "names",
        "positional",
        "processors",
        "row",
        "sql",
    )

    def __init__(
        self,
        sql: str,
        names: tuple[str, ...],
        positional: bool,
        defaults: Mapping[str, Any],
        processors: tuple[tuple[int, str, Processor], ...],
        keys: tuple[str, ...],
        types: tuple[Any, ...],
        dialect: Dialect,
    ) -> None:
        self.sql = sql
        self.names = names
        self.positional = positional
        self.defaults = dict(defaults)  # binds with a value in the query itself (`column == 1`)
        self.processors = processors
        row_type: Any = namedtuple("DriverRow", keys)  # type: ignore[misc]  # fields known only at run time
        self.row: Callable[[Sequence[Any]], Any] = row_type._make
        self._types = tuple(type_.dialect_impl(dialect) for type_ in types)
        self._dialect = dialect
        # By the driver's column type codes: PostgreSQL's float processor depends on the type the server sent.
        self._result_processors: dict[tuple[Any, ...], tuple[tuple[int, Processor], ...]] = {}

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """`values` (and the query's own) as the driver takes them. Raises ValueError for a bind with no value."""
        merged = {**self.defaults, **values} if self.defaults else values
        missing = [name for name in self.names if name not in merged]
        if missing:
            raise ValueError(f"no value for bind parameter(s) {', '.join(sorted(set(missing)))}")
        if self.processors:
            merged = dict(merged)
            for _position, name, process in self.processors:
                if merged[name] is not None:
                    merged[name] = process(merged[name])
        if self.positional:
            return tuple(merged[name] for name in self.names)
        return {name: merged[name] for name in self.names}

    def rows(self, rows: Sequence[Sequence[Any]], description: Description | None) -> list[Any]:
        make = self.row
        if not rows:
            return []
        assert description is not None
        codes = tuple(column[1] for column in description)
        processors = self._result_processors.get(codes)
        if processors is None:
            processors = tuple(
                (index, process)
                for index, (type_, code) in enumerate(zip(self._types, codes, strict=True))
                if (process := type_.result_processor(self._dialect, code)) is not None
            )
            self._result_processors[codes] = processors
        if not processors:
            return [make(row) for row in rows]
        made = []
        for row in rows:
            values = list(row)
            for index, process in processors:
                values[index] = process(values[index])
            made.append(make(values))
        return made


def compile_query_for_driver(query: Select[Any], dialect: Dialect) -> DriverQuery:
    """`query` compiled as SQLAlchemy compiles it for `dialect`. Raises ValueError for a query that cannot run as
    plain driver SQL: a parameter that expands at execution (an IN list: use `InListQuery`), or a selected
    expression that is not a plain named column."""
    compiled = query.compile(dialect=dialect)
    positional, names, processors = _bind_layout(
        compiled, dialect, "queries with expanding or literal-execute parameters cannot run as driver SQL"
    )
    defaults = {name: bind.effective_value for name in names if not (bind := compiled.binds[name]).required}
    columns = list(query.selected_columns)
    keys = tuple(query.selected_columns.keys())
    if len(set(keys)) != len(keys) or not all(key.isidentifier() and not key.startswith("_") for key in keys):
        raise ValueError(f"selected columns need distinct plain names, not {list(keys)}")
    return DriverQuery(
        sql=str(compiled),
        names=names,
        positional=positional,
        defaults=defaults,
        processors=processors,
        keys=keys,
        types=tuple(column.type for column in columns),
        dialect=dialect,
    )


@dataclass
class InListQuery:
    """A query with one `IN (...)` list that runs as driver SQL. SQLAlchemy renders an expanding IN for each
    execution; here the list has a fixed number of slots, a power of two, each size compiled once, and a shorter
    list repeats its last value (which leaves the result the same), so a handful of compiled forms serve every
    size. `build` makes the query from the slots' bind parameters; `name` prefixes their names."""

    build: Callable[[Sequence[BindParameter[Any]]], Select[Any]]
    name: str
    _by_slots: dict[int, Select[Any]] = field(default_factory=dict, init=False, repr=False)

    def bind(self, values: Sequence[Any], **others: Any) -> tuple[Select[Any], dict[str, Any]]:
        """The query for `values` and its parameters (`others` carries the query's other binds)."""
        if not values:
            raise ValueError(f"{self.name}: an IN list needs at least one value")
        slots = 1 << (len(values) - 1).bit_length()
        query = self._by_slots.get(slots)
        if query is None:
            query = self.build([bindparam(f"{self.name}_{i}") for i in range(slots)])
            self._by_slots[slots] = query
        last = len(values) - 1
        parameters = {f"{self.name}_{i}": values[min(i, last)] for i in range(slots)}
        parameters.update(others)
        return query, parameters


def compile_for_driver(statement: Insert | Update, keys: tuple[str, ...], dialect: Dialect) -> DriverStatement:
    """`statement` compiled as SQLAlchemy compiles it for an executemany whose rows carry `keys`. Raises ValueError
    for a statement a plain executemany cannot run (a bind no row carries and no scalar default fills, or a
    parameter that expands at execution)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    positional, names, processors = _bind_layout(
        compiled, dialect, "statements with expanding or literal-execute parameters cannot run as a driver executemany"
    )
    table = statement.table
    known = set(keys)
    constants: list[tuple[str, Any]] = []
    for name in names:
        if name in known:
            continue
        column = table.c.get(name) if isinstance(table, Table) else None
        default = column.default if column is not None else None
        if default is None or not default.is_scalar:
            raise ValueError(f"bind {name!r} is in no row and has no scalar default")
        constants.append((name, default.arg))  # type: ignore[attr-defined]  # scalar defaults carry `arg`
    return DriverStatement(
        sql=str(compiled),
        names=names,
        positional=positional,
        processors=processors,
        constants=tuple(constants),
    )


def _bind_layout(
    compiled: SQLCompiler, dialect: Dialect, expanding_refusal: str
) -> tuple[bool, tuple[str, ...], tuple[tuple[int, str, Processor], ...]]:
    """How a compiled statement's binds reach the driver: positional or not, their names in the driver's order, and
    the bind processors the dialect really has. Raises ValueError (`expanding_refusal` for a parameter that expands
    at execution, or for bind names the dialect escapes) when plain driver SQL cannot carry them."""
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError(expanding_refusal)
    escaped = getattr(compiled, "escaped_bind_names", None)
    if escaped:
        raise ValueError(f"bind names the dialect escapes are not supported: {sorted(escaped)}")
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
    processors = []
    for position, name in enumerate(names):
        process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((position, name, process))
    return positional, names, tuple(processors)
