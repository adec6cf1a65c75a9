"""Structured access log: one record per RPC with method, status code, duration, peer and request id.

Metadata values are never logged (they carry bearer tokens); only the `x-request-id` value, sanitised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health

from xsha_common.interceptors._handlers import (
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    final_status_code,
    request_id,
    split_method,
    wrap_handler,
)

ACCESS_LOGGER_NAME = "xsha.access"

# Codes that mean the server (or a dependency) failed, as opposed to the client asking for something wrong.
_SERVER_FAULT_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
)
# Health probes arrive every few seconds; keep them out of the INFO log.
_QUIET_SERVICES = frozenset({health.SERVICE_NAME})


class AccessLogInterceptor(ServerInterceptorBase):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER_NAME)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        call_request_id = request_id(handler_call_details.invocation_metadata)
        quiet = split_method(method)[0] in _QUIET_SERVICES

        def log(context: grpc.ServicerContext, started: float, error: BaseException | None) -> None:
            code = final_status_code(context, error)
            quiet_level = logging.DEBUG if quiet else logging.INFO
            level = logging.WARNING if code in _SERVER_FAULT_CODES else quiet_level
            if not self._logger.isEnabledFor(level):
                return
            fields: dict[str, Any] = {
                "method": method,
                "code": code.name,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
                "peer": context.peer(),
            }
            if call_request_id:
                fields["request_id"] = call_request_id
            self._logger.log(level, "rpc %s %s", method, code.name, extra=fields)

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            error: BaseException | None = None
            try:
                return call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                log(context, started, error)

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.monotonic()
            error: BaseException | None = None
            try:
                yield from call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                log(context, started, error)

        return wrap_handler(handler, unary=unary, stream=stream)
