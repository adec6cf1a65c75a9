"""ResumingStreamRecorder: records every item, reopens a broken stream from the last position it proved."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from xsha_common.testing import ResumingStreamRecorder, wait_until


class _Ended(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"ended with {self._code.name}"


class _Stream:
    """A cancellable iterator over (item, position) messages that ends with an error, like a gRPC call."""

    def __init__(self, messages: list[tuple[str | None, int]], end: grpc.StatusCode | None) -> None:
        self.messages = messages
        self.end = end
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[tuple[str | None, int]]:
        yield from self.messages
        if self.end is not None:
            raise _Ended(self.end)
        self.cancelled.wait(5)  # an open stream until cancelled
        raise _Ended(grpc.StatusCode.CANCELLED)

    def cancel(self) -> None:
        self.cancelled.set()


def _read(message: tuple[str | None, int]) -> tuple[str | None, int]:
    return message


def test_it_records_items_and_resumes_from_the_last_position_after_a_break() -> None:
    opened_at: list[int] = []
    streams = [
        _Stream([("a", 1), (None, 3), ("b", 4)], grpc.StatusCode.UNAVAILABLE),  # a service restart
        _Stream([("c", 5)], grpc.StatusCode.INTERNAL),  # unexpected: recorded
        _Stream([(None, 7)], None),
    ]

    def open_stream(position: int) -> Any:
        opened_at.append(position)
        return streams[len(opened_at) - 1]

    recorder: ResumingStreamRecorder[str] = ResumingStreamRecorder(open_stream, _read, since_revision=0)
    try:
        recorder.wait_position(7, timeout=10)
        items, position = recorder.snapshot()
        assert items == ["a", "b", "c"] and position == 7
        assert opened_at == [0, 4, 5]
        assert recorder.errors == ["stream ended with INTERNAL: ended with INTERNAL"]
    finally:
        recorder.stop()
    assert streams[2].cancelled.is_set()


def test_a_position_never_moves_back() -> None:
    stream = _Stream([("a", 5), ("again", 0), (None, 3)], None)
    recorder: ResumingStreamRecorder[str] = ResumingStreamRecorder(lambda position: stream, _read, since_revision=2)
    try:
        wait_until(lambda: len(recorder.snapshot()[0]) == 2, timeout=10)
        assert recorder.snapshot() == (["a", "again"], 5)
    finally:
        recorder.stop()
