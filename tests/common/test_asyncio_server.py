"""build_server(concurrency="asyncio"): coroutine methods run on the event loop, the others on worker threads with
a context that behaves like the thread-pool server's. (The shared server tests run on both forms: conftest.)"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from xsha_common.interceptors import default_async_interceptors
from xsha_common.interceptors.logging import ACCESS_LOGGER_NAME
from xsha_common.metrics import MetricsRegistry, RpcMetrics
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server
from xsha_common.testing import wait_until

from .conftest import AUTH, GOOD_TOKEN

SERVICE = "xsha.test.Mixed"


class MixedService:
    """Coroutine methods beside thread-pool ones, recording which thread ran each."""

    def __init__(self) -> None:
        self.threads: dict[str, str] = {}
        self.sync_blocked = threading.Event()
        self.release_sync = threading.Event()
        self.stream_active: list[bool] = []
        self.stream_closed = threading.Event()

    async def coroutine(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        self.threads["coroutine"] = threading.current_thread().name
        await asyncio.sleep(0)
        return request[::-1]

    async def async_stream(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        self.threads["async_stream"] = threading.current_thread().name
        for part in request.split(b","):
            yield part

    def blocking(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.threads["blocking"] = threading.current_thread().name
        self.sync_blocked.set()
        self.release_sync.wait(timeout=30)
        return b"released"

    def endless(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Streams until the client goes away, as WatchHaEvents does, checking `is_active` between messages."""
        try:
            while context.is_active():
                self.stream_active.append(True)
                yield b"tick"
                threading.Event().wait(0.01)
        finally:
            self.stream_closed.set()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Coroutine": grpc.unary_unary_rpc_method_handler(self.coroutine),
                "AsyncStream": grpc.unary_stream_rpc_method_handler(self.async_stream),
                "Blocking": grpc.unary_unary_rpc_method_handler(self.blocking),
                "Endless": grpc.unary_stream_rpc_method_handler(self.endless),
            },
        )


