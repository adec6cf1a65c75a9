"""Maps exceptions raised by servicers to gRPC statuses.

`ServiceError` becomes its rich `google.rpc.Status`; a transient database error (connection lost, lock timeout)
becomes UNAVAILABLE (DATABASE_UNAVAILABLE), so callers retry. Any other exception becomes INTERNAL with a generic
message: the traceback goes to the server log (with the request id, if the client sent one), never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from xsha_common.db import is_transient_db_error
from xsha_common.errors import ServiceError, unavailable
from xsha_common.interceptors._handlers import (
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    final_status_code,
    request_id,
    wrap_handler,
)

ERRORS_LOGGER_NAME = "xsha.errors"


def internal_error_message(call_request_id: str | None) -> str:
    reference = f" (request id {call_request_id})" if call_request_id else ""
    return (
        f"Internal server error{reference}; the server logged the details. Retry the call; if it keeps failing, "
        "report it to the operator with the time and request id."
    )


class ErrorMappingInterceptor(ServerInterceptorBase):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ERRORS_LOGGER_NAME)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        call_request_id = request_id(handler_call_details.invocation_metadata)

        def fail(context: grpc.ServicerContext, error: Exception) -> NoReturn:
            if isinstance(error, ServiceError):
                context.abort_with_status(error.to_grpc_status())
            fields: dict[str, Any] = {"method": method}
            if call_request_id:
                fields["request_id"] = call_request_id
            if is_transient_db_error(error):
                # The database is down or busy (a cut link, a lock): a dependency outage the caller retries,
                # documented as UNAVAILABLE, not a server bug.
                self._logger.warning("database unavailable in %s: %s", method, type(error).__name__, extra=fields)
                context.abort_with_status(
                    unavailable(
                        "The service's database is unavailable right now; retry the call in a few seconds.",
                        "DATABASE_UNAVAILABLE",
                        retry_delay=1.0,
                    ).to_grpc_status()
                )
            self._logger.error("unexpected exception in %s", method, exc_info=error, extra=fields)
            context.abort(grpc.StatusCode.INTERNAL, internal_error_message(call_request_id))

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


def _already_aborted(context: grpc.ServicerContext, error: Exception) -> bool:
    """True when the handler called `context.abort` itself: grpc then raises a bare Exception we must let through."""
    return not isinstance(error, ServiceError) and final_status_code(context, None) is not grpc.StatusCode.OK
