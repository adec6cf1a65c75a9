"""Deadline handling: refuse calls whose deadline passed before the handler ran; helpers for long handlers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from xsha_common.errors import deadline_exceeded
from xsha_common.interceptors._handlers import (
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    seconds_remaining,
    wrap_handler,
)

EXPIRED_DEADLINE_MESSAGE = (
    "The call's deadline passed before the server started handling it; retry with a longer deadline."
)


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds before the caller's deadline (0 when passed), or None when the caller set no deadline."""
    return seconds_remaining(context)


def require_time_left(context: grpc.ServicerContext, seconds: float = 0.0, *, doing: str = "this request") -> None:
    """Raise a DEADLINE_EXCEEDED `ServiceError` unless more than `seconds` remain before the caller's deadline.

    Handlers call this before expensive steps (a database transaction, a call to sync_service) so they stop early
    instead of doing work nobody waits for.
    """
    remaining = seconds_remaining(context)
    if remaining is not None and remaining <= seconds:
        raise deadline_exceeded(
            f"Not enough time left before the deadline for {doing} ({remaining:.3f}s left, about {seconds:.3f}s "
            "needed); retry with a longer deadline."
        )


class DeadlineInterceptor(ServerInterceptorBase):
    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            _refuse_if_expired(context)
            return call()

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            _refuse_if_expired(context)
            yield from call()

        return wrap_handler(handler, unary=unary, stream=stream)


def _refuse_if_expired(context: grpc.ServicerContext) -> None:
    remaining = seconds_remaining(context)
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, EXPIRED_DEADLINE_MESSAGE)
