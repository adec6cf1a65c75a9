"""Prometheus RPC metrics: calls started, calls handled by status code, and handling latency per method."""

from __future__ import annotations

import time

import grpc

from xsha_common.interceptors._handlers import (
    AnyContext,
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    WrappingAsyncInterceptor,
    final_status_code,
    observing_handler,
    observing_handler_async,
    rpc_type,
    split_method,
)
from xsha_common.metrics import RpcMetrics


class _CallMetrics:
    """The started/handled/latency series of one method: a `CallObserver`."""

    def __init__(self, metrics: RpcMetrics, full_method: str, handler: MethodHandler) -> None:
        service, method = split_method(full_method)
        kind = rpc_type(handler)
        self._labels = (service, method, kind)
        self._metrics = metrics

    def start(self, context: AnyContext) -> float:
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
        return observing_handler(handler, _CallMetrics(self._metrics, handler_call_details.method, handler))


class AsyncMetricsInterceptor(WrappingAsyncInterceptor):
    """`MetricsInterceptor` for the asyncio server."""

    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        return observing_handler_async(handler, _CallMetrics(self._metrics, method, handler))
