"""A PyMySQL cursor that renders the common parameter types to SQL literals without PyMySQL's generic path.

PyMySQL sends no bound parameters: it renders each value into the statement text in Python, and a multi-row
`executemany` does that for every value of every row. Its generic path (`Connection.escape` -> `escape_item` ->
an encoder found by type -> a format string) was about a quarter of sync_service's CPU when mirroring into
MariaDB. `LiteralCursor` renders str, int, bool, None and naive datetime itself, producing exactly the text
PyMySQL would (tests compare the two over many values, in both of the server's backslash modes), and hands every
other value to PyMySQL unchanged.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import pymysql  # type: ignore[import-untyped]
from pymysql.constants import SERVER_STATUS  # type: ignore[import-untyped]
from pymysql.converters import escape_string  # type: ignore[import-untyped]

_NO_BACKSLASH_ESCAPES: Final[int] = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES


# The characters a string's literal rewrites, in each mode: a string without any (most of them) is only quoted.
_NEEDS_BACKSLASH_ESCAPE: Final = re.compile(r"""[\x00\n\r\x1a'"\\]""")  # PyMySQL's escape_string
_NEEDS_QUOTE_DOUBLING: Final = re.compile("'")


def _quote_with_backslashes(value: str) -> str:
    return "'" + str(escape_string(value)) + "'"


def _quote_without_backslashes(value: str) -> str:
    # The server's NO_BACKSLASH_ESCAPES mode: a backslash is an ordinary character, only the quote is doubled.
    return "'" + value.replace("'", "''") + "'"


def literal_renderer(escape: Callable[[Any], str], no_backslash_escapes: bool) -> Callable[[Any], str]:
    """A function giving `value`'s SQL literal: the fast path for the common types, `escape` (PyMySQL's
    `Connection.escape`) for the rest."""
    quote = _quote_without_backslashes if no_backslash_escapes else _quote_with_backslashes
    needs_quoting = (_NEEDS_QUOTE_DOUBLING if no_backslash_escapes else _NEEDS_BACKSLASH_ESCAPE).search
    datetime_type = dt.datetime
    # A batch's rows mostly carry the same datetime object (its commit time), so the last one's text is kept.
    last_datetime: dt.datetime | None = None
    last_datetime_text = ""

    def render(value: Any) -> str:
        nonlocal last_datetime, last_datetime_text
        kind = type(value)
        if kind is str:
            return quote(value) if needs_quoting(value) else "'" + value + "'"
        if kind is int:
            return str(value)
        if value is None:
            return "NULL"
        if kind is bool:
            return "1" if value else "0"
        if kind is datetime_type and value.tzinfo is None:
            # isoformat(" ") is PyMySQL's text for a naive datetime (microseconds only when non-zero). PyMySQL
            # drops an aware value's offset: that case is left to it.
            if value is not last_datetime:
                last_datetime, last_datetime_text = value, "'" + value.isoformat(" ") + "'"
            return last_datetime_text
        return str(escape(value))

    return render


class LiteralCursor(pymysql.cursors.Cursor):  # type: ignore[misc]  # PyMySQL ships no type stubs
    """PyMySQL's default cursor with a faster `_mogrify`, the one place PyMySQL turns parameters into text
    (`execute`, and `executemany`'s multi-row INSERT, go through it)."""

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        # One renderer per backslash mode, kept for the cursor's statements: an executemany renders every row
        # through the same one, so its rows' shared datetime is rendered once.
        self._renderers: dict[bool, Callable[[Any], str]] = {}

    def _mogrify(self, query: str, args: Any) -> str:
        if type(args) is not dict and type(args) is not tuple and type(args) is not list:
            return str(super()._mogrify(query, args))
        connection = self._get_db()
        # The mode is read per statement, as PyMySQL does: a SET sql_mode can change it on a live connection.
        mode = bool(connection.server_status & _NO_BACKSLASH_ESCAPES)
        render = self._renderers.get(mode)
        if render is None:
            render = self._renderers[mode] = literal_renderer(connection.escape, mode)
        escaped: Mapping[str, str] | tuple[str, ...]
        if type(args) is dict:
            escaped = {key: render(value) for key, value in args.items()}
        else:
            escaped = tuple(map(render, args))
        try:
            return query % escaped
        except TypeError as error:  # what PyMySQL raises for a placeholder / argument mismatch
            raise pymysql.err.ProgrammingError(str(error)) from error
