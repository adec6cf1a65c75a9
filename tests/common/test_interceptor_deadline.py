"""Deadline interceptor and the handler helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from xsha_common.interceptors.deadline import EXPIRED_DEADLINE_MESSAGE, DeadlineInterceptor

from .conftest import AUTH, call_unary, details_of, rpc_error


class AbortedError(Exception):
    pass


class FakeContext:
    """Just enough of grpc.ServicerContext for the interceptor's behaviour wrapper."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted_with: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted_with = (code, details)
        raise AbortedError()


class FakeDetails:
    method = "/xsha.test.Echo/Unary"
    invocation_metadata = ()


def intercepted(handler: Any) -> Any:
    result = DeadlineInterceptor().intercept_service(lambda _details: handler, FakeDetails())  # type: ignore[arg-type]
    assert result is not None
    return result


def test_a_call_whose_deadline_already_passed_is_refused_before_the_handler_runs() -> None:
    ran: list[str] = []

    def unary_behaviour(request: bytes, context: object) -> bytes:
        ran.append("unary")
        return b""

    def stream_behaviour(request: bytes, context: object) -> Iterator[bytes]:
        ran.append("stream")
        yield b""

    unary = intercepted(grpc.unary_unary_rpc_method_handler(unary_behaviour))
    streaming = intercepted(grpc.unary_stream_rpc_method_handler(stream_behaviour))
    calls: list[Callable[[FakeContext], object]] = [
        lambda context: unary.unary_unary(b"", context),
        lambda context: list(streaming.unary_stream(b"", context)),
    ]
    for call in calls:
        context = FakeContext(remaining=0.0)
        with pytest.raises(AbortedError):
            call(context)
        assert context.aborted_with == (grpc.StatusCode.DEADLINE_EXCEEDED, EXPIRED_DEADLINE_MESSAGE)
    assert ran == []


def test_calls_with_time_left_or_without_a_deadline_run() -> None:
    handler = intercepted(grpc.unary_unary_rpc_method_handler(lambda request, context: b"ran"))
    assert handler.unary_unary(b"", FakeContext(remaining=5.0)) == b"ran"
    assert handler.unary_unary(b"", FakeContext(remaining=None)) == b"ran"


def test_a_client_with_an_expired_deadline_gets_deadline_exceeded(channel: grpc.Channel) -> None:
    # A deadline already in the past when the call starts (a tiny positive one may be rounded up by grpc).
    error = rpc_error(lambda: call_unary(channel, "Unary", b"", metadata=AUTH, timeout=-1))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_time_left_is_none_without_a_deadline_and_bounded_with_one(channel: grpc.Channel) -> None:
    assert call_unary(channel, "TimeLeft", b"", metadata=AUTH) == b"None"
    remaining = float(call_unary(channel, "TimeLeft", b"", metadata=AUTH, timeout=30))
    assert 0 < remaining <= 31  # grpc rounds deadlines up slightly


def test_require_time_left_refuses_work_the_deadline_cannot_cover(channel: grpc.Channel) -> None:
    assert call_unary(channel, "NeedsTime", b"0.001", metadata=AUTH, timeout=30) == b"enough"
    error = rpc_error(lambda: call_unary(channel, "NeedsTime", b"3600", metadata=AUTH, timeout=30))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "retry with a longer deadline" in error.details()
    info, _ = details_of(error)
    assert info.reason == "DEADLINE_EXCEEDED"
