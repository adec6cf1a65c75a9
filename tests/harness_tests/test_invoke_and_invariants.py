"""`invoke` against a stand-in server that serves every RPC generically, and the invariant checks on its answers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.invariants import (
    NEVER_CODES,
    allowed_codes,
    allowed_status_table,
    assert_outcome_allowed,
    check_outcome,
    error_info_reason,
    rpc_key,
)
from tests.harness.proto_strategies import (
    SERVICES,
    MethodDescriptor,
    Outcome,
    all_rpc_methods,
    invoke,
    is_streaming,
    method_by_name,
    request_class,
    request_strategy,
    response_class,
)

METHODS = [pytest.param(method, id=f"{service}.{method.name}") for service, method in all_rpc_methods()]
SECRET = "s3cr3t-password"


class StandIn:
    """Serves every RPC of both services; `mode` picks how every call answers."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.seen_requests: list[Message] = []
        self._lock = threading.Lock()

    def handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        result: list[grpc.GenericRpcHandler[Any, Any]] = []
        for service in SERVICES.values():
            table: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
            for method in service.methods:
                deserialize = request_class(method).FromString
                serialize = response_class(method).SerializeToString
                if method.server_streaming:
                    table[method.name] = grpc.unary_stream_rpc_method_handler(
                        self._stream(method), request_deserializer=deserialize, response_serializer=serialize
                    )
                else:
                    table[method.name] = grpc.unary_unary_rpc_method_handler(
                        self._unary(method), request_deserializer=deserialize, response_serializer=serialize
                    )
            result.append(grpc.method_handlers_generic_handler(service.full_name, table))
        return result

    def _answer_error(self, context: grpc.ServicerContext) -> None:
        if self.mode == "crash":
            raise RuntimeError("boom")  # gRPC turns an uncaught exception into UNKNOWN
        if self.mode == "rich_error":
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason="CLUSTER_NOT_FOUND", domain="xsha.test"))
            status = status_pb2.Status(
                code=code_pb2.NOT_FOUND, message="cluster 7 is not registered; register it first", details=[detail]
            )
            context.abort_with_status(rpc_status.to_status(status))
        if self.mode == "bare_error":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "")
        if self.mode == "leak":
            context.abort(grpc.StatusCode.UNAVAILABLE, f"could not log in to XAPI as root/{SECRET}")

    def _unary(self, method: MethodDescriptor) -> Callable[[Message, grpc.ServicerContext], Message]:
        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            with self._lock:
                self.seen_requests.append(request)
            self._answer_error(context)
            return response_class(method)()

        return handle

    def _stream(self, method: MethodDescriptor) -> Callable[[Message, grpc.ServicerContext], Iterator[Message]]:
        def handle(request: Message, context: grpc.ServicerContext) -> Iterator[Message]:
            with self._lock:
                self.seen_requests.append(request)
            self._answer_error(context)
            if self.mode == "slow_stream":
                # A watch with nothing to say: open until the client's deadline.
                while context.is_active():
                    threading.Event().wait(0.02)
                return
            while context.is_active():
                yield response_class(method)()
                threading.Event().wait(0.01)

        return handle


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[StandIn, grpc.Channel]]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=servicer.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, channel
    channel.close()
    server.stop(grace=None)


@pytest.fixture
def server(stand_in: tuple[StandIn, grpc.Channel]) -> Iterator[tuple[StandIn, grpc.Channel]]:
    servicer, channel = stand_in
    servicer.mode = "ok"
    yield servicer, channel
    servicer.mode = "ok"


SETTINGS = settings(
    max_examples=3,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data())
def test_invoke_reaches_every_rpc_with_generated_requests(
    method: MethodDescriptor, data: st.DataObject, server: tuple[StandIn, grpc.Channel]
) -> None:
    servicer, channel = server
    request = data.draw(request_strategy(method))
    outcome = invoke(channel, method, request, metadata=(("authorization", "Bearer t"),), max_items=2)
    assert outcome.code is grpc.StatusCode.OK, outcome.details
    assert outcome.streaming == is_streaming(method)
    assert len(outcome.responses) == (2 if is_streaming(method) else 1)
    assert all(isinstance(r, response_class(method)) for r in outcome.responses)
    assert servicer.seen_requests[-1] == request  # the server got exactly the generated bytes
    assert_outcome_allowed(method, outcome)


