"""Errors that servicers raise and clients decode: gRPC status codes with `google.rpc` rich details.

A servicer raises `ServiceError` (usually through one of the helpers below); the errors interceptor turns it into a
`google.rpc.Status` carrying an `ErrorInfo` (UPPER_SNAKE reason, our domain, metadata), a `BadRequest` when a field is
wrong and a `RetryInfo` when the client should retry later. Every message tells the caller what to do next.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "xsha.cloudstack.apache.org"

_REASON_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,62}$")


@dataclass(frozen=True)
class FieldViolation:
    """One wrong request field: `field` is a dotted path (e.g. `pool.master_url`), `description` says how to fix it."""

    field: str
    description: str
    reason: str = ""


MAX_MESSAGE_BYTES = 1024
MAX_DETAIL_BYTES = 256


def _clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes (on a character boundary), marked with an ellipsis."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode("utf-8", "ignore") + "\u2026"


class ServiceError(Exception):
    """An expected failure of an RPC, reported to the client as a rich gRPC status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] | None = None,
        retry_delay: float | timedelta | None = None,
    ) -> None:
        if code is grpc.StatusCode.OK:
            raise ValueError("ServiceError cannot carry StatusCode.OK")
        if not _REASON_PATTERN.match(reason):
            raise ValueError(f"ServiceError reason must be UPPER_SNAKE_CASE (at most 63 characters), got {reason!r}")
        # Bounded in UTF-8 bytes: the status travels in HTTP/2 headers, and a request echoing a megabyte field into
        # its error must get that error (INVALID_ARGUMENT), not RESOURCE_EXHAUSTED from the transport.
        message = _clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = {
            _clip(str(key), MAX_DETAIL_BYTES): _clip(str(value), MAX_DETAIL_BYTES)
            for key, value in (metadata or {}).items()
        }
        self.field_violations: tuple[FieldViolation, ...] = tuple(
            FieldViolation(_clip(v.field, MAX_DETAIL_BYTES), _clip(v.description, MAX_DETAIL_BYTES), v.reason)
            for v in field_violations or ()
        )
        if isinstance(retry_delay, timedelta):
            retry_delay = retry_delay.total_seconds()
        self.retry_delay: float | None = retry_delay

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message} [{self.reason}]"

    def to_status_proto(self) -> Any:
        """The `google.rpc.Status` message sent to the client (typed Any: google.rpc ships no stubs)."""
        details: list[Any] = [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        ]
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=violation.field, description=violation.description, reason=violation.reason
                        )
                        for violation in self.field_violations
                    ]
                )
            )
        if self.retry_delay is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_delay))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            wrapper = any_pb2.Any()
            wrapper.Pack(detail)
            packed.append(wrapper)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_grpc_status(self) -> grpc.Status:
        """The status to pass to `context.abort_with_status`."""
        return rpc_status.to_status(self.to_status_proto())


# --- helpers, one per status code the services use (see the gRPC status code guide) ------------------------------


