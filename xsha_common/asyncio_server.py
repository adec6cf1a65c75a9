"""The asyncio form of the gRPC server that `build_server` makes with `concurrency="asyncio"`.

One event loop thread serves every call. A servicer method written as a coroutine (or async generator) runs on
that loop directly: a call that only waits (say, for a batched database write done by another thread) then costs
no thread of its own and no thread switch per call, which is what makes it cheaper than the thread-pool server.
Every other method, written for the thread-pool server, is offloaded to a thread pool with a context that behaves
like the thread-pool server's, so a servicer can move its hot methods to coroutines one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent import futures
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xsha_common.interceptors._handlers import AsyncServerInterceptorBase, MethodHandler, end_with_status

T = TypeVar("T")
ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus

# How often a worker blocked on the next request message of a cancelled call looks again.
_REQUEST_POLL_SECONDS = 1.0


class _OffloadedAbortError(Exception):
    """Raised in a worker by `_ThreadContext.abort`; the loop turns it into the real abort."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class _ThreadContext:
    """The thread-pool server's `ServicerContext`, for a method offloaded from the loop to a worker thread.

    grpc's asyncio context belongs to the loop and must not be read once its call is over (asking for the peer
    then crashed the process, grpc 1.85), so a worker never touches it: what a call starts with is copied on the
    loop, the outcome it sets is kept here and applied by the loop (`apply`), and the loop signals the call's end.
    `abort` raises in the worker and the loop ends the call.
    """

    def __init__(self, context: aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self._metadata = context.invocation_metadata()
        self._peer = context.peer()
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._ended = threading.Event()
        context.add_done_callback(lambda _context: self._ended.set())  # type: ignore[arg-type]
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing_metadata: Any = None

    def apply(self) -> None:
        """On the loop, once the behaviour returned: the code, details and trailing metadata it set."""
        if self._code is not None:
            self._context.set_code(self._code)
        if self._details is not None:
            self._context.set_details(self._details)
        if self._trailing_metadata is not None:
            self._context.set_trailing_metadata(self._trailing_metadata)

    def ended(self) -> None:
        self._ended.set()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _OffloadedAbortError(code, details)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _OffloadedAbortError(status.code, status.details, status.trailing_metadata)

    def is_active(self) -> bool:
        return not self._ended.is_set()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing_metadata = trailing_metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details


class _SyncRequests(Iterator[Any]):
    """A call's async request stream, read from a worker thread."""

    def __init__(self, requests: AsyncIterator[Any], context: _ThreadContext, loop: asyncio.AbstractEventLoop) -> None:
        self._requests = requests
        self._context = context
        self._loop = loop

    def __next__(self) -> Any:
        pending = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        while True:
            try:
                return pending.result(timeout=_REQUEST_POLL_SECONDS)
            except StopAsyncIteration:
                raise StopIteration from None
            except futures.TimeoutError:
                if not self._context.is_active():
                    pending.cancel()
                    raise StopIteration from None

    async def _read(self) -> Any:
        return await self._requests.__anext__()


class _Offloader:
    """Turns a thread-pool server handler into an asyncio one that runs its behaviour on `executor`."""

    def __init__(self, executor: futures.Executor) -> None:
        self._executor = executor

    def handler(self, handler: MethodHandler) -> MethodHandler:
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, self._unary, False),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, self._stream, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, self._unary, True),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, self._stream, True),
        )
        for kind, make_handler, offload, streamed_requests in kinds:
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            if _is_async(behaviour):
                return handler
            offloaded = offload(behaviour, streamed_requests=streamed_requests)
            return make_handler(offloaded, handler.request_deserializer, handler.response_serializer)
        raise ValueError("RpcMethodHandler has no behaviour")

    def _unary(self, behaviour: Callable[..., Any], *, streamed_requests: bool) -> Any:
        executor = self._executor

        async def offloaded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            loop = asyncio.get_running_loop()
            thread_context = _ThreadContext(context)
            if streamed_requests:
                request = _SyncRequests(request, thread_context, loop)
            try:
                response = await loop.run_in_executor(executor, behaviour, request, thread_context)
            except _OffloadedAbortError as abort:
                end_with_status(context, abort.code, abort.details, abort.trailing_metadata)
                return None
            finally:
                thread_context.ended()
            thread_context.apply()
            return response

        return offloaded

    def _stream(self, behaviour: Callable[..., Iterator[Any]], *, streamed_requests: bool) -> Any:
        executor = self._executor

        async def offloaded(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            loop = asyncio.get_running_loop()
            thread_context = _ThreadContext(context)
            if streamed_requests:
                request = _SyncRequests(request, thread_context, loop)
            # One step of the iterator at a time, and closing it only once no step runs (a generator cannot be
            # closed while it executes; a cancelled call's step may still be running in its worker).
            steps = threading.Lock()
            end = object()
            responses: Iterator[Any] | None = None

            def start() -> Iterator[Any]:
                return iter(behaviour(request, thread_context))

            def step() -> Any:
                with steps:
                    assert responses is not None
                    return next(responses, end)

            def close() -> None:
                with steps:
                    close_responses = getattr(responses, "close", None)
                    if close_responses is not None:
                        close_responses()

            try:
                responses = await loop.run_in_executor(executor, start)
                while True:
                    response = await loop.run_in_executor(executor, step)
                    if response is end:
                        break
                    yield response
            except _OffloadedAbortError as abort:
                end_with_status(context, abort.code, abort.details, abort.trailing_metadata)
                return
            finally:
                thread_context.ended()
                if responses is not None:
                    with contextlib.suppress(RuntimeError):  # the server is stopping: its workers are gone
                        executor.submit(close)
            thread_context.apply()

        return offloaded


def _is_async(behaviour: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


class _OffloadingGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose methods are offloaded; each method's handler is adapted once (all on the loop)."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], offloader: _Offloader) -> None:
        self._inner = inner
        self._offloader = offloader
        self._adapted: dict[str, MethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        method = handler_call_details.method
        adapted = self._adapted.get(method)
        if adapted is not None:
            return adapted
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        adapted = self._adapted[method] = self._offloader.handler(handler)
        return adapted


class _Registrar:
    """What a generated `add_XServicer_to_server` is given: registers each method, offloading sync ones."""

    def __init__(self, server: aio.Server, offloader: _Offloader) -> None:
        self._server = server
        self._offloader = offloader

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(
            [_OffloadingGenericHandler(handler, self._offloader) for handler in handlers]
        )

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, MethodHandler]) -> None:
        adapted = {name: self._offloader.handler(handler) for name, handler in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, adapted)  # type: ignore[attr-defined]


class AsyncioBackend:
    """An asyncio gRPC server on its own event loop thread, driven from other threads by `ServiceServer`."""

    def __init__(
        self,
        registrations: Sequence[tuple[Callable[[Any, Any], None], Any]],
        service_names: Sequence[str],
        *,
        interceptors: Sequence[AsyncServerInterceptorBase],
        options: Sequence[tuple[str, Any]],
        max_workers: int,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-asyncio", daemon=True)
        self._thread.start()
        self._executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: aio.Server = self._run(
            self._build(registrations, service_names, list(interceptors), list(options))
        )

    async def _build(
        self,
        registrations: Sequence[tuple[Callable[[Any, Any], None], Any]],
        service_names: Sequence[str],
        interceptors: list[AsyncServerInterceptorBase],
        options: list[tuple[str, Any]],
    ) -> aio.Server:
        # Ours admit None from an interceptor (an unknown method), as grpc does; its stubs do not.
        grpc_interceptors: list[Any] = interceptors
        server = aio.server(interceptors=grpc_interceptors, options=options)
        registrar = _Registrar(server, _Offloader(self._executor))
        for add_to_server, servicer in registrations:
            add_to_server(servicer, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the loop and waits for its result (never from the loop thread itself)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("AsyncioBackend: called from its own event loop thread; await instead")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            return self._server.add_insecure_port(address)
        return self._server.add_secure_port(address, credentials)

    def start(self) -> None:
        self._run(self._server.start())

    def set_health(self, service_name: str, status: ServingStatus) -> None:
        if threading.current_thread() is self._thread:
            self._loop.create_task(self._health.set(service_name, status))
            return
        self._run(self._health.set(service_name, status))

    def enter_graceful_shutdown(self) -> None:
        self._run(self._health.enter_graceful_shutdown())

    def stop(self, grace: float | None) -> None:
        """Stops serving (in-flight calls get `grace` seconds), then stops the loop and the workers."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._server.stop(grace))
        finally:
            self._executor.shutdown(wait=False)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def stop_now(self) -> None:
        """Cancels in-flight calls at once without waiting (a second shutdown request)."""
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop)
