"""Shared plumbing for the server interceptors: wrapping an RpcMethodHandler of any of the four RPC kinds.

An interceptor supplies two "around" functions, one for unary responses and one for streamed responses. Each gets a
thunk that runs the real behaviour (for streams: returns the response iterator) and the call's context. Request
streams pass through untouched; a streamed response is observed until its iterator is exhausted, fails or is closed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

if TYPE_CHECKING:
    ServerInterceptorBase: TypeAlias = grpc.ServerInterceptor[Any, Any]
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:  # grpc's runtime classes are not generic; only the stubs are.
    ServerInterceptorBase = grpc.ServerInterceptor
    MethodHandler = grpc.RpcMethodHandler

Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], "MethodHandler | None"]
UnaryAround: TypeAlias = Callable[[Callable[[], Any], grpc.ServicerContext], Any]
StreamAround: TypeAlias = Callable[[Callable[[], Iterator[Any]], grpc.ServicerContext], Iterator[Any]]

REQUEST_ID_METADATA_KEY = "x-request-id"
_MAX_REQUEST_ID_LENGTH = 128
_NO_DEADLINE_THRESHOLD_SECONDS = 10 * 365 * 24 * 3600.0


def wrap_handler(handler: MethodHandler, *, unary: UnaryAround, stream: StreamAround) -> MethodHandler:
    """A handler of the same kind and serializers as `handler`, whose behaviour runs inside `unary` / `stream`."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        def unary_unary_behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            return unary(lambda: unary_unary(request, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary_behaviour, deserializer, serializer)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        def unary_stream_behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            return stream(lambda: unary_stream(request, context), context)

        return grpc.unary_stream_rpc_method_handler(unary_stream_behaviour, deserializer, serializer)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        def stream_unary_behaviour(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return unary(lambda: stream_unary(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary_behaviour, deserializer, serializer)
    if handler.stream_stream is not None:
        stream_stream = handler.stream_stream

        def stream_stream_behaviour(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            return stream(lambda: stream_stream(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream_behaviour, deserializer, serializer)
    raise ValueError("RpcMethodHandler has no behaviour")


def aborting_handler(like: MethodHandler, code: grpc.StatusCode, details: str) -> MethodHandler:
    """A handler of the same kind as `like` that fails every call with `code` without running the behaviour."""

    def refuse_unary(_call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    def refuse_stream(_call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(code, details)
        yield  # pragma: no cover - makes this a generator; abort always raises

    return wrap_handler(like, unary=refuse_unary, stream=refuse_stream)


def rpc_type(handler: MethodHandler) -> str:
    """The RPC kind as go-grpc-prometheus names it."""
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def split_method(full_method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` -> (`pkg.Service`, `Method`)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def metadata_value(metadata: Any, key: str) -> str | None:
    """The first value of `key` in invocation metadata (keys arrive lower-cased), decoded to str."""
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def request_id(metadata: Any) -> str | None:
    """The client's `x-request-id`, trimmed to printable characters so it is safe to log."""
    value = metadata_value(metadata, REQUEST_ID_METADATA_KEY)
    if not value:
        return None
    cleaned = "".join(char for char in value if char.isprintable())[:_MAX_REQUEST_ID_LENGTH]
    return cleaned or None


def final_status_code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with, as seen from an interceptor wrapped around the behaviour."""
    # ServicerContext.code() exists since grpcio 1.38 but is missing from the stubs.
    code_getter = getattr(context, "code", None)
    code = code_getter() if callable(code_getter) else None
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, GeneratorExit) or not context.is_active():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def seconds_remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the client's deadline, or None when the client set no deadline."""
    remaining = context.time_remaining()
    # Without a deadline grpc reports "infinite future" as a huge finite number (about 9.2e18 seconds).
    if remaining is None or math.isinf(remaining) or remaining > _NO_DEADLINE_THRESHOLD_SECONDS:
        return None
    return max(float(remaining), 0.0)
