"""build_server end to end: health, reflection, the four RPC kinds, TLS and mutual TLS, metrics, shutdown."""

from __future__ import annotations

import socket
import threading
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from xsha_common.config import ConfigError, ConfigSchema, load_config, logging_settings_group, server_settings_group
from xsha_common.metrics import MetricsRegistry
from xsha_common.server import ListenError, ServerSettings, ServiceServer
from xsha_common.testing import TestPki, wait_until

from .conftest import AUTH, ECHO_SERVICE, GOOD_TOKEN, EchoService, ServerFactory, call_unary, rpc, rpc_error, tmp_file

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(channel: grpc.Channel, service: str = "") -> int:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


def local_health_status(server: ServiceServer) -> int | None:
    return server.health_status("")


def test_health_is_serving_for_the_server_and_each_service_without_a_token(make_server: ServerFactory) -> None:
    server, _ = make_server()
    with grpc.insecure_channel(server.address) as channel:
        assert health_status(channel) == SERVING
        assert health_status(channel, ECHO_SERVICE) == SERVING
        unknown = rpc_error(lambda: health_status(channel, "no.such.Service"))
        assert unknown.code() is grpc.StatusCode.NOT_FOUND


def test_health_is_not_serving_before_start(make_server: ServerFactory) -> None:
    server, _ = make_server(start=False)
    assert local_health_status(server) == NOT_SERVING


def test_reflection_lists_every_service(make_server: ServerFactory) -> None:
    server, _ = make_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), metadata=AUTH, timeout=5))
    names = {service.name for service in responses[0].list_services_response.service}
    assert names == {ECHO_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_all_four_rpc_kinds_pass_through_the_interceptors(channel: grpc.Channel) -> None:
    assert call_unary(channel, "Unary", b"ping", metadata=AUTH, timeout=5) == b"ping"
    streamed = rpc(channel, "unary_stream", "ServerStream")(b"a,b,c", metadata=AUTH, timeout=5)
    assert list(streamed) == [b"a", b"b", b"c"]
    joined = rpc(channel, "stream_unary", "ClientStream")(iter([b"x", b"y"]), metadata=AUTH, timeout=5)
    assert joined == b"x+y"
    echoed = rpc(channel, "stream_stream", "BidiStream")(iter([b"p", b"q"]), metadata=AUTH, timeout=5)
    assert list(echoed) == [b"P", b"Q"]


def test_port_zero_gives_distinct_ports_and_registries_do_not_clash(make_server: ServerFactory) -> None:
    first, _ = make_server(metrics_address="127.0.0.1:0")
    second, _ = make_server(metrics_address="127.0.0.1:0")
    assert first.port != second.port and first.port > 0
    assert first.metrics_port is not None and second.metrics_port is not None
    assert first.metrics_port != second.metrics_port
    with grpc.insecure_channel(first.address) as channel:
        call_unary(channel, "Unary", b"", metadata=AUTH, timeout=5)
    labels = {"grpc_service": ECHO_SERVICE, "grpc_method": "Unary", "grpc_type": "unary", "grpc_code": "OK"}
    assert first.metrics.sample_value("xsha_grpc_server_handled_total", labels) == 1
    assert second.metrics.sample_value("xsha_grpc_server_handled_total", labels) is None


def test_metrics_endpoint_serves_rpc_counters_after_a_call(make_server: ServerFactory) -> None:
    registry = MetricsRegistry()
    registry.gauge("pool_connected", "1 when the pool's watcher is connected.", ("pool",)).labels("p1").set(1)
    server, _ = make_server(metrics=registry, metrics_address="127.0.0.1:0")
    with grpc.insecure_channel(server.address) as channel:
        call_unary(channel, "Unary", b"x", metadata=AUTH, timeout=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert (
        'xsha_grpc_server_handled_total{grpc_code="OK",grpc_method="Unary",grpc_service="xsha.test.Echo",'
        'grpc_type="unary"} 1.0' in body
    )
    assert 'xsha_grpc_server_handling_seconds_count{grpc_method="Unary"' in body
    assert 'xsha_pool_connected{pool="p1"} 1.0' in body


def test_metrics_are_off_without_an_address(server_and_echo: tuple[ServiceServer, EchoService]) -> None:
    server, _ = server_and_echo
    assert server.metrics_port is None


# --- TLS ----------------------------------------------------------------------------------------------------------


def tls_settings(pki: TestPki, mutual: bool) -> dict[str, Path | None]:
    return {
        "tls_cert_file": pki.server.cert_file,
        "tls_key_file": pki.server.key_file,
        "tls_client_ca_file": pki.ca.cert_file if mutual else None,
    }


def tls_ping(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        return call_unary(channel, "Unary", b"over-tls", metadata=AUTH, timeout=5)


def test_tls_client_trusting_the_ca_connects(make_server: ServerFactory, pki: TestPki) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=False))
    assert tls_ping(server.port, grpc.ssl_channel_credentials(pki.ca.cert_pem)) == b"over-tls"


def test_tls_client_trusting_another_ca_is_refused(
    make_server: ServerFactory, pki: TestPki, other_pki: TestPki
) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=False))
    error = rpc_error(lambda: tls_ping(server.port, grpc.ssl_channel_credentials(other_pki.ca.cert_pem)))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(make_server: ServerFactory, pki: TestPki) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=False))
    with grpc.insecure_channel(f"localhost:{server.port}") as channel:
        error = rpc_error(lambda: call_unary(channel, "Unary", b"", metadata=AUTH, timeout=5))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(make_server: ServerFactory, pki: TestPki) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=True))
    error = rpc_error(lambda: tls_ping(server.port, grpc.ssl_channel_credentials(pki.ca.cert_pem)))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    make_server: ServerFactory, pki: TestPki, other_pki: TestPki
) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=True))
    credentials = grpc.ssl_channel_credentials(
        pki.ca.cert_pem, private_key=other_pki.client.key_pem, certificate_chain=other_pki.client.cert_pem
    )
    error = rpc_error(lambda: tls_ping(server.port, credentials))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_a_certificate_from_the_client_ca(make_server: ServerFactory, pki: TestPki) -> None:
    server, _ = make_server(**tls_settings(pki, mutual=True))
    credentials = grpc.ssl_channel_credentials(
        pki.ca.cert_pem, private_key=pki.client.key_pem, certificate_chain=pki.client.cert_pem
    )
    assert tls_ping(server.port, credentials) == b"over-tls"


