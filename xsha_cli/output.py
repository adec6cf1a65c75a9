"""How the CLI prints: rich tables for people, JSON for scripts (`--output json`), and value formatting helpers."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, enum names, unset scalars included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


class Output:
    """Where and how a command prints its answer. Status lines go to stderr in JSON mode, so stdout stays JSON."""

    def __init__(self, output_format: OutputFormat) -> None:
        self.format = output_format
        # Created on first use so they bind the streams of the running command (typer's test runner swaps them).
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def json(self) -> bool:
        return self.format is OutputFormat.JSON

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = Console(highlight=False, soft_wrap=self.json)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = Console(stderr=True, highlight=False)
        return self._err

    def emit_json(self, payload: Any, *, compact: bool = False) -> None:
        text = json.dumps(payload, separators=(",", ":")) if compact else json.dumps(payload, indent=2)
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[str]],
        messages: Sequence[Message],
        *,
        empty: str = "nothing found",
    ) -> None:
        """A table (or, in JSON mode, the messages as a JSON array)."""
        if self.json:
            self.emit_json([message_to_dict(message) for message in messages])
            return
        rows = list(rows)
        if not rows:
            self.out.print(f"{title}: {empty}", markup=False)
            return
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.out.print(table)

    def record(self, title: str, fields: Sequence[tuple[str, str]], message: Message) -> None:
        """One object as a two-column table (or, in JSON mode, as a JSON object)."""
        if self.json:
            self.emit_json(message_to_dict(message))
            return
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for label, value in fields:
            table.add_row(label, value)
        self.out.print(table)

    def line(self, text: str, *, style: str | None = None) -> None:
        """A line for people: stdout in table mode, stderr in JSON mode."""
        (self.err if self.json else self.out).print(text, style=style, markup=False, highlight=False)


# --- value formatting -----------------------------------------------------------------------------------------------


def enum_label(enum_type: Any, value: int) -> str:
    """`HA_MODE_NATIVE` -> `NATIVE`: the value's name without the enum's prefix; `-` for UNSPECIFIED."""
    descriptor = enum_type.DESCRIPTOR
    number_to_value = descriptor.values_by_number
    if value not in number_to_value:
        return str(value)
    name: str = number_to_value[value].name
    prefix = enum_prefix(enum_type)
    short = name.removeprefix(prefix)
    return "-" if short == "UNSPECIFIED" else short


def enum_prefix(enum_type: Any) -> str:
    zero_name: str = enum_type.DESCRIPTOR.values_by_number[0].name
    return zero_name.removesuffix("UNSPECIFIED")


def enum_choices(enum_type: Any) -> list[str]:
    """The short names a user may type, UNSPECIFIED left out."""
    prefix = enum_prefix(enum_type)
    return [value.name.removeprefix(prefix) for value in enum_type.DESCRIPTOR.values if value.number != 0]


def has_time(timestamp: timestamp_pb2.Timestamp) -> bool:
    return bool(timestamp.seconds or timestamp.nanos)


def fmt_time(timestamp: timestamp_pb2.Timestamp) -> str:
    if not has_time(timestamp):
        return "-"
    moment = timestamp.ToDatetime(tzinfo=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def fmt_clock(timestamp: timestamp_pb2.Timestamp) -> str:
    if not has_time(timestamp):
        return datetime.now().strftime("%H:%M:%S")
    return timestamp.ToDatetime(tzinfo=UTC).astimezone().strftime("%H:%M:%S")


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_duration(duration: duration_pb2.Duration) -> str:
    return fmt_seconds(duration.ToTimedelta().total_seconds())


def fmt_bool(value: bool) -> str:
    return "yes" if value else "no"


def fmt_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def short_uuid(uuid: str) -> str:
    return uuid[:8] if uuid else "-"


def or_dash(text: str) -> str:
    return text if text else "-"
