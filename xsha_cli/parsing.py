"""Parsing of command-line values: enum names as operators type them, durations, key=value pairs."""

from __future__ import annotations

import re
from typing import Any

import typer
from google.protobuf import duration_pb2

from xsha_cli.output import enum_choices, enum_prefix

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)?")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_enum(enum_type: Any, text: str, *, option: str) -> Any:
    """An enum value from what an operator types: `native`, `NATIVE`, `HA_MODE_NATIVE`, or CloudStack's
    `PowerOn` / `DomainRouter` spelling; `typer.BadParameter` (exit code 2) listing the choices otherwise.
    Typed Any: the value is the generated enum's ValueType, which the stubs define per enum."""
    normalised = _CAMEL_BOUNDARY.sub("_", text.strip()).replace("-", "_").upper()
    prefix = enum_prefix(enum_type)
    short = normalised.removeprefix(prefix)
    for value in enum_type.DESCRIPTOR.values:
        if value.number != 0 and value.name == prefix + short:
            return int(value.number)
    choices = ", ".join(choice.lower().replace("_", "-") for choice in enum_choices(enum_type))
    raise typer.BadParameter(f"{text!r} is not one of: {choices}", param_hint=option)


def parse_enums(enum_type: Any, texts: list[str] | None, *, option: str) -> list[Any]:
    """Repeated or comma-separated enum values."""
    values: list[Any] = []
    for text in texts or []:
        values += [parse_enum(enum_type, part, option=option) for part in text.split(",") if part.strip()]
    return values


def parse_seconds(text: str, *, option: str) -> float:
    """`90`, `90s`, `2m`, `1m30s`, `1h`, `200ms` -> seconds."""
    compact = text.strip().replace(" ", "")
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise typer.BadParameter(f"{text!r} is not a duration; use e.g. 90s, 2m, 1m30s, 1h or 200ms", param_hint=option)
    return total


def duration_proto(text: str, *, option: str) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(parse_seconds(text, option=option) * 1e9))
    return duration


def parse_bool(text: str, *, option: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1", "native"):
        return True
    if lowered in ("false", "no", "off", "0", "cloudstack"):
        return False
    raise typer.BadParameter(f"{text!r} is not true or false", param_hint=option)


def parse_assignment(text: str, *, option: str) -> tuple[str, str]:
    """`key=value` -> (key, value)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip() or not value.strip():
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE", param_hint=option)
    return key.strip(), value.strip()
