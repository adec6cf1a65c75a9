"""Fixtures for xsha_common tests: a tiny bytes-in/bytes-out service served through build_server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from xsha_common.errors import FieldViolation, error_details, invalid_arguments, not_found
from xsha_common.interceptors import bearer_token_metadata, require_time_left, time_left
from xsha_common.metrics import MetricsRegistry
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server
from xsha_common.testing import TestPki, generate_test_pki

ECHO_SERVICE = "xsha.test.Echo"
GOOD_TOKEN = "good-token-0123456789"
AUTH = bearer_token_metadata(GOOD_TOKEN)


class EchoService:
    """Unary, server-stream, client-stream and bidi methods on raw bytes, plus misbehaving ones."""

    def __init__(self) -> None:
        self.block_entered = threading.Event()
        self.release_block = threading.Event()
        self.calls: list[str] = []

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append("unary")
        return request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from request.split(b",")

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"+".join(requests)

    def bidi_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request.upper()

    def invalid(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise invalid_arguments(
            [
                FieldViolation("pool.master_url", "must be an https:// URL; give the pool master's address"),
                FieldViolation("page_size", "must be between 1 and 1000; lower it", "PAGE_SIZE_TOO_LARGE"),
            ],
            reason="INVALID_POOL",
            metadata={"pool": "p1"},
        )

    def missing(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise not_found("pool", request.decode())

    def crash(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("database password is hunter2 at /srv/secret/path")

    def crash_mid_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        raise KeyError("internal-key-detail")

    def invalid_mid_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        raise not_found("vm", "vm-9")

    def self_abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler aborted on its own")

    def time_left(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return repr(time_left(context)).encode()

    def needs_time(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        require_time_left(context, float(request.decode()), doing="the test work")
        return b"enough"

    def block(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append("block")
        self.block_entered.set()
        if not self.release_block.wait(timeout=30):
            return b"never released"
        return b"finished"

    def generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary = grpc.unary_unary_rpc_method_handler
        handlers = {
            "Unary": unary(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(self.bidi_stream),
            "Invalid": unary(self.invalid),
            "Missing": unary(self.missing),
            "Crash": unary(self.crash),
            "CrashMidStream": grpc.unary_stream_rpc_method_handler(self.crash_mid_stream),
            "InvalidMidStream": grpc.unary_stream_rpc_method_handler(self.invalid_mid_stream),
            "SelfAbort": unary(self.self_abort),
            "TimeLeft": unary(self.time_left),
            "NeedsTime": unary(self.needs_time),
            "Block": unary(self.block),
        }
        return grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers)


def method(name: str) -> str:
    return f"/{ECHO_SERVICE}/{name}"


ServerFactory = Callable[..., tuple[ServiceServer, EchoService]]


@pytest.fixture(params=["threads", "asyncio"])
def concurrency(request: pytest.FixtureRequest) -> str:
    """Each server test runs on both of build_server's forms: the offloaded handlers and async interceptors of the
    asyncio server must behave as the thread-pool server does."""
    return str(request.param)


@pytest.fixture
def make_server(concurrency: Any) -> Iterator[ServerFactory]:
    """Build and start servers on port 0; every one is stopped at teardown."""
    servers: list[tuple[ServiceServer, EchoService]] = []

    def factory(
        start: bool = True, metrics: MetricsRegistry | None = None, **overrides: Any
    ) -> tuple[ServiceServer, EchoService]:
        echo = EchoService()
        settings: dict[str, Any] = {"listen_address": "127.0.0.1:0", "auth_tokens": (GOOD_TOKEN,)}
        settings.update(overrides)
        server = build_server(
            [ServiceRegistration.generic(echo.generic_handler(), ECHO_SERVICE)],
            ServerSettings(**settings),
            metrics=metrics,
            concurrency=concurrency,
        )
        servers.append((server, echo))
        if start:
            server.start()
        return server, echo

    yield factory
    for server, echo in servers:
        echo.release_block.set()  # no handler thread outlives the test
        server.shutdown(grace_seconds=0)


@pytest.fixture
def server_and_echo(make_server: ServerFactory) -> tuple[ServiceServer, EchoService]:
    return make_server()


@pytest.fixture
def channel(server_and_echo: tuple[ServiceServer, EchoService]) -> Iterator[grpc.Channel]:
    server, _ = server_and_echo
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return generate_test_pki(tmp_path_factory.mktemp("pki"), "xsha-test")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return generate_test_pki(tmp_path_factory.mktemp("other-pki"), "intruder")


def rpc(channel: grpc.Channel, kind: str, name: str) -> Any:
    """A bytes-in/bytes-out multicallable of the echo service; `kind` is e.g. "unary_stream"."""
    return getattr(channel, kind)(method(name), None, None)


def call_unary(channel: grpc.Channel, name: str, request: bytes = b"", **kwargs: Any) -> bytes:
    result: bytes = rpc(channel, "unary_unary", name)(request, **kwargs)
    return result


def rpc_error(call: Callable[[], Any]) -> Any:
    """The RpcError (also a grpc.Call: code(), details()) that `call` raises; fails the test when it succeeds."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def details_of(error: grpc.RpcError) -> tuple[Any, Any]:
    """`error_details` for tests, which assert on the values directly."""
    return error_details(error)


def tmp_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path
