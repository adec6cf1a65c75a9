"""Real clients through FaultProxy: a gRPC health server, and PostgreSQL / MariaDB when their URLs are set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.harness.tcp_proxy import FaultProxy
from xsha_common.db import create_engine_for, is_transient_db_error, normalize_url
from xsha_common.testing import wait_until

# Reconnect quickly after the link comes back: gRPC's default backoff starts at 1 s and grows to 120 s.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


@pytest.fixture
def health_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


def check(channel: grpc.Channel, timeout: float = 2.0) -> grpc.StatusCode:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


def test_grpc_through_the_proxy_fails_while_cut_and_recovers(health_server: int) -> None:
    with FaultProxy("127.0.0.1", health_server) as proxy, grpc.insecure_channel(proxy.address, FAST_RECONNECT) as ch:
        assert check(ch) == grpc.StatusCode.OK
        assert proxy.stats().bytes_to_upstream > 0

        proxy.cut()

        assert check(ch) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(proxy.address) as fresh:
            assert check(fresh) == grpc.StatusCode.UNAVAILABLE

        proxy.restore()

        wait_until(lambda: check(ch) == grpc.StatusCode.OK, what="the channel to reconnect after restore")


def test_grpc_through_a_stalled_proxy_misses_its_deadline_then_recovers(health_server: int) -> None:
    with FaultProxy("127.0.0.1", health_server) as proxy, grpc.insecure_channel(proxy.address, FAST_RECONNECT) as ch:
        assert check(ch) == grpc.StatusCode.OK

        proxy.stall()

        assert check(ch, timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert proxy.connections_open == 1  # stalled, not dropped

        proxy.restore()

        wait_until(lambda: check(ch) == grpc.StatusCode.OK, what="the stalled channel to answer again")


DATABASES = [
    pytest.param("XSHA_TEST_POSTGRES_URL", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("XSHA_TEST_MYSQL_URL", id="mysql", marks=pytest.mark.mysql),
]


@pytest.mark.parametrize("env", DATABASES)
def test_database_through_the_proxy_fails_transiently_while_cut(env: str) -> None:
    raw = os.environ.get(env, "").strip()
    if not raw:
        pytest.skip(f"set {env} to run this test against a real database server")
    url = normalize_url(raw)
    assert url.host is not None
    default_port = 5432 if url.get_backend_name() == "postgresql" else 3306
    with FaultProxy(url.host, url.port or default_port) as proxy:
        engine = create_engine_for(url.set(host="127.0.0.1", port=proxy.port), connect_timeout=2, io_timeout=5)
        try:

            def select_one() -> object:
                with engine.connect() as connection:
                    return connection.execute(sa.text("SELECT 1")).scalar_one()

            assert select_one() == 1
            # A connection checked out before the cut dies with it, mid-transaction.
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
                proxy.cut()
                with pytest.raises(sa.exc.DBAPIError) as in_flight:
                    connection.execute(sa.text("SELECT 2"))
            assert is_transient_db_error(in_flight.value), in_flight.value
            # New connections are refused while cut.
            with pytest.raises(sa.exc.DBAPIError) as new_connection:
                select_one()
            assert is_transient_db_error(new_connection.value), new_connection.value

            proxy.restore()

            assert select_one() == 1
        finally:
            engine.dispose()
