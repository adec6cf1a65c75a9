"""Structured log formats and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from xsha_common.logging import clear_registered_secrets, register_secret, setup_logging


@pytest.fixture
def log_stream() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    stream = io.StringIO()
    yield stream, logging.getLogger("xsha.test.logging")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "xsha":
            root.removeHandler(handler)
    clear_registered_secrets()


def test_json_lines_carry_level_logger_message_and_fields(log_stream) -> None:
    stream, logger = log_stream
    setup_logging("INFO", "json", stream=stream)
    logger.info("pool %s connected", "p1", extra={"pool": "p1", "lag_ms": 12})
    logger.debug("hidden at INFO")
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "xsha.test.logging"
    assert entry["msg"] == "pool p1 connected" and entry["pool"] == "p1" and entry["lag_ms"] == 12
    assert entry["ts"].endswith("Z")


def test_text_format_is_key_value_with_quoting(log_stream) -> None:
    stream, logger = log_stream
    setup_logging("DEBUG", "text", stream=stream)
    logger.warning("two words", extra={"method": "/a.B/C", "note": 'say "hi"'})
    line = stream.getvalue().strip()
    assert 'level=WARNING logger=xsha.test.logging msg="two words" method=/a.B/C note="say \\"hi\\""' in line


def test_registered_secrets_are_redacted_from_messages_args_fields_and_tracebacks(log_stream) -> None:
    stream, logger = log_stream
    setup_logging("INFO", "json", stream=stream)
    register_secret("tok-123456")
    register_secret("")  # ignored, must not redact everything
    logger.info("token tok-123456 and arg %s", "tok-123456", extra={"header": "Bearer tok-123456", "n": ["tok-123456"]})
    try:
        raise RuntimeError("failed with tok-123456")
    except RuntimeError:
        logger.exception("boom")
    output = stream.getvalue()
    assert "tok-123456" not in output
    first, second = (json.loads(line) for line in output.splitlines())
    assert first["msg"] == "token *** and arg ***" and first["header"] == "Bearer ***" and first["n"] == ["***"]
    assert "RuntimeError: failed with ***" in second["exc"]


def test_setup_rejects_unknown_level_or_format() -> None:
    with pytest.raises(ValueError):
        setup_logging("LOUD", "json")
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")
