"""Prometheus RPC metrics: calls started, calls handled by status code, and handling latency per method."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from xsha_common.interceptors._handlers import (
    Continuation,
    MethodHandler,
    ServerInterceptorBase,
    final_status_code,
    rpc_type,
    split_method,
    wrap_handler,
)
from xsha_common.metrics import RpcMetrics


class MetricsInterceptor(ServerInterceptorBase):
    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)
        kind = rpc_type(handler)
        metrics = self._metrics

        def record(context: grpc.ServicerContext, started: float, error: BaseException | None) -> None:
            code = final_status_code(context, error)
            metrics.handled.labels(service, method, kind, code.name).inc()
            metrics.handling_seconds.labels(service, method, kind).observe(time.monotonic() - started)

        def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            metrics.started.labels(service, method, kind).inc()
            started = time.monotonic()
            error: BaseException | None = None
            try:
                return call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                record(context, started, error)

        def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
            metrics.started.labels(service, method, kind).inc()
            started = time.monotonic()
            error: BaseException | None = None
            try:
                yield from call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                record(context, started, error)

        return wrap_handler(handler, unary=unary, stream=stream)