# --- settings -----------------------------------------------------------------------------------------------------


def test_settings_without_tokens_must_disable_auth_explicitly() -> None:
    with pytest.raises(ValueError, match="no auth token"):
        ServerSettings(listen_address="127.0.0.1:0")


def test_settings_report_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        ServerSettings(
            listen_address="nonsense",
            tls_client_ca_file=tmp_path / "ca.pem",
            auth_disabled=True,
            max_workers=0,
        )
    message = str(caught.value)
    assert "listen_address" in message and "tls_client_ca_file" in message and "max_workers" in message


def test_settings_repr_hides_tokens() -> None:
    assert GOOD_TOKEN not in repr(ServerSettings(auth_tokens=(GOOD_TOKEN,)))


def test_auth_disabled_is_logged_loudly_and_lets_calls_through(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="xsha.server"):
        server, _ = make_server(auth_tokens=(), auth_disabled=True)
    assert any("AUTHENTICATION DISABLED" in record.getMessage() for record in caplog.records)
    with grpc.insecure_channel(server.address) as channel:
        assert call_unary(channel, "Unary", b"open", timeout=5) == b"open"


def test_a_port_in_use_is_a_clear_error(make_server: ServerFactory) -> None:
    first, _ = make_server()
    second, _ = make_server(start=False, listen_address=f"127.0.0.1:{first.port}")
    with pytest.raises(ListenError, match="cannot listen on"):
        second.start()


