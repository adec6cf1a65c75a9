"""Both services start from their command lines, serve health and reflection, and refuse unauthenticated calls.

Each test runs `python -m <service>` as a child process on a real port, as an operator or a container would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.fernet import Fernet
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import make_url

from tests.harness.tcp_proxy import FaultProxy
from xsha_api.v1 import ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_common.interceptors import bearer_token_metadata
from xsha_common.procs import ChildProcess, ProcessFailedError, health_status
from xsha_common.testing import TestPki, free_port, generate_test_pki, wait_until

TOKEN = "entrypoint-test-token"


@dataclass(frozen=True)
class ServiceUnderTest:
    module: str
    service_name: str
    extra_args: tuple[str, ...]

    def call_without_error(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        """One cheap RPC of the service; raises grpc.RpcError when refused."""
        if self.module == "sync_service":
            sync_service_pb2_grpc.HypervisorSyncServiceStub(channel).ListPools(
                sync_service_pb2.ListPoolsRequest(), metadata=metadata, timeout=5
            )
        else:
            ha_service_pb2_grpc.HaPolicyServiceStub(channel).GetSettings(
                ha_service_pb2.GetSettingsRequest(), metadata=metadata, timeout=5
            )


SERVICES = [
    ServiceUnderTest("sync_service", "cloudstack.xsha.v1.HypervisorSyncService", ()),
    # The controller needs sync_service; these tests are about the server, so it stays off.
    ServiceUnderTest("ha_service", "cloudstack.xsha.v1.HaPolicyService", ("--no-controller-enabled",)),
]


def start(service: ServiceUnderTest, tmp_path: Path, *extra: str) -> tuple[ChildProcess, str]:
    port = free_port()
    env = dict(os.environ)
    args = [
        "--listen-address",
        f"127.0.0.1:{port}",
        "--metrics-address",
        "",
        "--auth-tokens",
        TOKEN,
        "--database-url",
        f"sqlite:///{tmp_path / 'db' / 'service.sqlite'}",
        "--log-format",
        "text",
        *service.extra_args,
        *extra,
    ]
    if service.module == "sync_service":
        # Passed through the environment, as a deployment would: never on a command line.
        env["XSHA_SYNC_CREDENTIALS_KEY"] = Fernet.generate_key().decode()
    child = ChildProcess.python_module(service.module, service.module, args, log_path=tmp_path / "service.log", env=env)
    child.start()
    return child, f"127.0.0.1:{port}"


@pytest.fixture(params=SERVICES, ids=[s.module for s in SERVICES])
def service(request: pytest.FixtureRequest) -> ServiceUnderTest:
    chosen: ServiceUnderTest = request.param
    return chosen


@pytest.fixture
def running(service: ServiceUnderTest, tmp_path: Path) -> Iterator[tuple[ChildProcess, str]]:
    child, target = start(service, tmp_path)
    try:
        child.wait_until_serving(target, timeout=60)
        yield child, target
    finally:
        child.stop()


def test_health_answers_serving_overall_and_for_the_service(
    service: ServiceUnderTest, running: tuple[ChildProcess, str]
) -> None:
    _, target = running
    assert health_status(target) == "SERVING"
    assert health_status(target, service=service.service_name) == "SERVING"


def test_reflection_lists_the_service_health_and_reflection(
    service: ServiceUnderTest, running: tuple[ChildProcess, str]
) -> None:
    _, target = running
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), metadata=bearer_token_metadata(TOKEN), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {service.service_name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_a_call_without_or_with_a_wrong_token_is_unauthenticated(
    service: ServiceUnderTest, running: tuple[ChildProcess, str]
) -> None:
    _, target = running
    with grpc.insecure_channel(target) as channel:
        for metadata in ((), bearer_token_metadata("not-the-token")):
            with pytest.raises(grpc.RpcError) as refused:
                service.call_without_error(channel, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        service.call_without_error(channel, bearer_token_metadata(TOKEN))


def test_once_serving_the_start_up_objects_are_frozen_out_of_full_collections(
    running: tuple[ChildProcess, str],
) -> None:
    """Full garbage collections that walked every start-up object paused a busy service for 50-100 ms."""
    child, _ = running
    wait_until(lambda: "start-up objects frozen" in child.log_tail(), timeout=30, what="the freeze to be logged")
    line = next(line for line in child.log_tail().splitlines() if "start-up objects frozen" in line)
    count = re.search(r"objects=(\d+)", line)
    assert count is not None, line
    assert int(count.group(1)) > 10_000  # modules, metadata, the server: about 10^5 objects


def test_sigterm_shuts_down_cleanly(service: ServiceUnderTest, running: tuple[ChildProcess, str]) -> None:
    child, target = running
    child.send_signal(signal.SIGTERM)
    assert child.stop(timeout=30) == 0
    assert health_status(target) is None


def test_a_bad_setting_is_refused_with_a_clear_message_and_exit_code_2(
    service: ServiceUnderTest, tmp_path: Path
) -> None:
    child, target = start(service, tmp_path, "--max-workers", "0")
    with pytest.raises(ProcessFailedError, match="exited with code 2"):
        child.wait_until_serving(target, timeout=60)
    assert "max_workers" in child.log_tail()


@pytest.mark.parametrize("taken_option", ["--listen-address", "--metrics-address"])
def test_a_port_in_use_ends_start_up_with_a_clear_message_and_exit_code_2(
    service: ServiceUnderTest, tmp_path: Path, taken_option: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        child, target = start(service, tmp_path, taken_option, taken)
        with pytest.raises(ProcessFailedError, match="exited with code 2"):
            child.wait_until_serving(target, timeout=60)
    log = child.log_tail()
    what = "listen on" if taken_option == "--listen-address" else "serve metrics on"
    assert f"{service.module}: cannot {what} {taken}" in log
    assert "another process using that port?" in log
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPki, TestPki]:
    """The service's PKI, and another CA whose client certificates must be refused."""
    return (
        generate_test_pki(tmp_path_factory.mktemp("pki"), "xsha"),
        generate_test_pki(tmp_path_factory.mktemp("other-pki"), "other"),
    )


