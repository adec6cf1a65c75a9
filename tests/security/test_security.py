"""Security (issue 9): nobody gets in without the token or the right client certificate, XAPI TLS is verified
(fingerprint, CA bundle) before any XAPI call, and no credential or token leaks into logs, messages or answers.

The services run as child processes (their logs are read back); XAPI TLS is put in front of xapi_sim by a small
TLS-terminating proxy, since the simulator serves plain HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sync_service import testing as sync_testing
from tests.harness.invariants import assert_outcome_allowed
from tests.harness.proto_strategies import all_rpc_methods, invoke, request_class
from tests.reliability.stack import CREDENTIALS, XSHA_PASSWORD, XSHA_USER, ChildStack, DatabaseTarget, child_stack
from xapi_sim import Simulator
from xsha_api.v1 import sync_service_pb2
from xsha_common.interceptors import bearer_token_metadata
from xsha_common.procs import ChildProcess, health_status
from xsha_common.testing import TestPki, free_port, generate_test_pki, wait_until

METHODS = all_rpc_methods()


def _scenario(hosts: int = 2) -> dict[str, object]:
    return {
        "time_scale": 0.01,
        "pools": [
            {
                "name": "xs82",
                "version": "citrix-hypervisor-8.2",
                "credentials": dict(CREDENTIALS),
                "hosts": {"count": hosts, "memory_gib": 64},
                "vms": [{"count": 5, "name_pattern": "i-2-{n}-VM", "memory_gib": 1}],
            }
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildStack]:
    directory = tmp_path_factory.mktemp("security")
    with child_stack(directory, _scenario(), database=DatabaseTarget.choose(directory, "sqlite")) as running:
        running.register_pools({"sec-1": "xs82"})
        yield running


# ------------------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("method", [m for _, m in METHODS], ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_every_rpc_refuses_a_missing_or_wrong_token(method: object, stack: ChildStack) -> None:
    view = stack.sync if method.containing_service.name == "HypervisorSyncService" else stack.ha  # type: ignore[attr-defined]
    request = request_class(method)()  # type: ignore[arg-type]
    wrong_tokens = [
        (),
        bearer_token_metadata("not-the-token"),
        bearer_token_metadata(stack.ha_token if view is stack.sync else stack.sync_token),  # the other service's
        (("authorization", view.metadata[0][1].replace("Bearer ", "Basic ")),),
    ]
    for metadata in wrong_tokens:
        outcome = invoke(view.channel, method, request, metadata, timeout=10)  # type: ignore[arg-type]
        assert outcome.code is grpc.StatusCode.UNAUTHENTICATED, (metadata, outcome)
        assert_outcome_allowed(method, outcome, authenticated=False, secrets=stack.secrets)  # type: ignore[arg-type]


def test_health_needs_no_token(stack: ChildStack) -> None:
    assert health_status(stack.sync_run.address) == "SERVING"
    assert health_status(stack.ha_run.address) == "SERVING"


def test_no_credential_or_token_in_logs_messages_or_answers(stack: ChildStack) -> None:
    # Refused registrations that carry the password, answers that describe the pool, wrong tokens: then the logs.
    refused = sync_service_pb2.RegisterPoolRequest(
        cluster_id="sec-1",
        master_url="http://127.0.0.1:9",
        credentials=sync_service_pb2.XapiCredentials(username=XSHA_USER, password=XSHA_PASSWORD),
    )
    with pytest.raises(grpc.RpcError) as error:
        stack.sync.stub.RegisterPool(refused, metadata=stack.sync.metadata, timeout=10)
    assert XSHA_PASSWORD not in (error.value.details() or "")  # type: ignore[attr-defined]
    bad = sync_service_pb2.RegisterPoolRequest(
        cluster_id="sec bad",
        master_url=f"http://{XSHA_USER}:{XSHA_PASSWORD}@127.0.0.1:9",
        credentials=sync_service_pb2.XapiCredentials(username=XSHA_USER, password=XSHA_PASSWORD),
    )
    with pytest.raises(grpc.RpcError) as error:
        stack.sync.stub.RegisterPool(bad, metadata=stack.sync.metadata, timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert XSHA_PASSWORD not in (error.value.details() or "")  # type: ignore[attr-defined]
    pool = stack.sync.pool("sec-1")
    assert pool.has_credentials and XSHA_PASSWORD not in str(pool)
    listed = stack.sync.stub.ListPools(sync_service_pb2.ListPoolsRequest(), metadata=stack.sync.metadata, timeout=10)
    assert XSHA_PASSWORD not in str(listed)
    logs = stack.logs()
    assert "sec-1" in logs, "the services' logs were captured"
    for secret in stack.secrets:
        assert secret not in logs, f"a secret ({secret[:6]}...) appears in the logs"


# --------------------------------------------------------------------------------------------------- mutual TLS


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPki, TestPki]:
    return (
        generate_test_pki(tmp_path_factory.mktemp("ours"), "xsha"),
        generate_test_pki(tmp_path_factory.mktemp("theirs"), "other"),
    )


@pytest.mark.parametrize("module", ["sync_service", "ha_service"])
def test_mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca(
    module: str, tmp_path: Path, pkis: tuple[TestPki, TestPki]
) -> None:
    ours, theirs = pkis
    port = free_port()
    env = dict(os.environ)
    token = "mtls-token-123456"
    env["XSHA_SYNC_CREDENTIALS_KEY" if module == "sync_service" else "XSHA_HA_SYNC_TOKEN"] = (
        "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="
    )
    args = [
        *("--listen-address", f"127.0.0.1:{port}", "--metrics-address", "", "--auth-tokens", token),
        *("--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--log-format", "text"),
        *("--tls-cert-file", str(ours.server.cert_file), "--tls-key-file", str(ours.server.key_file)),
        *("--tls-client-ca-file", str(ours.ca.cert_file)),
        *(("--no-controller-enabled",) if module == "ha_service" else ()),
    ]
    child = ChildProcess.python_module(module, module, args, log_path=tmp_path / "service.log", env=env)
    good = grpc.ssl_channel_credentials(ours.ca.cert_pem, ours.client.key_pem, ours.client.cert_pem)
    refused = {
        "no client certificate": grpc.ssl_channel_credentials(ours.ca.cert_pem),
        "a certificate of another CA": grpc.ssl_channel_credentials(
            ours.ca.cert_pem, theirs.client.key_pem, theirs.client.cert_pem
        ),
    }
    service = "HypervisorSyncService" if module == "sync_service" else "HaPolicyService"
    methods = [m for s, m in METHODS if s == service]
    with child:
        child.wait_until_serving(f"127.0.0.1:{port}", timeout=60, credentials=good)
        for what, credentials in refused.items():
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                for method in methods:
                    outcome = invoke(channel, method, request_class(method)(), bearer_token_metadata(token), timeout=5)
                    assert outcome.code is grpc.StatusCode.UNAVAILABLE, (what, method.name, outcome)
        with grpc.secure_channel(f"127.0.0.1:{port}", good) as channel:
            outcome = invoke(channel, methods[0], request_class(methods[0])(), bearer_token_metadata(token))
            assert outcome.code is not grpc.StatusCode.UNAVAILABLE, outcome


# ----------------------------------------------------------------------------------------------------- XAPI TLS


class TlsTerminator:
    """https on a local port in front of a plain-HTTP endpoint; counts the connections it forwarded upstream."""

    def __init__(self, upstream_port: int, cert_file: Path, key_file: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.forwarded = 0
        self.handshakes_failed = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            client = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            self.handshakes_failed += 1
            raw.close()
            return
        try:
            # Wait for the first request bytes: a client that hangs up after the handshake (a fingerprint
            # mismatch) never reaches XAPI.
            first = client.recv(65536)
        except (OSError, ssl.SSLError):
            first = b""
        if not first:
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.forwarded += 1
        upstream.sendall(first)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        client.settimeout(None)
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def _fingerprint(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture
def tls_xapi(tmp_path: Path, pkis: tuple[TestPki, TestPki]) -> Iterator[tuple[Simulator, TlsTerminator]]:
    ours, _ = pkis
    sim = Simulator.from_scenario(_scenario(hosts=1)).start()
    port = int(sim.master_url("xs82").rstrip("/").rsplit(":", 1)[1])
    terminator = TlsTerminator(port, ours.server.cert_file, ours.server.key_file)
    try:
        yield sim, terminator
    finally:
        terminator.close()
        sim.stop()


def _register(
    sync: sync_testing.RunningSyncService, cluster: str, port: int, tls: sync_service_pb2.XapiTlsOptions
) -> None:
    sync.register_pool(cluster, f"https://127.0.0.1:{port}", XSHA_USER, XSHA_PASSWORD, tls=tls)


def test_xapi_tls_is_verified_by_fingerprint_or_ca_bundle(
    tls_xapi: tuple[Simulator, TlsTerminator], pkis: tuple[TestPki, TestPki], tmp_path: Path
) -> None:
    sim, terminator = tls_xapi
    ours, theirs = pkis
    right = _fingerprint(ours.server.cert_file)
    wrong = _fingerprint(theirs.server.cert_file)
    with sync_testing.start_sync_service(f"sqlite:///{tmp_path / 'sync.sqlite'}", event_timeout=1.0) as sync:
        # A wrong fingerprint: refused with a clear sync status error, and no request ever reached XAPI.
        _register(
            sync, "tls-wrong-fp", terminator.port, sync_service_pb2.XapiTlsOptions(certificate_sha256_fingerprint=wrong)
        )
        wait_until(
            lambda: "fingerprint" in sync.pool("tls-wrong-fp").sync_status.last_error, 30, what="a fingerprint error"
        )
        status = sync.pool("tls-wrong-fp").sync_status
        assert status.state != sync_service_pb2.SYNC_STATE_WATCHING and not status.connected
        assert right in status.last_error and "pinned" in status.last_error, status.last_error
        assert terminator.forwarded == 0, "a request went to XAPI over a connection whose certificate did not match"
        assert [c for c in sim.pool("xs82").calls_since(0) if c["user"] == XSHA_USER] == []

        # A CA bundle of another CA: refused too.
        _register(
            sync,
            "tls-wrong-ca",
            terminator.port,
            sync_service_pb2.XapiTlsOptions(ca_bundle_pem=theirs.ca.cert_pem.decode()),
        )
        wait_until(lambda: bool(sync.pool("tls-wrong-ca").sync_status.last_error), 30, what="a certificate error")
        status = sync.pool("tls-wrong-ca").sync_status
        assert not status.connected and "certificate" in status.last_error.lower(), status.last_error
        assert terminator.forwarded == 0
        assert XSHA_PASSWORD not in status.last_error

        # The right fingerprint (with colons, upper case) and the right CA both connect and follow the pool.
        colons = ":".join(right[i : i + 2] for i in range(0, 64, 2)).upper()
        _register(
            sync, "tls-fp", terminator.port, sync_service_pb2.XapiTlsOptions(certificate_sha256_fingerprint=colons)
        )
        sync.wait_watching("tls-fp")
        _register(
            sync, "tls-ca", terminator.port, sync_service_pb2.XapiTlsOptions(ca_bundle_pem=ours.ca.cert_pem.decode())
        )
        sync.wait_watching("tls-ca")
        assert terminator.forwarded > 0
        for cluster in ("tls-wrong-fp", "tls-wrong-ca"):
            assert not sync.pool(cluster).sync_status.connected, f"{cluster} must still be refused"