def test_an_open_stream_that_sends_nothing_ends_in_deadline_exceeded(server: tuple[StandIn, grpc.Channel]) -> None:
    servicer, channel = server
    servicer.mode = "slow_stream"
    method = method_by_name("WatchChanges")
    outcome = invoke(channel, method, request_class(method)(), stream_timeout=0.3)
    assert outcome.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcome.stream_was_open
    assert check_outcome(method, outcome) == []


def test_a_crash_is_reported_as_a_server_bug(server: tuple[StandIn, grpc.Channel]) -> None:
    servicer, channel = server
    servicer.mode = "crash"
    method = method_by_name("GetPool")
    outcome = invoke(channel, method, request_class(method)())
    assert outcome.code in NEVER_CODES
    problems = check_outcome(method, outcome)
    assert any("server bug" in p for p in problems), problems
    with pytest.raises(AssertionError, match="HypervisorSyncService/GetPool"):
        assert_outcome_allowed(method, outcome)


def test_a_rich_error_passes_and_its_reason_is_read(server: tuple[StandIn, grpc.Channel]) -> None:
    servicer, channel = server
    servicer.mode = "rich_error"
    method = method_by_name("GetClusterHaStatus")
    outcome = invoke(channel, method, request_class(method)())
    assert outcome.code is grpc.StatusCode.NOT_FOUND
    assert error_info_reason(outcome) == "CLUSTER_NOT_FOUND"
    assert check_outcome(method, outcome) == []


def test_an_error_without_message_or_error_info_is_flagged(server: tuple[StandIn, grpc.Channel]) -> None:
    servicer, channel = server
    servicer.mode = "bare_error"
    method = method_by_name("DecideVmDeployment")
    outcome = invoke(channel, method, request_class(method)())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    problems = check_outcome(method, outcome)
    assert any("no message" in p for p in problems), problems
    assert any("ErrorInfo" in p for p in problems), problems
    assert check_outcome(method, outcome, require_error_info=False) != []  # the empty message still counts


def test_a_secret_in_the_answer_is_flagged(server: tuple[StandIn, grpc.Channel]) -> None:
    servicer, channel = server
    servicer.mode = "leak"
    method = method_by_name("RegisterPool")
    outcome = invoke(channel, method, request_class(method)())
    assert outcome.code is grpc.StatusCode.UNAVAILABLE
    assert check_outcome(method, outcome) == []
    assert any("secret" in p for p in check_outcome(method, outcome, secrets=[SECRET]))


def test_an_rpc_the_server_lacks_is_unimplemented() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = method_by_name("ApplyMigration")
            outcome = invoke(channel, method, request_class(method)())
    finally:
        server.stop(grace=None)
    assert outcome.code is grpc.StatusCode.UNIMPLEMENTED
    assert check_outcome(method, outcome) != []
    assert check_outcome(method, outcome, implemented=False) == []


def test_invoke_on_a_dead_server_is_unavailable_not_an_exception() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        for name in ("GetSettings", "WatchHaEvents"):
            method = method_by_name(name)
            outcome = invoke(channel, method, request_class(method)(), timeout=2, stream_timeout=2)
            assert outcome.code is grpc.StatusCode.UNAVAILABLE
            assert check_outcome(method, outcome) == []


def test_the_allowed_status_table() -> None:
    table = allowed_status_table(unimplemented={"ApplyMigration"})
    assert set(table) == {rpc_key(m) for _, m in all_rpc_methods()}
    for _, method in all_rpc_methods():
        codes = table[rpc_key(method)]
        assert not codes & NEVER_CODES
        assert grpc.StatusCode.OK in codes
        assert (grpc.StatusCode.DEADLINE_EXCEEDED in codes) == is_streaming(method)
        assert (grpc.StatusCode.UNIMPLEMENTED in codes) == (method.name == "ApplyMigration")
        assert grpc.StatusCode.UNAUTHENTICATED not in codes
    unauthenticated = allowed_codes(method_by_name("GetVm"), authenticated=False)
    assert unauthenticated == {grpc.StatusCode.UNAUTHENTICATED}


def test_an_unauthenticated_success_is_a_problem() -> None:
    method = method_by_name("ListVms")
    ok: Any = Outcome(grpc.StatusCode.OK, "")
    assert check_outcome(method, ok, authenticated=False) != []
    refused = Outcome(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    assert check_outcome(method, refused, authenticated=False) == []
    assert check_outcome(method, refused) != []
