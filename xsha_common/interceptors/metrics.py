"""Prometheus RPC metrics: calls started, calls handled by status code, and handling latency per method."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any

import grpc
from grpc import aio

from xsha_common.interceptors._handlers import (
    AnyContext,
    AsyncContinuation,
    AsyncServerInterceptorBase,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappedHandlers,
    final_status_code,
    rpc_type,
    split_method,
    wrap_handler,
    wrap_handler_async,
)
from xsha_common.metrics import RpcMetrics


class _CallMetrics:
    """The started/handled/latency series of one method; `finish` runs once the call ended."""

    def __init__(self, metrics: RpcMetrics, full_method: str, handler: MethodHandler) -> None:
        service, method = split_method(full_method)
        kind = rpc_type(handler)
        self._labels = (service, method, kind)
        self._metrics = metrics

    def start(self) -> float:
        self._metrics.started.labels(*self._labels).inc()
        return time.monotonic()

    def finish(self, context: AnyContext, started: float, error: BaseException | None) -> None:
        code = final_status_code(context, error)
        self._metrics.handled.labels(*self._labels, code.name).inc()
        self._metrics.handling_seconds.labels(*self._labels).observe(time.monotonic() - started)


class MetricsInterceptor(ServerInterceptorBase):
    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        call_metrics = _CallMetrics(self._metrics, handler_call_details.method, handler)

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            started = call_metrics.start()
            error: BaseException | None = None
            try:
                return call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_metrics.finish(context, started, error)

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            started = call_metrics.start()
            error: BaseException | None = None
            try:
                yield from call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_metrics.finish(context, started, error)

        return wrap_handler(handler, unary=unary, stream=stream)


class AsyncMetricsInterceptor(AsyncServerInterceptorBase):
    """`MetricsInterceptor` for the asyncio server."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
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
        call_metrics = _CallMetrics(self._metrics, method, handler)

        async def unary(call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
            started = call_metrics.start()
            error: BaseException | None = None
            try:
                return await call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_metrics.finish(context, started, error)

        async def stream(
            call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = call_metrics.start()
            error: BaseException | None = None
            try:
                async with aclosing(call()) as responses:  # type: ignore[type-var]  # an async generator
                    async for response in responses:
                        yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call_metrics.finish(context, started, error)

        return wrap_handler_async(handler, unary=unary, stream=stream)
