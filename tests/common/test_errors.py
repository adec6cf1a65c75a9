"""ServiceError and its helpers, without a server."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2

from xsha_common import errors
from xsha_common.errors import ERROR_DOMAIN, FieldViolation, ServiceError


def unpack(status: object, message_type: type) -> object:
    for detail in status.details:  # type: ignore[attr-defined]
        if detail.Is(message_type.DESCRIPTOR):  # type: ignore[attr-defined]
            value = message_type()
            detail.Unpack(value)
            return value
    return None


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (
            errors.invalid_argument("vm_id", "must be a UUID; copy it from ListVms"),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (errors.not_found("vm", "vm-1"), "NOT_FOUND", "VM_NOT_FOUND"),
        (errors.already_exists("pool", "p"), "ALREADY_EXISTS", "POOL_ALREADY_EXISTS"),
        (errors.failed_precondition("Disable HA first.", "HA_ENABLED"), "FAILED_PRECONDITION", "HA_ENABLED"),
        (errors.aborted("Re-read the VM and retry."), "ABORTED", "CONCURRENT_MODIFICATION"),
        (errors.unavailable("XAPI is down; retry later."), "UNAVAILABLE", "DEPENDENCY_UNAVAILABLE"),
        (errors.out_of_range("Re-list.", "REVISION_COMPACTED", field="revision"), "OUT_OF_RANGE", "REVISION_COMPACTED"),
    ],
)
def test_helpers_set_code_and_reason(error: ServiceError, code: str, reason: str) -> None:
    assert error.code is getattr(grpc.StatusCode, code)
    status = error.to_status_proto()
    assert status.code == error.code.value[0]
    info = unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)  # type: ignore[attr-defined]


def test_field_violations_and_retry_delay_are_encoded() -> None:
    error = errors.unavailable("sync_service is unreachable; retry shortly.", retry_delay=timedelta(seconds=2.5))
    retry = unpack(error.to_status_proto(), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=2.5)  # type: ignore[attr-defined]
    error = errors.invalid_argument("page_size", "must be at most 1000; lower it", reason="PAGE_SIZE_TOO_LARGE")
    bad_request = unpack(error.to_status_proto(), error_details_pb2.BadRequest)
    (violation,) = bad_request.field_violations  # type: ignore[attr-defined]
    assert (violation.field, violation.reason) == ("page_size", "PAGE_SIZE_TOO_LARGE")
    assert error.message == "Invalid request: page_size: must be at most 1000; lower it"


def test_grpc_status_carries_the_details_in_trailing_metadata() -> None:
    status = errors.not_found("pool", "p1").to_grpc_status()
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert [key for key, _ in status.trailing_metadata] == ["grpc-status-details-bin"]


@pytest.mark.parametrize("reason", ["lower_case", "Mixed", "1STARTS_WITH_DIGIT", "", "A" * 64])
def test_reasons_must_be_upper_snake(reason: str) -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        ServiceError(grpc.StatusCode.INTERNAL, "m", reason)


def test_ok_is_not_an_error_and_violations_are_required() -> None:
    with pytest.raises(ValueError):
        ServiceError(grpc.StatusCode.OK, "m", "OK")
    with pytest.raises(ValueError):
        errors.invalid_arguments([])
    assert str(errors.failed_precondition("Pin the cluster first.", "NOT_PINNED")) == (
        "FAILED_PRECONDITION: Pin the cluster first. [NOT_PINNED]"
    )
    assert FieldViolation("a", "b").reason == ""


def test_error_details_of_a_non_call_error_is_empty() -> None:
    class Bare(grpc.RpcError):
        pass

    assert errors.error_details(Bare()) == (None, None)
    assert errors.retry_delay_seconds(Bare()) is None