def test_a_metrics_port_in_use_is_a_clear_error_and_nothing_serves(make_server: ServerFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        server, _ = make_server(start=False, metrics_address=taken)
        with pytest.raises(ListenError, match=f"cannot serve metrics on {taken}: Address already in use"):
            server.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


def test_server_settings_from_config_reads_the_token_file(tmp_path: Path) -> None:
    schema = ConfigSchema("svc", "XSHA_T_", "test", (server_settings_group("127.0.0.1:0"), logging_settings_group()))
    token_file = tmp_file(tmp_path, "tokens", "# comment\nfile-token-1\n\nfile-token-2\n")
    config = load_config(schema, ["--auth-token-file", str(token_file), "--auth-tokens", "flag-token"], {})
    settings = ServerSettings.from_config(config)
    assert settings.auth_tokens == ("flag-token", "file-token-1", "file-token-2")
    empty_file = tmp_file(tmp_path, "empty", "\n")
    config = load_config(schema, ["--auth-token-file", str(empty_file)], {})
    with pytest.raises(ConfigError, match="holds no token"):
        ServerSettings.from_config(config)


# --- graceful shutdown --------------------------------------------------------------------------------------------


def test_shutdown_reports_not_serving_to_watchers_before_the_server_stops(make_server: ServerFactory) -> None:
    server, _ = make_server(shutdown_grace_seconds=5)
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(watch).status == SERVING
        server.request_shutdown()  # what SIGTERM calls
        assert next(watch).status == NOT_SERVING
        assert server.wait(timeout=20)


def test_drain_period_answers_not_serving_while_still_accepting_calls(make_server: ServerFactory) -> None:
    server, _ = make_server(shutdown_drain_seconds=30)
    with grpc.insecure_channel(server.address) as channel:
        server.request_shutdown()
        wait_until(lambda: health_status(channel) == NOT_SERVING, what="health NOT_SERVING")
        # The server still serves during the drain, so a load balancer has time to notice.
        assert call_unary(channel, "Unary", b"still here", metadata=AUTH, timeout=5) == b"still here"
        assert not server.wait(timeout=0)
        server.request_shutdown()  # a second signal skips the rest of the drain
        assert server.wait(timeout=20)


def test_in_flight_call_completes_within_the_grace_period(make_server: ServerFactory) -> None:
    server, echo = make_server(shutdown_grace_seconds=30)
    order: list[str] = []
    server.add_shutdown_callback(lambda: order.append("close database"), "close database")
    server.add_shutdown_callback(lambda: order.append("stop watchers"), "stop watchers")
    with grpc.insecure_channel(server.address) as channel, futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(call_unary, channel, "Block", b"", metadata=AUTH, timeout=30)
        assert echo.block_entered.wait(timeout=10)
        shutting_down = threading.Thread(target=server.shutdown)
        shutting_down.start()
        wait_until(lambda: local_health_status(server) == NOT_SERVING, what="health NOT_SERVING")
        # New calls are refused once stop() began; the in-flight one is still running.
        wait_until(
            lambda: _refused(channel),
            what="new calls refused during shutdown",
        )
        assert order == []
        echo.release_block.set()
        assert in_flight.result(timeout=20) == b"finished"
        shutting_down.join(timeout=20)
    assert server.wait(timeout=0)
    assert order == ["stop watchers", "close database"]


def _refused(channel: grpc.Channel) -> bool:
    try:
        call_unary(channel, "Unary", b"", metadata=AUTH, timeout=2)
    except grpc.RpcError:
        return True
    return False


def test_a_failing_shutdown_callback_does_not_stop_the_others(make_server: ServerFactory) -> None:
    server, _ = make_server()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("watcher already gone")

    server.add_shutdown_callback(lambda: ran.append("last"))
    server.add_shutdown_callback(broken)
    server.shutdown(grace_seconds=0)
    assert ran == ["last"]
    server.shutdown()  # idempotent