@pytest.fixture
def mixed() -> Iterator[tuple[ServiceServer, MixedService, grpc.Channel]]:
    service = MixedService()
    server = build_server(
        [ServiceRegistration.generic(service.handler(), SERVICE)],
        ServerSettings(listen_address="127.0.0.1:0", auth_tokens=(GOOD_TOKEN,)),
        concurrency="asyncio",
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield server, service, channel
    finally:
        service.release_sync.set()
        server.shutdown(grace_seconds=0)


def _rpc(channel: grpc.Channel, kind: str, name: str) -> Any:
    """A bytes-in/bytes-out multicallable; `kind` is e.g. "unary_stream"."""
    return getattr(channel, kind)(f"/{SERVICE}/{name}", None, None)


def _unary(channel: grpc.Channel, name: str, request: bytes = b"") -> bytes:
    response: bytes = _rpc(channel, "unary_unary", name)(request, metadata=AUTH, timeout=10)
    return response


def test_coroutines_run_on_the_event_loop_and_sync_methods_on_worker_threads(
    mixed: tuple[ServiceServer, MixedService, grpc.Channel],
) -> None:
    _, service, channel = mixed
    assert _unary(channel, "Coroutine", b"abc") == b"cba"
    assert list(_rpc(channel, "unary_stream", "AsyncStream")(b"a,b", metadata=AUTH, timeout=10)) == [b"a", b"b"]
    service.release_sync.set()
    assert _unary(channel, "Blocking") == b"released"
    assert service.threads["coroutine"] == "grpc-asyncio"
    assert service.threads["async_stream"] == "grpc-asyncio"
    assert service.threads["blocking"].startswith("grpc_")


def test_a_blocked_sync_method_does_not_hold_up_the_coroutines(
    mixed: tuple[ServiceServer, MixedService, grpc.Channel],
) -> None:
    _, service, channel = mixed
    blocked = _rpc(channel, "unary_unary", "Blocking").future(b"", metadata=AUTH, timeout=30)
    assert service.sync_blocked.wait(10)
    assert _unary(channel, "Coroutine", b"xy") == b"yx"
    assert not blocked.done()
    service.release_sync.set()
    assert blocked.result() == b"released"


def test_a_sync_stream_sees_the_client_leave_and_is_closed(
    mixed: tuple[ServiceServer, MixedService, grpc.Channel],
) -> None:
    _, service, channel = mixed
    stream = _rpc(channel, "unary_stream", "Endless")(b"", metadata=AUTH, timeout=30)
    assert next(stream) == b"tick"
    assert next(stream) == b"tick"
    stream.cancel()
    # The generator's finally ran: its worker thread is free again.
    assert service.stream_closed.wait(10)


def test_unknown_methods_are_unimplemented(mixed: tuple[ServiceServer, MixedService, grpc.Channel]) -> None:
    _, _, channel = mixed
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "NoSuchMethod")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_each_asyncio_interceptor_wraps_a_method_once_and_refusals_too() -> None:
    async def inner(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(inner)
    other = grpc.unary_unary_rpc_method_handler(inner)

    async def continuation(_details: grpc.HandlerCallDetails) -> Any:
        return handler

    async def other_continuation(_details: grpc.HandlerCallDetails) -> Any:
        return other

    class Details(grpc.HandlerCallDetails):
        def __init__(self, metadata: Any) -> None:
            self.method = f"/{SERVICE}/Coroutine"
            self.invocation_metadata = metadata

    async def scenario() -> None:
        interceptors = default_async_interceptors(rpc_metrics=RpcMetrics(MetricsRegistry()), auth_tokens=[GOOD_TOKEN])
        for interceptor in interceptors:
            first = await interceptor.intercept_service(continuation, Details(AUTH))
            again = await interceptor.intercept_service(continuation, Details(AUTH))
            assert first is again, type(interceptor).__name__
            assert await interceptor.intercept_service(other_continuation, Details(AUTH)) is not first
        auth = interceptors[2]
        refused = await auth.intercept_service(continuation, Details(()))
        assert refused is not handler
        assert await auth.intercept_service(continuation, Details(())) is refused

    asyncio.run(scenario())


def test_the_server_reports_health_through_shutdown() -> None:
    service = MixedService()
    server = build_server(
        [ServiceRegistration.generic(service.handler(), SERVICE)],
        ServerSettings(listen_address="127.0.0.1:0", auth_disabled=True),
        concurrency="asyncio",
    )
    assert server.health_status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING  # before start
    server.start()
    with grpc.insecure_channel(server.address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest.SerializeToString,
            health_pb2.HealthCheckResponse.FromString,
        )
        assert (
            check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    assert server.health_status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    server.shutdown(grace_seconds=0)
    wait_until(lambda: server.health_status("") == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=5)
    assert server.wait(timeout=5)


def test_an_unknown_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        build_server(
            [ServiceRegistration.generic(MixedService().handler(), SERVICE)],
            ServerSettings(listen_address="127.0.0.1:0", auth_disabled=True),
            concurrency="fibers",  # type: ignore[arg-type]
        )


def test_streams_cancelled_by_their_clients_are_logged_and_the_server_lives_on(
    mixed: tuple[ServiceServer, MixedService, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    # A cancelled stream's access record is written as the call ends, when grpc's asyncio context may no longer be
    # asked for its peer or metadata: reading them then crashed the process now and then (caught by the bad-input
    # run, which sends many such streams). The record carries what was read at the start.
    _, _, channel = mixed
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        for index in range(40):
            metadata = (*AUTH, ("x-request-id", f"stream-{index}"))
            stream = _rpc(channel, "unary_stream", "Endless")(b"", metadata=metadata, timeout=30)
            assert next(stream) == b"tick"
            stream.cancel()
        assert _unary(channel, "Coroutine", b"ok") == b"ko"
        wait_until(lambda: len(_cancelled_records(caplog)) == 40, timeout=10)
    assert {vars(record)["request_id"] for record in _cancelled_records(caplog)} == {
        f"stream-{index}" for index in range(40)
    }
    assert all(vars(record)["peer"].startswith("ipv4:127.0.0.1:") for record in _cancelled_records(caplog))


def _cancelled_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == ACCESS_LOGGER_NAME and vars(record).get("code") == "CANCELLED"
    ]
