"""Structured logging for both services: JSON lines or key=value, with secret values redacted from every record.

Code logs with the standard library and passes structured fields as `extra`:
`logger.info("pool connected", extra={"pool": pool_id, "lag_ms": 12})`. Secrets (tokens, passwords) are registered
once with `register_secret`; `SecretRedactionFilter` then replaces them in messages, fields and tracebacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import threading
from typing import IO, Any, Final

REDACTED: Final = "***"
LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else on a record came from `extra` and is a structured field.
_STANDARD_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)

_secrets_lock = threading.Lock()
_secret_values: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Redact `value` from every log record from now on. Empty values are ignored."""
    global _secret_values
    if not value:
        return
    with _secrets_lock:
        if value not in _secret_values:
            # Longest first, so a secret containing another is replaced whole.
            _secret_values = tuple(sorted((*_secret_values, value), key=len, reverse=True))


def clear_registered_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_values
    with _secrets_lock:
        _secret_values = ()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


class SecretRedactionFilter(logging.Filter):
    """Rewrites each record so no registered secret survives in its message, fields or traceback."""

    _exception_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secret_values:
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_RECORD_ATTRIBUTES:
                setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields attached to a record."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_RECORD_ATTRIBUTES and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    moment = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the structured fields, then exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in structured_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=INFO logger=x msg="..." key=value`, values quoted when they contain spaces or quotes."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname),
            ("logger", record.name),
            ("msg", record.getMessage()),
            *structured_fields(record).items(),
        ]
        line = " ".join(f"{key}={_quote(value)}" for key, value in pairs)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(char in text for char in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup_logging(level: str = "INFO", log_format: str = "json", *, stream: IO[str] | None = None) -> logging.Handler:
    """Configure the root logger once for the process: one stream handler, the chosen format, secret redaction.

    Returns the handler (tests attach it to a StringIO). Calling again replaces the previous xsha handler.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    level_name = level.upper()
    if level_name not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    handler.addFilter(SecretRedactionFilter())
    handler.set_name("xsha")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "xsha":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level_name)
    # grpc's own logger is chatty at DEBUG; keep it at WARNING unless the whole process debugs.
    logging.getLogger("grpc").setLevel(logging.DEBUG if level_name == "DEBUG" else logging.WARNING)
    return handler


__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "REDACTED",
    "JsonFormatter",
    "KeyValueFormatter",
    "SecretRedactionFilter",
    "clear_registered_secrets",
    "redact",
    "register_secret",
    "setup_logging",
    "structured_fields",
]
