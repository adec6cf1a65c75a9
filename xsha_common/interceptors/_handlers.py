"""Shared plumbing for the server interceptors: wrapping an RpcMethodHandler of any of the four RPC kinds.

An interceptor supplies two "around" functions, one for unary responses and one for streamed responses. Each gets a
thunk that runs the real behaviour (for streams: returns the response iterator) and the call's context. Request
streams pass through untouched; a streamed response is observed until its iterator is exhausted, fails or is closed.

Each interceptor comes in two forms over the same checks and records: one for the thread-pool server (`grpc.server`)
and one for the asyncio server (`grpc.aio.server`), whose behaviours are coroutines and async generators.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import grpc
from grpc import aio

if TYPE_CHECKING:
    ServerInterceptorBase: TypeAlias = grpc.ServerInterceptor[Any, Any]
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

    class AsyncServerInterceptorBase:
        # Not the stubs' aio.ServerInterceptor: grpc passes None on for an unknown method, which they leave out.
        async def intercept_service(
            self, continuation: AsyncContinuation, handler_call_details: grpc.HandlerCallDetails
        ) -> MethodHandler | None: ...

else:  # grpc's runtime classes are not generic; only the stubs are.
    ServerInterceptorBase = grpc.ServerInterceptor
    MethodHandler = grpc.RpcMethodHandler
    AsyncServerInterceptorBase = aio.ServerInterceptor

Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], "MethodHandler | None"]
AsyncContinuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["MethodHandler | None"]]
UnaryAround: TypeAlias = Callable[[Callable[[], Any], grpc.ServicerContext], Any]
StreamAround: TypeAlias = Callable[[Callable[[], Iterator[Any]], grpc.ServicerContext], Iterator[Any]]
AsyncUnaryAround: TypeAlias = Callable[[Callable[[], Awaitable[Any]], aio.ServicerContext[Any, Any]], Awaitable[Any]]
AsyncStreamAround: TypeAlias = Callable[
    [Callable[[], AsyncIterator[Any]], aio.ServicerContext[Any, Any]], AsyncIterator[Any]
]
AnyContext: TypeAlias = "grpc.ServicerContext | aio.ServicerContext[Any, Any]"

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


def wrap_handler_async(handler: MethodHandler, *, unary: AsyncUnaryAround, stream: AsyncStreamAround) -> MethodHandler:
    """`wrap_handler` for the asyncio server: `handler`'s behaviours are coroutine functions (unary responses) and
    async generator functions (streamed responses, or coroutine functions that write them with `context.write`);
    grpc tells these apart by the function, so each is passed on by a function of the same kind."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary: Any = handler.unary_unary  # an async behaviour; the stubs type only sync ones

        async def unary_unary_behaviour(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            return await unary(lambda: unary_unary(request, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary_behaviour, deserializer, serializer)
    if handler.unary_stream is not None:
        unary_stream: Any = handler.unary_stream  # an async behaviour; the stubs type only sync ones
        if inspect.iscoroutinefunction(unary_stream):  # writes its responses with `context.write`

            async def unary_stream_writer(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
                await unary(lambda: unary_stream(request, context), context)

            return grpc.unary_stream_rpc_method_handler(unary_stream_writer, deserializer, serializer)

        async def unary_stream_behaviour(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with aclosing(stream(lambda: unary_stream(request, context), context)) as responses:  # type: ignore[type-var]
                async for response in responses:
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream_behaviour, deserializer, serializer)
    if handler.stream_unary is not None:
        stream_unary: Any = handler.stream_unary  # an async behaviour; the stubs type only sync ones

        async def stream_unary_behaviour(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            return await unary(lambda: stream_unary(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary_behaviour, deserializer, serializer)
    if handler.stream_stream is not None:
        stream_stream: Any = handler.stream_stream  # an async behaviour; the stubs type only sync ones
        if inspect.iscoroutinefunction(stream_stream):  # writes its responses with `context.write`

            async def stream_stream_writer(
                requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
            ) -> None:
                await unary(lambda: stream_stream(requests, context), context)

            return grpc.stream_stream_rpc_method_handler(stream_stream_writer, deserializer, serializer)

        async def stream_stream_behaviour(
            requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with aclosing(stream(lambda: stream_stream(requests, context), context)) as responses:  # type: ignore[type-var]
                async for response in responses:
                    yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream_behaviour, deserializer, serializer)
    raise ValueError("RpcMethodHandler has no behaviour")


def aborting_handler_async(like: MethodHandler, code: grpc.StatusCode, details: str) -> MethodHandler:
    """`aborting_handler` for the asyncio server."""

    async def refuse_unary(_call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
        end_with_status(context, code, details)

    async def refuse_stream(
        _call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        end_with_status(context, code, details)
        return
        yield  # makes this an async generator

    return wrap_handler_async(like, unary=refuse_unary, stream=refuse_stream)


def end_with_status(
    context: aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str, trailing_metadata: Any = ()
) -> None:
    """Ends an asyncio call with a non-OK status once its behaviour returns (a unary response is then discarded).

    Unlike `await context.abort(...)`, which sends the status at once, this lets every interceptor around the call
    finish its records before the client sees the outcome, as on the thread-pool server."""
    context.set_code(code)
    context.set_details(details)
    if trailing_metadata:
        context.set_trailing_metadata(trailing_metadata)


class WrappedHandlers:
    """An asyncio interceptor's wrapped handler per method and inner handler, built once and reused.

    Wrapping takes closures and handler objects; on the asyncio server that per-call work was a visible share of a
    short call, so the wrapper reads what is per call (metadata, deadline) from the context instead. Inner handlers
    are the server's own or other interceptors' cached ones, so there are a few per method at most.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[MethodHandler, MethodHandler]] = {}

    def get(self, method: str, handler: MethodHandler, wrap: Callable[[], MethodHandler]) -> MethodHandler:
        key = (method, id(handler))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = wrap()
        self._entries[key] = (handler, wrapped)  # holding `handler` keeps its id from being reused
        return wrapped


Started = TypeVar("Started")


class CallObserver(Protocol[Started]):
    """What an interceptor that only watches calls (metrics, access log) does: `start` when the behaviour begins,
    `finish` once it returned, raised, or its response stream ended, with what `start` returned."""

    def start(self, context: AnyContext) -> Started: ...

    def finish(self, context: AnyContext, started: Started, error: BaseException | None) -> None: ...


class _Observed:
    """One call as its observer sees it: `start` on creation, `finish` on leaving the `with`, with the exception
    the call left by (None when it returned or its stream ended)."""

    __slots__ = ("_context", "_observer", "_started")

    def __init__(self, observer: CallObserver[Any], context: AnyContext) -> None:
        self._observer = observer
        self._context = context
        self._started = observer.start(context)

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: type[BaseException] | None, error: BaseException | None, _traceback: Any) -> None:
        self._observer.finish(self._context, self._started, error)


def observing_handler(handler: MethodHandler, observer: CallObserver[Any]) -> MethodHandler:
    """`handler`, its every call seen by `observer` (thread-pool server)."""

    def unary(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        with _Observed(observer, context):
            return call()

    def stream(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
        with _Observed(observer, context):
            yield from call()

    return wrap_handler(handler, unary=unary, stream=stream)


def observing_handler_async(handler: MethodHandler, observer: CallObserver[Any]) -> MethodHandler:
    """`observing_handler` for the asyncio server."""

    async def unary(call: Callable[[], Awaitable[Any]], context: aio.ServicerContext[Any, Any]) -> Any:
        with _Observed(observer, context):
            return await call()

    async def stream(
        call: Callable[[], AsyncIterator[Any]], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with _Observed(observer, context):
            async with aclosing(call()) as responses:  # type: ignore[type-var]  # an async generator
                async for response in responses:
                    yield response

    return wrap_handler_async(handler, unary=unary, stream=stream)


class WrappingAsyncInterceptor(AsyncServerInterceptorBase):
    """An asyncio interceptor that wraps each method's handler once (`wrap`) and serves the wrapper from then on."""

    def __init__(self) -> None:
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self, continuation: AsyncContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: self.wrap(method, handler))

    @abstractmethod
    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler: ...


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


def context_request_id(context: AnyContext) -> str | None:
    """The call's `x-request-id` (see `request_id`), read from its context."""
    return request_id(context.invocation_metadata())


def request_id(metadata: Any) -> str | None:
    """The client's `x-request-id`, trimmed to printable characters so it is safe to log."""
    value = metadata_value(metadata, REQUEST_ID_METADATA_KEY)
    if not value:
        return None
    cleaned = "".join(char for char in value if char.isprintable())[:_MAX_REQUEST_ID_LENGTH]
    return cleaned or None


def final_status_code(context: AnyContext, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with, as seen from an interceptor wrapped around the behaviour."""
    # ServicerContext.code() exists since grpcio 1.38 but is missing from the stubs.
    code_getter = getattr(context, "code", None)
    code = code_getter() if callable(code_getter) else None
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, GeneratorExit | asyncio.CancelledError) or not is_active(context):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def is_active(context: AnyContext) -> bool:
    """Whether the client still waits for this call (asyncio contexts have no `is_active`, only `done`)."""
    check = getattr(context, "is_active", None)
    if check is not None:
        return bool(check())
    return not context.done()  # type: ignore[union-attr]


def seconds_remaining(context: AnyContext) -> float | None:
    """Seconds left before the client's deadline, or None when the client set no deadline."""
    remaining = context.time_remaining()
    # Without a deadline grpc reports "infinite future" as a huge finite number (about 9.2e18 seconds).
    if remaining is None or math.isinf(remaining) or remaining > _NO_DEADLINE_THRESHOLD_SECONDS:
        return None
    return max(float(remaining), 0.0)