def invalid_argument(
    field: str,
    description: str,
    *,
    reason: str = "INVALID_ARGUMENT",
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """A request field is wrong whatever the server state; `description` says how to fix it."""
    violation = FieldViolation(field, description, reason)
    return invalid_arguments([violation], reason=reason, message=message, metadata=metadata)


MAX_REPORTED_VIOLATIONS = 10


def invalid_arguments(
    violations: Sequence[FieldViolation],
    *,
    reason: str = "INVALID_ARGUMENT",
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """Several request fields are wrong; report them all at once so the caller fixes them in one go."""
    if not violations:
        raise ValueError("invalid_arguments needs at least one field violation")
    # A request with a thousand bad items must not produce an error larger than gRPC's 16 KiB header limit (the
    # client would see RESOURCE_EXHAUSTED instead of the answer): report each distinct problem once, at most
    # MAX_REPORTED_VIOLATIONS of them, and say how many more there are.
    distinct = list(dict.fromkeys(violations))
    more = len(distinct) - MAX_REPORTED_VIOLATIONS
    violations = distinct[:MAX_REPORTED_VIOLATIONS]
    if message is None:
        message = "Invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
        if more > 0:
            message += f"; and {more} more problem(s) like these"
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, message, reason, metadata=metadata, field_violations=violations
    )


def not_found(
    resource_type: str,
    resource_id: str,
    *,
    reason: str | None = None,
    hint: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """The named resource does not exist. `resource_type` is a singular noun, e.g. "pool"."""
    advice = hint or f"check the identifier, or list the existing {resource_type}s"
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"{resource_type} {resource_id!r} was not found; {advice}",
        reason or f"{_upper_snake(resource_type)}_NOT_FOUND",
        metadata={"resource_type": resource_type, "resource_id": resource_id, **(metadata or {})},
    )


def already_exists(
    resource_type: str,
    resource_id: str,
    *,
    reason: str | None = None,
    hint: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """A resource with that identity exists already."""
    advice = hint or f"use the existing {resource_type}, or update it instead of creating it"
    return ServiceError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"{resource_type} {resource_id!r} already exists; {advice}",
        reason or f"{_upper_snake(resource_type)}_ALREADY_EXISTS",
        metadata={"resource_type": resource_type, "resource_id": resource_id, **(metadata or {})},
    )


def failed_precondition(
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    field_violations: Sequence[FieldViolation] | None = None,
) -> ServiceError:
    """The system is not in the state the request needs; `message` says what must change first."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, message, reason, metadata=metadata, field_violations=field_violations
    )


def aborted(
    message: str,
    reason: str = "CONCURRENT_MODIFICATION",
    *,
    metadata: Mapping[str, str] | None = None,
    retry_delay: float | timedelta | None = None,
) -> ServiceError:
    """A concurrent change won the race; the caller should re-read and retry."""
    return ServiceError(grpc.StatusCode.ABORTED, message, reason, metadata=metadata, retry_delay=retry_delay)


def unavailable(
    message: str,
    reason: str = "DEPENDENCY_UNAVAILABLE",
    *,
    metadata: Mapping[str, str] | None = None,
    retry_delay: float | timedelta | None = None,
) -> ServiceError:
    """A dependency (database, XAPI, sync_service) is down; the caller should retry after `retry_delay`."""
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, reason, metadata=metadata, retry_delay=retry_delay)


def out_of_range(
    message: str,
    reason: str,
    *,
    field: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """A value is past a valid range that moves (e.g. a watch revision no longer retained: re-list)."""
    violations = [FieldViolation(field, message, reason)] if field else None
    return ServiceError(grpc.StatusCode.OUT_OF_RANGE, message, reason, metadata=metadata, field_violations=violations)


def deadline_exceeded(message: str, reason: str = "DEADLINE_EXCEEDED") -> ServiceError:
    """The caller's deadline leaves too little time to do the work; the caller should retry with a longer one."""
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message, reason)


# --- client side --------------------------------------------------------------------------------------------------


def error_details(rpc_error: grpc.RpcError) -> tuple[Any | None, Any | None]:
    """The `(ErrorInfo, BadRequest)` carried by a failed call, each None when absent.

    Typed Any because google.rpc ships no type stubs; the values are `error_details_pb2.ErrorInfo` and
    `error_details_pb2.BadRequest`.
    """
    error_info = _find_detail(rpc_error, error_details_pb2.ErrorInfo)
    bad_request = _find_detail(rpc_error, error_details_pb2.BadRequest)
    return error_info, bad_request


def retry_delay_seconds(rpc_error: grpc.RpcError) -> float | None:
    """The server's suggested retry delay (from `google.rpc.RetryInfo`), or None."""
    retry_info = _find_detail(rpc_error, error_details_pb2.RetryInfo)
    if retry_info is None:
        return None
    return float(retry_info.retry_delay.ToTimedelta().total_seconds())


def _find_detail(rpc_error: grpc.RpcError, message_type: Any) -> Any | None:
    if not isinstance(rpc_error, grpc.Call):
        return None
    status = rpc_status.from_call(rpc_error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            unpacked = message_type()
            detail.Unpack(unpacked)
            return unpacked
    return None


def _upper_snake(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper() or "RESOURCE"


__all__ = [
    "ERROR_DOMAIN",
    "FieldViolation",
    "ServiceError",
    "aborted",
    "already_exists",
    "deadline_exceeded",
    "error_details",
    "failed_precondition",
    "invalid_argument",
    "invalid_arguments",
    "not_found",
    "out_of_range",
    "retry_delay_seconds",
    "unavailable",
]
