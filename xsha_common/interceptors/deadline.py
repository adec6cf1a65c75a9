"""Deadline handling: refuse calls whose deadline passed before the handler ran; helpers for long handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any

import grpc
from grpc import aio

from xsha_common.errors import deadline_exceeded
from xsha_common.interceptors._handlers import (
    AnyContext,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappingAsyncInterceptor,
    end_with_status,
    seconds_remaining,
    wrap_handler,
    wrap_handler_async,
)

EXPIRED_DEADLINE_MESSAGE = (
    "The call's deadline passed before the server started handling it; retry with a longer deadline."
)


def time_left(context: AnyContext) -> float | None:
    """Seconds before the caller's deadline (0 when passed), or None when the caller set no deadline."""
    return seconds_remaining(context)


def require_time_left(context: AnyContext, seconds: float = 0.0, *, doing: str = "this request") -> None:
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


class AsyncDeadlineInterceptor(WrappingAsyncInterceptor):
    """`DeadlineInterceptor` for the asyncio server."""

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        return _refusing_when_expired(handler)


def _refusing_when_expired(handler: MethodHandler) -> MethodHandler:
    async def unary(call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
        if _expired(context):
            end_with_status(context, grpc.StatusCode.DEADLINE_EXCEEDED, EXPIRED_DEADLINE_MESSAGE)
            return None
        return await call()

    async def stream(
        call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if _expired(context):
            end_with_status(context, grpc.StatusCode.DEADLINE_EXCEEDED, EXPIRED_DEADLINE_MESSAGE)
            return
        async with aclosing(call()) as responses:  # type: ignore[type-var]  # an async generator
            async for response in responses:
                yield response

    return wrap_handler_async(handler, unary=unary, stream=stream)


def _expired(context: AnyContext) -> bool:
    remaining = seconds_remaining(context)
    return remaining is not None and remaining <= 0


def _refuse_if_expired(context: grpc.ServicerContext) -> None:
    if _expired(context):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, EXPIRED_DEADLINE_MESSAGE)
