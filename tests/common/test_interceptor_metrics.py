"""Metrics interceptor: calls counted by method and code, latency observed until a stream ends."""

from __future__ import annotations

import grpc

from xsha_common.server import ServiceServer

from .conftest import AUTH, ECHO_SERVICE, EchoService, call_unary, rpc, rpc_error


def handled(server: ServiceServer, name: str, kind: str, code: str) -> float | None:
    labels = {"grpc_service": ECHO_SERVICE, "grpc_method": name, "grpc_type": kind, "grpc_code": code}
    return server.metrics.sample_value("xsha_grpc_server_handled_total", labels)


def latency_count(server: ServiceServer, name: str, kind: str) -> float | None:
    labels = {"grpc_service": ECHO_SERVICE, "grpc_method": name, "grpc_type": kind}
    return server.metrics.sample_value("xsha_grpc_server_handling_seconds_count", labels)


def test_calls_are_counted_by_method_and_code(
    channel: grpc.Channel, server_and_echo: tuple[ServiceServer, EchoService]
) -> None:
    server, _ = server_and_echo
    call_unary(channel, "Unary", b"", metadata=AUTH, timeout=5)
    call_unary(channel, "Unary", b"", metadata=AUTH, timeout=5)
    rpc_error(lambda: call_unary(channel, "Unary", b"", timeout=5))
    rpc_error(lambda: call_unary(channel, "Missing", b"pool-1", metadata=AUTH, timeout=5))
    assert handled(server, "Unary", "unary", "OK") == 2
    assert handled(server, "Unary", "unary", "UNAUTHENTICATED") == 1
    assert handled(server, "Missing", "unary", "NOT_FOUND") == 1
    assert latency_count(server, "Unary", "unary") == 3
    started = server.metrics.sample_value(
        "xsha_grpc_server_started_total", {"grpc_service": ECHO_SERVICE, "grpc_method": "Unary", "grpc_type": "unary"}
    )
    assert started == 3


def test_streams_are_measured_once_they_end(
    channel: grpc.Channel, server_and_echo: tuple[ServiceServer, EchoService]
) -> None:
    server, _ = server_and_echo
    responses = rpc(channel, "unary_stream", "ServerStream")(b"a,b,c", metadata=AUTH, timeout=5)
    assert next(responses) == b"a"
    assert list(responses) == [b"b", b"c"]
    assert list(rpc(channel, "stream_stream", "BidiStream")(iter([b"x"]), metadata=AUTH, timeout=5)) == [b"X"]
    rpc(channel, "stream_unary", "ClientStream")(iter([b"x"]), metadata=AUTH, timeout=5)
    failing = rpc(channel, "unary_stream", "CrashMidStream")(b"", metadata=AUTH, timeout=5)
    rpc_error(lambda: list(failing))
    # The server records after sending the final status, so the client can see it first: poll briefly.
    from xsha_common.testing import wait_until

    wait_until(lambda: handled(server, "CrashMidStream", "server_stream", "INTERNAL") == 1)
    assert handled(server, "ServerStream", "server_stream", "OK") == 1
    assert handled(server, "BidiStream", "bidi_stream", "OK") == 1
    assert handled(server, "ClientStream", "client_stream", "OK") == 1
    assert latency_count(server, "ServerStream", "server_stream") == 1
