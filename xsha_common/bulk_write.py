"""Executemany through the driver, with each statement compiled once per set of row keys.

`Connection.execute(statement, rows)` builds every row's parameters through SQLAlchemy's generic machinery
(`construct_params`, then each type's bind processor): in sync_service's ingest profiles that was a fifth of the
committing thread, more than SQLite took to write the rows. Here a statement is compiled once per set of keys; a
row becomes the driver's parameters with one tuple (or the dict as given) and only the bind processors the dialect
really has (SQLite's DATETIME formatting, say), and values repeated from the previous row (a batch's one timestamp)
are processed once. The SQL and the values the driver gets are those SQLAlchemy would have sent; the statement runs
through `exec_driver_sql`, so engine events and error wrapping still apply.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert, Update, UpdateBase

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


class BulkWriter:
    """Compiles and caches DriverStatements for one dialect; `executemany` runs one on a connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # No lock: two threads compiling the same statement at once store equal results, and a dict's item
        # assignment is atomic.
        self._compiled: dict[tuple[UpdateBase, tuple[str, ...]], DriverStatement] = {}

    def executemany(
        self, connection: Connection, statement: Insert | Update, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Runs `statement` once per row (every row with the same keys), as `connection.execute` would."""
        if not rows:
            return
        compiled = self.compiled(statement, tuple(rows[0]))
        connection.exec_driver_sql(compiled.sql, compiled.parameters(rows))

    def compiled(self, statement: Insert | Update, keys: tuple[str, ...]) -> DriverStatement:
        cache_key = (statement, keys)
        found = self._compiled.get(cache_key)
        if found is None:
            found = compile_for_driver(statement, keys, self.dialect)
            self._compiled[cache_key] = found
        return found


def compile_for_driver(statement: Insert | Update, keys: tuple[str, ...], dialect: Dialect) -> DriverStatement:
    """`statement` compiled as SQLAlchemy compiles it for an executemany whose rows carry `keys`. Raises ValueError
    for a statement a plain executemany cannot run (a bind no row carries and no scalar default fills, or a
    parameter that expands at execution)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("statements with expanding or literal-execute parameters cannot run as a driver executemany")
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
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
    escaped = getattr(compiled, "escaped_bind_names", None)
    if escaped:
        raise ValueError(f"bind names the dialect escapes are not supported: {sorted(escaped)}")
    processors: list[tuple[int, str, Processor]] = []
    for position, name in enumerate(names):
        bind_type = compiled.binds[name].type.dialect_impl(dialect)
        process = bind_type.bind_processor(dialect)
        if process is not None:
            processors.append((position, name, process))
    return DriverStatement(
        sql=str(compiled),
        names=names,
        positional=positional,
        processors=tuple(processors),
        constants=tuple(constants),
    )
