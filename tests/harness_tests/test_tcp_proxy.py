"""FaultProxy on real sockets: forwarding, cut, stall, slow, counters, teardown."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.harness.echo import EchoServer, connect, recv_exactly
from tests.harness.tcp_proxy import FaultProxy
from xsha_common.testing import wait_until

# What a client may see when the proxy drops its connection: a reset, or (after a FIN) an orderly EOF.
DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)


def assert_dropped(client: socket.socket) -> None:
    """The connection is dead: a read ends in a reset or EOF (bounded by the socket's timeout, never hangs)."""
    with pytest.raises(DROPPED):
        data = client.recv(1)
        if not data:
            raise EOFError
        pytest.fail(f"read {data!r} from a connection that should be closed")


def assert_new_connections_dropped(port: int) -> None:
    """A new connection is refused, reset while connecting, or dropped right after (any is fine: none serves)."""
    try:
        client = connect(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return
    with client:
        assert_dropped(client)


def test_bytes_flow_both_ways_and_are_counted(proxy: FaultProxy, echo_server: EchoServer) -> None:
    payload = os.urandom(1 << 20)  # more than one read and more than the socket buffers
    with connect(proxy.port) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        echoed = recv_exactly(client, len(payload))
        sender.join(5)
        assert echoed == payload
        assert echo_server.received == payload
        # The loop counts a chunk just after sending it, so the client may read it a moment before it is counted.
        wait_until(lambda: proxy.stats().bytes_to_client == len(payload), what="the last chunk to be counted")
        stats = proxy.stats()
        assert stats.connections_accepted == 1
        assert stats.connections_open == 1
        assert stats.bytes_to_upstream == len(payload)
    wait_until(lambda: proxy.connections_open == 0, what="the proxy to close the connection the client closed")


def test_half_close_is_forwarded(proxy: FaultProxy) -> None:
    with connect(proxy.port) as client:
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)  # the echo server sees EOF, finishes and closes its side
        assert recv_exactly(client, 10) == b"last words"
        assert client.recv(1) == b""


def test_cut_resets_live_connections_and_refuses_new_ones_until_restore(proxy: FaultProxy) -> None:
    with connect(proxy.port) as live:
        live.sendall(b"ping")
        assert recv_exactly(live, 4) == b"ping"

        proxy.cut()

        assert proxy.is_cut
        assert proxy.connections_open == 0
        assert_dropped(live)
    assert_new_connections_dropped(proxy.port)
    assert proxy.stats().connections_rejected >= 1

    proxy.restore()

    with connect(proxy.port) as after:
        after.sendall(b"pong")
        assert recv_exactly(after, 4) == b"pong"


def test_cut_with_fin_closes_in_order(proxy: FaultProxy) -> None:
    with connect(proxy.port) as live:
        live.sendall(b"x")
        assert recv_exactly(live, 1) == b"x"
        proxy.cut(how="close")
        assert live.recv(1) == b""


def test_cut_for_restores_by_itself(proxy: FaultProxy) -> None:
    proxy.cut_for(0.2)
    assert proxy.is_cut
    assert_new_connections_dropped(proxy.port)
    wait_until(lambda: not proxy.is_cut, what="cut_for to restore")
    with connect(proxy.port) as after:
        after.sendall(b"back")
        assert recv_exactly(after, 4) == b"back"


def test_a_later_fault_cancels_the_cut_for_timer(proxy: FaultProxy) -> None:
    proxy.cut_for(0.1)
    proxy.cut()  # an explicit cut outlives the earlier timer
    time.sleep(0.3)
    assert proxy.is_cut
    proxy.restore()
    assert not proxy.is_cut


def test_stall_holds_bytes_until_restore(proxy: FaultProxy, echo_server: EchoServer) -> None:
    with connect(proxy.port) as client:
        client.sendall(b"before")
        assert recv_exactly(client, 6) == b"before"

        proxy.stall()
        client.sendall(b"held")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(1)
        # Causality: the server has not seen the bytes, and the connection is still open.
        assert echo_server.received == b"before"
        assert proxy.connections_open == 1
        assert proxy.stats().bytes_to_upstream == 6

        proxy.restore()

        client.settimeout(5)
        assert recv_exactly(client, 4) == b"held"
        assert echo_server.received == b"beforeheld"


def test_stall_holds_bytes_already_on_their_way(proxy: FaultProxy, echo_server: EchoServer) -> None:
    # Bytes read under latency, then stalled before they are due: they must wait for restore too.
    proxy.slow(0.3)
    with connect(proxy.port) as client:
        client.sendall(b"queued")
        proxy.stall()
        time.sleep(0.4)
        assert echo_server.received == b""
        proxy.restore()
        assert recv_exactly(client, 6) == b"queued"


def test_slow_adds_at_least_the_latency_each_way(proxy: FaultProxy) -> None:
    latency = 0.15
    with connect(proxy.port) as client:
        proxy.slow(latency)
        started = time.monotonic()
        client.sendall(b"slow")
        assert recv_exactly(client, 4) == b"slow"
        assert time.monotonic() - started >= 2 * latency  # there and back again


def test_slow_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    bandwidth = 200_000
    payload = os.urandom(40_000)
    with connect(proxy.port) as client:
        proxy.slow(0, bandwidth_bytes_per_s=bandwidth)
        started = time.monotonic()
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(client, len(payload)) == payload
        sender.join(5)
        # Each byte crossed the limited link twice; the two directions overlap, so one crossing is the floor.
        assert time.monotonic() - started >= len(payload) / bandwidth


def test_slow_keeps_order(proxy: FaultProxy) -> None:
    with connect(proxy.port) as client:
        proxy.slow(0.05)
        expected = b""
        for index in range(20):
            chunk = f"<{index}>".encode()
            client.sendall(chunk)
            expected += chunk
            if index == 10:
                proxy.slow(0)  # later chunks are due sooner, but must not overtake
        assert recv_exactly(client, len(expected)) == expected


def test_upstream_down_drops_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        assert_new_connections_dropped(proxy.port)
        wait_until(lambda: proxy.connections_open == 0, what="the failed connection to be closed")


def test_stop_with_open_connections_is_bounded_and_idempotent(echo_server: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo_server.port)
    port = proxy.start()
    clients = [connect(port) for _ in range(5)]
    proxy.stall()
    for client in clients:
        client.sendall(b"stuck")
    proxy.stop()
    proxy.stop()
    for client in clients:
        assert_dropped(client)
        client.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    # Control calls after stop neither hang nor raise.
    proxy.cut()
    proxy.restore()


def test_stop_before_start_is_harmless() -> None:
    FaultProxy("127.0.0.1", 1).stop()


def test_fault_calls_from_many_threads(proxy: FaultProxy) -> None:
    errors: list[BaseException] = []

    def chaos() -> None:
        try:
            for _ in range(20):
                proxy.cut()
                proxy.stall()
                proxy.slow(0.001)
                proxy.restore()
        except BaseException as exc:
            errors.append(exc)

    def traffic() -> None:
        for _ in range(20):
            try:
                with connect(proxy.port, timeout=2) as client:
                    client.sendall(b"x")
                    client.recv(1)
            except (OSError, EOFError):
                pass  # dropped by a cut: expected

    threads = [threading.Thread(target=chaos) for _ in range(4)] + [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    proxy.restore()
    with connect(proxy.port) as client:
        client.sendall(b"alive")
        assert recv_exactly(client, 5) == b"alive"
