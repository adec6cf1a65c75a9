"""Structured access log: one record per RPC with method, status code, duration, peer and request id.

Metadata values are never logged (they carry bearer tokens); only the `x-request-id` value, sanitised.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health

from xsha_common.interceptors._handlers import (
    AnyContext,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappingAsyncInterceptor,
    context_request_id,
    final_status_code,
    observing_handler,
    observing_handler_async,
    split_method,
)

ACCESS_LOGGER_NAME = "xsha.access"

# Codes that mean the server (or a dependency) failed, as opposed to the client asking for something wrong.
_SERVER_FAULT_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
)
# Health probes arrive every few seconds; keep them out of the INFO log.
_QUIET_SERVICES = frozenset({health.SERVICE_NAME})


class _CallStart(NamedTuple):
    started: float
    peer: str
    request_id: str | None


class _CallLog:
    """The access record of one call, written once it ended: a `CallObserver`.

    What the record needs of the call is read when it starts: grpc's asyncio context must not be asked for its
    peer or metadata once the call is over (a cancelled stream's record is written after that, and grpc 1.85
    crashed the process when it was)."""

    def __init__(self, logger: logging.Logger, method: str) -> None:
        self._logger = logger
        self._method = method
        self._quiet = split_method(self._method)[0] in _QUIET_SERVICES

    @staticmethod
    def start(context: AnyContext) -> _CallStart:
        return _CallStart(time.monotonic(), context.peer(), context_request_id(context))

    def finish(self, context: AnyContext, start: _CallStart, error: BaseException | None) -> None:
        code = final_status_code(context, error)
        quiet_level = logging.DEBUG if self._quiet else logging.INFO
        level = logging.WARNING if code in _SERVER_FAULT_CODES else quiet_level
        if not self._logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": self._method,
            "code": code.name,
            "duration_ms": round((time.monotonic() - start.started) * 1000, 3),
            "peer": start.peer,
        }
        if start.request_id:
            fields["request_id"] = start.request_id
        self._logger.log(level, "rpc %s %s", self._method, code.name, extra=fields)


class AccessLogInterceptor(ServerInterceptorBase):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER_NAME)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return observing_handler(handler, _CallLog(self._logger, handler_call_details.method))


class AsyncAccessLogInterceptor(WrappingAsyncInterceptor):
    """`AccessLogInterceptor` for the asyncio server."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__()
        self._logger = logger or logging.getLogger(ACCESS_LOGGER_NAME)

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        return observing_handler_async(handler, _CallLog(self._logger, method))
