"""Error-mapping interceptor: ServiceError -> rich status; anything else -> INTERNAL without internals."""

from __future__ import annotations

import logging

import grpc
import pytest

from xsha_common.errors import ERROR_DOMAIN
from xsha_common.interceptors.errors import ERRORS_LOGGER_NAME

from .conftest import AUTH, call_unary, details_of, method, rpc, rpc_error


def test_service_error_round_trips_code_reason_metadata_and_field_violations(channel: grpc.Channel) -> None:
    error = rpc_error(lambda: call_unary(channel, "Invalid", b"", metadata=AUTH, timeout=5))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("Invalid request: pool.master_url: must be an https:// URL")
    info, bad_request = details_of(error)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INVALID_POOL", ERROR_DOMAIN, {"pool": "p1"})
    violations = [(v.field, v.reason) for v in bad_request.field_violations]
    assert violations == [("pool.master_url", ""), ("page_size", "PAGE_SIZE_TOO_LARGE")]


def test_not_found_carries_the_resource(channel: grpc.Channel) -> None:
    error = rpc_error(lambda: call_unary(channel, "Missing", b"pool-7", metadata=AUTH, timeout=5))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "list the existing pools" in error.details()
    info, bad_request = details_of(error)
    assert info.reason == "POOL_NOT_FOUND"
    assert dict(info.metadata) == {"resource_type": "pool", "resource_id": "pool-7"}
    assert bad_request is None


def test_unexpected_exception_is_internal_with_a_generic_message_and_a_logged_traceback(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger=ERRORS_LOGGER_NAME):
        error = rpc_error(
            lambda: call_unary(channel, "Crash", b"", metadata=(*AUTH, ("x-request-id", "req-7")), timeout=5)
        )
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.details() and "RuntimeError" not in error.details()
    assert "request id req-7" in error.details()
    assert details_of(error) == (None, None)
    (record,) = [r for r in caplog.records if r.name == ERRORS_LOGGER_NAME]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert vars(record)["method"] == method("Crash") and vars(record)["request_id"] == "req-7"


def test_each_failed_call_names_its_own_request_id(channel: grpc.Channel) -> None:
    for request_id in ("req-8", "req-9"):
        metadata = (*AUTH, ("x-request-id", request_id))
        error = rpc_error(lambda: call_unary(channel, "Crash", b"", metadata=metadata, timeout=5))  # noqa: B023
        assert f"request id {request_id}" in error.details()


def test_errors_raised_mid_stream_are_mapped(channel: grpc.Channel) -> None:
    responses = rpc(channel, "unary_stream", "CrashMidStream")(b"", metadata=AUTH, timeout=5)
    assert next(responses) == b"first"
    error = rpc_error(lambda: next(responses))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "internal-key-detail" not in error.details()

    responses = rpc(channel, "unary_stream", "InvalidMidStream")(b"", metadata=AUTH, timeout=5)
    assert next(responses) == b"first"
    error = rpc_error(lambda: next(responses))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    info, _ = details_of(error)
    assert info.reason == "VM_NOT_FOUND"


def test_a_handler_calling_context_abort_keeps_its_own_status(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger=ERRORS_LOGGER_NAME):
        error = rpc_error(lambda: call_unary(channel, "SelfAbort", b"", metadata=AUTH, timeout=5))
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "handler aborted on its own")
    assert [r for r in caplog.records if r.name == ERRORS_LOGGER_NAME] == []
