"""Bearer-token authentication interceptor."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from xsha_common.interceptors import bearer_token_metadata
from xsha_common.interceptors.auth import INVALID_TOKEN_MESSAGE, MISSING_TOKEN_MESSAGE

from .conftest import AUTH, GOOD_TOKEN, EchoService, ServerFactory, call_unary, rpc, rpc_error


def test_a_call_without_a_token_is_unauthenticated_and_never_reaches_the_handler(
    channel: grpc.Channel, server_and_echo: tuple[object, EchoService]
) -> None:
    _, echo = server_and_echo
    error = rpc_error(lambda: call_unary(channel, "Unary", b"x", timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == MISSING_TOKEN_MESSAGE
    assert echo.calls == []


def test_a_wrong_token_is_unauthenticated(channel: grpc.Channel) -> None:
    error = rpc_error(lambda: call_unary(channel, "Unary", b"x", metadata=bearer_token_metadata("nope"), timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == INVALID_TOKEN_MESSAGE


def test_a_token_without_the_bearer_scheme_is_refused(channel: grpc.Channel) -> None:

    error = rpc_error(lambda: call_unary(channel, "Unary", b"x", metadata=(("authorization", GOOD_TOKEN),), timeout=5))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


def test_the_right_token_passes(channel: grpc.Channel) -> None:
    assert call_unary(channel, "Unary", b"x", metadata=AUTH, timeout=5) == b"x"


def test_any_of_several_tokens_passes_and_the_scheme_is_case_insensitive(make_server: ServerFactory) -> None:
    server, _ = make_server(auth_tokens=("token-one", "token-two"))
    with grpc.insecure_channel(server.address) as channel:
        assert call_unary(channel, "Unary", b"1", metadata=bearer_token_metadata("token-one"), timeout=5) == b"1"
        assert call_unary(channel, "Unary", b"2", metadata=(("authorization", "bearer token-two"),), timeout=5) == b"2"


def test_streaming_calls_are_refused_without_a_token(channel: grpc.Channel) -> None:
    server_stream = rpc(channel, "unary_stream", "ServerStream")(b"a,b", timeout=5)
    assert rpc_error(lambda: list(server_stream)).code() is grpc.StatusCode.UNAUTHENTICATED
    client_stream = rpc(channel, "stream_unary", "ClientStream")
    assert rpc_error(lambda: client_stream(iter([b"a"]), timeout=5)).code() is grpc.StatusCode.UNAUTHENTICATED
    bidi = rpc(channel, "stream_stream", "BidiStream")(iter([b"a"]), timeout=5)
    assert rpc_error(lambda: list(bidi)).code() is grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_the_token(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    error = rpc_error(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
