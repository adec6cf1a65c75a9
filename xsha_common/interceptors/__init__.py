"""gRPC server interceptors, one concern each. `default_interceptors` gives the order the server uses."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from xsha_common.interceptors._handlers import ServerInterceptorBase
from xsha_common.interceptors.auth import BearerTokenAuthInterceptor, bearer_token_metadata
from xsha_common.interceptors.deadline import DeadlineInterceptor, require_time_left, time_left
from xsha_common.interceptors.errors import ErrorMappingInterceptor
from xsha_common.interceptors.logging import AccessLogInterceptor
from xsha_common.interceptors.metrics import MetricsInterceptor
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


__all__ = [
    "AccessLogInterceptor",
    "BearerTokenAuthInterceptor",
    "DeadlineInterceptor",
    "ErrorMappingInterceptor",
    "MetricsInterceptor",
    "bearer_token_metadata",
    "default_interceptors",
    "require_time_left",
    "time_left",
]