def test_mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca(
    service: ServiceUnderTest, tmp_path: Path, pki: tuple[TestPki, TestPki]
) -> None:
    ours, theirs = pki
    child, target = start(
        service,
        tmp_path,
        "--tls-cert-file",
        str(ours.server.cert_file),
        "--tls-key-file",
        str(ours.server.key_file),
        "--tls-client-ca-file",
        str(ours.ca.cert_file),
    )
    trusted_root = ours.ca.cert_pem
    with_our_cert = grpc.ssl_channel_credentials(trusted_root, ours.client.key_pem, ours.client.cert_pem)
    try:
        child.wait_until_serving(target, timeout=60, credentials=with_our_cert)
        without_cert = grpc.ssl_channel_credentials(trusted_root)
        with_their_cert = grpc.ssl_channel_credentials(trusted_root, theirs.client.key_pem, theirs.client.cert_pem)
        for refused_credentials in (without_cert, with_their_cert):
            with grpc.secure_channel(target, refused_credentials) as channel, pytest.raises(grpc.RpcError) as refused:
                service.call_without_error(channel, bearer_token_metadata(TOKEN))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(target, with_our_cert) as channel:
            service.call_without_error(channel, bearer_token_metadata(TOKEN))
    finally:
        child.stop()


def test_a_database_that_never_answers_ends_start_up_with_a_clear_message_and_exit_code_2(
    service: ServiceUnderTest, tmp_path: Path
) -> None:
    unreachable = f"mysql+pymysql://xsha:secret-db-password@127.0.0.1:{free_port()}/xsha"
    child, target = start(service, tmp_path, "--database-url", unreachable, "--database-connect-timeout", "1")
    with pytest.raises(ProcessFailedError, match="exited with code 2"):
        child.wait_until_serving(target, timeout=60)
    log = child.log_tail()
    assert "did not answer within 1 s" in log
    assert "secret-db-password" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("db_backend", ["mysql", "postgresql"])
def test_a_database_that_comes_back_during_start_up_is_waited_for(
    service: ServiceUnderTest, tmp_path: Path, db_url: str
) -> None:
    url = make_url(db_url)
    with FaultProxy(str(url.host), int(url.port or 0)) as proxy:
        proxy.cut()
        through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        child, target = start(service, tmp_path, "--database-url", through_proxy, "--database-auto-upgrade")
        try:
            wait_until(lambda: "database not answering yet" in child.log_tail(), timeout=60, what="a retry")
            proxy.restore()
            child.wait_until_serving(target, timeout=60)
        finally:
            child.stop()
