"""What every xsha answer must look like, whatever the request: the allowed status codes per RPC and the shape of
an error (a message that says something; a `google.rpc.Status` with an UPPER_SNAKE `ErrorInfo` reason for errors
the service itself raises; no stack trace; no secret echoed back).

    outcome = invoke(channel, method, request, metadata)
    assert_outcome_allowed(method, outcome)                   # raises AssertionError listing every problem
    problems = check_outcome(method, outcome, implemented=False)   # or get the list
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

import grpc
from google.protobuf import text_format
from google.rpc import error_details_pb2, status_pb2

from .proto_strategies import MethodDescriptor, Outcome, all_rpc_methods, is_streaming

__all__ = [
    "ALLOWED_CODES",
    "NEVER_CODES",
    "SERVICE_ERROR_CODES",
    "allowed_codes",
    "allowed_status_table",
    "assert_outcome_allowed",
    "check_outcome",
    "error_info_reason",
    "rpc_key",
]

Code = grpc.StatusCode

# Answers any RPC may give to any request: success, or a documented refusal (SPEC section 4).
ALLOWED_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.ALREADY_EXISTS,
        Code.ABORTED,
        Code.OUT_OF_RANGE,
        Code.UNAVAILABLE,
    }
)
# A server bug (an uncaught exception becomes UNKNOWN; INTERNAL is a broken invariant): never acceptable.
NEVER_CODES: frozenset[grpc.StatusCode] = frozenset({Code.UNKNOWN, Code.INTERNAL})
# Codes xsha's own code raises (through xsha_common.errors), which therefore carry a rich status. UNAVAILABLE,
# DEADLINE_EXCEEDED, UNIMPLEMENTED and UNAUTHENTICATED may also come from gRPC itself, without one.
SERVICE_ERROR_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.ALREADY_EXISTS,
        Code.ABORTED,
        Code.OUT_OF_RANGE,
    }
)
_REASON = re.compile(r"^[A-Z][A-Z0-9_]*$")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/')


def rpc_key(method: MethodDescriptor) -> str:
    """``Service/Method``, the key of `allowed_status_table`."""
    return f"{method.containing_service.name}/{method.name}"


def allowed_codes(
    method: MethodDescriptor, *, authenticated: bool = True, implemented: bool = True
) -> frozenset[grpc.StatusCode]:
    """The codes ``method`` may answer.

    Streams may also end in DEADLINE_EXCEEDED (the client's short deadline hit an open watch). Without a valid
    token the only answer is UNAUTHENTICATED. An RPC not built yet may answer UNIMPLEMENTED.
    """
    codes = set(ALLOWED_CODES) if authenticated else {Code.UNAUTHENTICATED}
    if is_streaming(method):
        codes.add(Code.DEADLINE_EXCEEDED)
    if not implemented:
        codes.add(Code.UNIMPLEMENTED)
    return frozenset(codes)


def allowed_status_table(
    *, authenticated: bool = True, unimplemented: Collection[str] = ()
) -> dict[str, frozenset[grpc.StatusCode]]:
    """`allowed_codes` for every RPC of both services, keyed ``Service/Method``; ``unimplemented`` lists keys (or
    bare method names) of RPCs not built yet."""
    return {
        rpc_key(method): allowed_codes(
            method,
            authenticated=authenticated,
            implemented=rpc_key(method) not in unimplemented and method.name not in unimplemented,
        )
        for _, method in all_rpc_methods()
    }


def error_info_reason(outcome: Outcome) -> str | None:
    """The `ErrorInfo.reason` of the `google.rpc.Status` the call's trailers carry, None without one."""
    for key, value in outcome.trailing_metadata:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason: str = info.reason
                return reason
    return None


def check_outcome(
    method: MethodDescriptor,
    outcome: Outcome,
    *,
    authenticated: bool = True,
    implemented: bool = True,
    require_error_info: bool = True,
    secrets: Iterable[str] = (),
    extra_allowed: Mapping[str, Collection[grpc.StatusCode]] | None = None,
) -> list[str]:
    """Every way ``outcome`` breaks the contract for ``method``; empty when it is fine.

    ``require_error_info``: errors the service raises (`SERVICE_ERROR_CODES`) must carry an ErrorInfo with an
    UPPER_SNAKE reason. ``secrets``: strings (passwords, tokens) that must appear nowhere in the answer.
    ``extra_allowed`` adds codes per ``Service/Method`` for an RPC with a documented exception.
    """
    key = rpc_key(method)
    problems: list[str] = []
    allowed = set(allowed_codes(method, authenticated=authenticated, implemented=implemented))
    allowed.update((extra_allowed or {}).get(key, ()))
    code = outcome.code
    if code in NEVER_CODES:
        problems.append(f"{key} answered {code.name} (a server bug): {outcome.details!r}")
    elif code not in allowed:
        names = sorted(c.name for c in allowed)
        problems.append(f"{key} answered {code.name}, not one of {names}: {outcome.details!r}")
    is_error = code is not Code.OK and not (outcome.streaming and code is Code.DEADLINE_EXCEEDED)
    if is_error and not outcome.details.strip():
        problems.append(f"{key} answered {code.name} with no message saying what to do")
    if any(marker in outcome.details for marker in _TRACEBACK_MARKERS):
        problems.append(f"{key} leaked a stack trace in its message: {outcome.details[:200]!r}")
    if require_error_info and code in SERVICE_ERROR_CODES:
        reason = error_info_reason(outcome)
        if reason is None:
            problems.append(f"{key} answered {code.name} without a google.rpc.Status ErrorInfo")
        elif not _REASON.match(reason):
            problems.append(f"{key} ErrorInfo reason {reason!r} is not UPPER_SNAKE")
    problems.extend(_leaks(key, outcome, [s for s in secrets if s]))
    return problems


def assert_outcome_allowed(
    method: MethodDescriptor,
    outcome: Outcome,
    *,
    authenticated: bool = True,
    implemented: bool = True,
    require_error_info: bool = True,
    secrets: Iterable[str] = (),
    extra_allowed: Mapping[str, Collection[grpc.StatusCode]] | None = None,
) -> None:
    """`check_outcome`, raising AssertionError with every problem found."""
    problems = check_outcome(
        method,
        outcome,
        authenticated=authenticated,
        implemented=implemented,
        require_error_info=require_error_info,
        secrets=secrets,
        extra_allowed=extra_allowed,
    )
    if problems:
        raise AssertionError("\n".join(problems))


def _leaks(key: str, outcome: Outcome, secrets: list[str]) -> list[str]:
    if not secrets:
        return []
    places: dict[str, str] = {"message": outcome.details}
    for index, response in enumerate(outcome.responses):
        places[f"response {index}"] = text_format.MessageToString(response, as_utf8=True)
    for meta_key, value in outcome.trailing_metadata:
        places[f"trailer {meta_key}"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    leaked = [where for where, text in places.items() if any(secret in text for secret in secrets)]
    return [f"{key} echoed a secret in its {where}" for where in leaked]
