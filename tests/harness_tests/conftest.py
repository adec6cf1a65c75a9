"""Fixtures for the harness's own tests: a recording TCP echo server and a proxy started in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.echo import EchoServer
from tests.harness.tcp_proxy import FaultProxy


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo_server: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_server.port) as started:
        yield started
