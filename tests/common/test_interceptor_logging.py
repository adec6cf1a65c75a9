"""Access-log interceptor: one structured record per RPC, never a metadata value."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest

from xsha_common.interceptors.logging import ACCESS_LOGGER_NAME
from xsha_common.logging import JsonFormatter

from .conftest import AUTH, GOOD_TOKEN, call_unary, method, rpc, rpc_error


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER_NAME]


def test_a_call_is_logged_with_method_code_duration_peer_and_request_id(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = (*AUTH, ("x-request-id", "req-42"), ("x-custom", "private-value"))
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        call_unary(channel, "Unary", b"x", metadata=metadata, timeout=5)
    (record,) = access_records(caplog)
    fields = vars(record)
    assert fields["method"] == method("Unary")
    assert fields["code"] == "OK"
    assert fields["duration_ms"] >= 0
    assert fields["peer"].startswith("ipv4:127.0.0.1:")
    assert fields["request_id"] == "req-42"
    line = JsonFormatter().format(record)
    assert GOOD_TOKEN not in line and "private-value" not in line
    assert json.loads(line)["code"] == "OK"


def test_each_call_of_a_method_is_logged_with_its_own_request_id(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    # The asyncio server builds a method's wrappers once: per-call facts must come from each call.
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        for request_id in ("first-1", "second-2"):
            call_unary(channel, "Unary", b"x", metadata=(*AUTH, ("x-request-id", request_id)), timeout=5)
        call_unary(channel, "Unary", b"x", metadata=AUTH, timeout=5)
    assert [vars(record).get("request_id") for record in access_records(caplog)] == ["first-1", "second-2", None]


def test_refused_and_failed_calls_are_logged_with_their_code(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        rpc_error(lambda: call_unary(channel, "Unary", b"x", metadata=(("authorization", "Bearer wrong"),), timeout=5))
        rpc_error(lambda: call_unary(channel, "Crash", b"x", metadata=AUTH, timeout=5))
    records = access_records(caplog)
    assert [vars(record)["code"] for record in records] == ["UNAUTHENTICATED", "INTERNAL"]
    assert records[1].levelno == logging.WARNING
    assert all("wrong" not in JsonFormatter().format(record) for record in records)


def test_a_stream_is_logged_once_it_is_exhausted_with_its_final_code(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        assert list(rpc(channel, "unary_stream", "ServerStream")(b"a,b", metadata=AUTH, timeout=5)) == [b"a", b"b"]
        failing = rpc(channel, "unary_stream", "InvalidMidStream")(b"", metadata=AUTH, timeout=5)
        rpc_error(lambda: list(failing))
    codes = [(vars(record)["method"], vars(record)["code"]) for record in access_records(caplog)]
    assert codes == [(method("ServerStream"), "OK"), (method("InvalidMidStream"), "NOT_FOUND")]


def test_health_checks_log_at_debug_only(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert access_records(caplog) == []
    with caplog.at_level(logging.DEBUG, logger=ACCESS_LOGGER_NAME):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert [vars(record)["code"] for record in access_records(caplog)] == ["OK"]


def test_request_ids_are_sanitised(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        call_unary(channel, "Unary", b"", metadata=(*AUTH, ("x-request-id", "a" * 500)), timeout=5)
    (record,) = access_records(caplog)
    assert vars(record)["request_id"] == "a" * 128
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.handle(record)
    assert "\n" not in stream.getvalue().rstrip("\n")
