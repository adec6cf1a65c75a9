"""Maps exceptions raised by servicers to gRPC statuses.

`ServiceError` becomes its rich `google.rpc.Status`; a transient database error (connection lost, lock timeout)
becomes UNAVAILABLE (DATABASE_UNAVAILABLE), so callers retry. Any other exception becomes INTERNAL with a generic
message: the traceback goes to the server log (with the request id, if the client sent one), never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from grpc import aio

from xsha_common.db import is_transient_db_error
from xsha_common.errors import ServiceError, unavailable
from xsha_common.interceptors._handlers import (
    AnyContext,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappingAsyncInterceptor,
    context_request_id,
    end_with_status,
    final_status_code,
    wrap_handler,
    wrap_handler_async,
)

ERRORS_LOGGER_NAME = "xsha.errors"


def internal_error_message(call_request_id: str | None) -> str:
    reference = f" (request id {call_request_id})" if call_request_id else ""
    return (
        f"Internal server error{reference}; the server logged the details. Retry the call; if it keeps failing, "
        "report it to the operator with the time and request id."
    )


class _ErrorMapping:
    """The status one call's exception becomes (logging what the client must not see)."""

    def __init__(self, logger: logging.Logger, method: str) -> None:
        self._logger = logger
        self._method = method

    def status(self, call_request_id: str | None, error: Exception) -> grpc.Status:
        """`call_request_id` is read when the call starts: grpc's asyncio context must not be asked for its
        metadata once the call is over, which a failing stream may be."""
        if isinstance(error, ServiceError):
            return error.to_grpc_status()
        fields: dict[str, Any] = {"method": self._method}
        if call_request_id:
            fields["request_id"] = call_request_id
        if is_transient_db_error(error):
            # The database is down or busy (a cut link, a lock): a dependency outage the caller retries,
            # documented as UNAVAILABLE, not a server bug.
            self._logger.warning("database unavailable in %s: %s", self._method, type(error).__name__, extra=fields)
            return unavailable(
                "The service's database is unavailable right now; retry the call in a few seconds.",
                "DATABASE_UNAVAILABLE",
                retry_delay=1.0,
            ).to_grpc_status()
        self._logger.error("unexpected exception in %s", self._method, exc_info=error, extra=fields)
        return _InternalStatus(internal_error_message(call_request_id))


class _InternalStatus(grpc.Status):
    def __init__(self, details: str) -> None:
        self.code = grpc.StatusCode.INTERNAL
        self.details = details
        self.trailing_metadata = ()


class ErrorMappingInterceptor(ServerInterceptorBase):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ERRORS_LOGGER_NAME)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        mapping = _ErrorMapping(self._logger, handler_call_details.method)

        def fail(context: grpc.ServicerContext, error: Exception) -> NoReturn:
            context.abort_with_status(mapping.status(context_request_id(context), error))

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            try:
                return call()
            except Exception as error:
                if _already_aborted(context, error):
                    raise
                fail(context, error)

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from call()
            except Exception as error:
                if _already_aborted(context, error):
                    raise
                fail(context, error)

        return wrap_handler(handler, unary=unary, stream=stream)


class AsyncErrorMappingInterceptor(WrappingAsyncInterceptor):
    """`ErrorMappingInterceptor` for the asyncio server."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__()
        self._logger = logger or logging.getLogger(ERRORS_LOGGER_NAME)

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        mapping = _ErrorMapping(self._logger, method)

        async def unary(call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await call()
            except Exception as error:
                if _already_aborted(context, error):
                    raise
                # Still in the call: a unary call ends only once this returns (a cancelled one raises
                # CancelledError, which is not caught here).
                _end_with(context, mapping.status(context_request_id(context), error))

        async def stream(
            call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call_request_id = context_request_id(context)
            try:
                async with aclosing(call()) as responses:  # type: ignore[type-var]  # an async generator
                    async for response in responses:
                        yield response
            except Exception as error:
                if _already_aborted(context, error):
                    raise
                _end_with(context, mapping.status(call_request_id, error))

        return wrap_handler_async(handler, unary=unary, stream=stream)


def _end_with(context: aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    end_with_status(context, status.code, status.details, status.trailing_metadata)


def _already_aborted(context: AnyContext, error: Exception) -> bool:
    """True when the handler called `context.abort` itself: grpc then raises an exception we must let through."""
    return not isinstance(error, ServiceError) and final_status_code(context, None) is not grpc.StatusCode.OK
