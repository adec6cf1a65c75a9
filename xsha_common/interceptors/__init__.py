"""gRPC server interceptors, one concern each. `default_interceptors` gives the order the server uses."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from xsha_common.interceptors._handlers import AsyncServerInterceptorBase, ServerInterceptorBase
from xsha_common.interceptors.auth import (
    AsyncBearerTokenAuthInterceptor,
    BearerTokenAuthInterceptor,
    bearer_token_metadata,
)
from xsha_common.interceptors.deadline import (
    AsyncDeadlineInterceptor,
    DeadlineInterceptor,
    require_time_left,
    time_left,
)
from xsha_common.interceptors.errors import AsyncErrorMappingInterceptor, ErrorMappingInterceptor
from xsha_common.interceptors.logging import AccessLogInterceptor, AsyncAccessLogInterceptor
from xsha_common.interceptors.metrics import AsyncMetricsInterceptor, MetricsInterceptor
from xsha_common.metrics import RpcMetrics


def default_interceptors(
    *,
    rpc_metrics: RpcMetrics,
    auth_tokens: Iterable[str] | None,
    access_logger: logging.Logger | None = None,
    error_logger: logging.Logger | None = None,
) -> list[ServerInterceptorBase]:
    """Outermost first: metrics and the access log see every outcome, including auth refusals and mapped errors;
    errors are mapped innermost so the outer interceptors observe the final status code. `auth_tokens=None` means
    authentication is disabled."""
    interceptors: list[ServerInterceptorBase] = [MetricsInterceptor(rpc_metrics), AccessLogInterceptor(access_logger)]
    if auth_tokens is not None:
        interceptors.append(BearerTokenAuthInterceptor(auth_tokens))
    interceptors += [DeadlineInterceptor(), ErrorMappingInterceptor(error_logger)]
    return interceptors


def default_async_interceptors(
    *,
    rpc_metrics: RpcMetrics,
    auth_tokens: Iterable[str] | None,
    access_logger: logging.Logger | None = None,
    error_logger: logging.Logger | None = None,
) -> list[AsyncServerInterceptorBase]:
    """`default_interceptors` for the asyncio server: the same concerns in the same order."""
    interceptors: list[AsyncServerInterceptorBase] = [
        AsyncMetricsInterceptor(rpc_metrics),
        AsyncAccessLogInterceptor(access_logger),
    ]
    if auth_tokens is not None:
        interceptors.append(AsyncBearerTokenAuthInterceptor(auth_tokens))
    interceptors += [AsyncDeadlineInterceptor(), AsyncErrorMappingInterceptor(error_logger)]
    return interceptors


__all__ = [
    "AccessLogInterceptor",
    "AsyncAccessLogInterceptor",
    "AsyncBearerTokenAuthInterceptor",
    "AsyncDeadlineInterceptor",
    "AsyncErrorMappingInterceptor",
    "AsyncMetricsInterceptor",
    "BearerTokenAuthInterceptor",
    "DeadlineInterceptor",
    "ErrorMappingInterceptor",
    "MetricsInterceptor",
    "bearer_token_metadata",
    "default_async_interceptors",
    "default_interceptors",
    "require_time_left",
    "time_left",
]
