"""Structured access log: one record per RPC with method, status code, duration, peer and request id.

Metadata values are never logged (they carry bearer tokens); only the `x-request-id` value, sanitised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, NamedTuple

import grpc
from grpc import aio
from grpc_health.v1 import health

from xsha_common.interceptors._handlers import (
    AnyContext,
    AsyncContinuation,
    AsyncServerInterceptorBase,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappedHandlers,
    context_request_id,
    final_status_code,
    split_method,
    wrap_handler,
    wrap_handler_async,
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
    """The access record of one call, written once it ended.

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

    def write(self, context: AnyContext, start: _CallStart, error: BaseException | None) -> None:
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
        call_log = _CallLog(self._logger, handler_call_details.method)

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            start = call_log.start(context)
            error: BaseException | None = None
            try:
                return call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_log.write(context, start, error)

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            start = call_log.start(context)
            error: BaseException | None = None
            try:
                yield from call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_log.write(context, start, error)

        return wrap_handler(handler, unary=unary, stream=stream)


class AsyncAccessLogInterceptor(AsyncServerInterceptorBase):
    """`AccessLogInterceptor` for the asyncio server."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER_NAME)
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self, continuation: AsyncContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: self._wrap(method, handler))

    def _wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        call_log = _CallLog(self._logger, method)

        async def unary(call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
            start = call_log.start(context)
            error: BaseException | None = None
            try:
                return await call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_log.write(context, start, error)

        async def stream(
            call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            start = call_log.start(context)
            error: BaseException | None = None
            try:
                async with aclosing(call()) as responses:  # type: ignore[type-var]  # an async generator
                    async for response in responses:
                        yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_log.write(context, start, error)

        return wrap_handler_async(handler, unary=unary, stream=stream)
