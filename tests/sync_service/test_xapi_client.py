"""The XAPI client layer against the simulator: both wires, detection, allow-list (R6), sessions, TLS."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync_service.xapi import (
    ForbiddenXapiMethodError,
    TlsOptions,
    XapiConnectionError,
    XapiEndpoint,
    XapiError,
    connect,
)
from sync_service.xapi.allowed import ALLOWED_METHODS, VM_POWER_OPERATIONS, check_allowed
from tests.sync_service.conftest import ORIGINATOR
from xsha_common.testing import generate_test_pki


def test_power_operations_are_not_in_the_allow_list() -> None:
    assert not (ALLOWED_METHODS & VM_POWER_OPERATIONS)
    for method in VM_POWER_OPERATIONS:
        with pytest.raises(ForbiddenXapiMethodError, match="power operation"):
            check_allowed(method)
    # xapi also accepts Class_method spellings; they cannot slip through.
    for method in ("VM_start", "VM_hard_shutdown", "VM_pool_migrate", "host_metrics_get_record_x"):
        with pytest.raises(ForbiddenXapiMethodError):
            check_allowed(method)
    assert check_allowed("event_from") == "event.from"
    assert check_allowed("host_metrics_get_record") == "host_metrics.get_record"


@pytest.mark.parametrize("wire", ["json", "xml"])
def test_a_power_operation_never_leaves_the_client(wire: str, make_sim: Any) -> None:
    sim = make_sim(jsonrpc=wire == "json")
    client = connect(XapiEndpoint(sim.master_url()), "root", "password")
    try:
        assert client.wire_format == wire
        halted = sim.pool().vm_by_name("halted-1")
        before = len(sim.pool().calls_since(0))
        for method in ("VM.start", "VM_start", "VM.clean_shutdown", "VM.pool_migrate"):
            with pytest.raises(ForbiddenXapiMethodError):
                client.call(method, halted.ref, False, False)
        assert halted.rec["power_state"] == "Halted"
        assert len(sim.pool().calls_since(0)) == before  # refused before anything was sent
        ref = client.call("VM.get_by_uuid", halted.uuid)
        record = client.call("VM.get_record", ref)
        assert record["uuid"] == halted.uuid
        assert {entry["originator"] for entry in sim.pool().calls_since(before)} == {ORIGINATOR}
    finally:
        client.close()


def test_json_is_preferred_and_xml_is_the_fallback(make_sim: Any) -> None:
    with_json = make_sim(jsonrpc=True, name="a")
    without = make_sim(jsonrpc=False, name="b")
    assert connect(XapiEndpoint(with_json.master_url()), "root", "password").wire_format == "json"
    assert connect(XapiEndpoint(without.master_url()), "root", "password").wire_format == "xml"
    assert connect(XapiEndpoint(with_json.master_url()), "root", "password", wire="xml").wire_format == "xml"


@pytest.mark.parametrize("wire", ["json", "xml"])
def test_errors_sessions_and_events(wire: str, make_sim: Any) -> None:
    sim = make_sim(jsonrpc=wire == "json")
    pool = sim.pool()
    slave = next(url for url in sim.host_urls() if url != sim.master_url())
    with pytest.raises(XapiError) as info:
        connect(XapiEndpoint(slave), "root", "password", wire=wire)  # type: ignore[arg-type]
    assert info.value.code == "HOST_IS_SLAVE" and info.value.params
    with pytest.raises(XapiError) as info:
        connect(XapiEndpoint(sim.master_url()), "root", "bad", wire=wire)  # type: ignore[arg-type]
    assert info.value.code == "SESSION_AUTHENTICATION_FAILED"

    client = connect(XapiEndpoint(sim.master_url()), "root", "password", wire=wire)  # type: ignore[arg-type]
    batch = client.event_from(["vm", "host", "host_metrics", "pool"], "", 1.0)
    assert batch.token and {event.operation for event in batch.events} == {"add"}
    assert batch.valid_ref_counts["vm"] == len(pool.store.all("VM"))
    with pytest.raises(XapiError) as info:
        client.event_from(["vm"], "not-a-token", 1.0)
    assert info.value.code == "EVENT_FROM_TOKEN_PARSE_FAILURE"
    # An expired session is renewed transparently.
    pool.expire_sessions()
    assert client.call("pool.get_all")
    assert client.relogins == 1
    # A broken connection is a connection error, and the client reconnects on the next call.
    sim.stop()
    with pytest.raises(XapiConnectionError):
        client.call("pool.get_all")
    sim.start()
    assert client.call("pool.get_all")
    client.close()


class _TlsProxy:
    """TLS in front of a plain simulator endpoint (the simulator itself speaks plain HTTP)."""

    def __init__(self, upstream_port: int, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(source: socket.socket, target: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    target.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def tls_sim(make_sim: Any, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    sim = make_sim()
    pki = generate_test_pki(tmp_path / "pki")
    port = int(sim.master_url().rstrip("/").rsplit(":", 1)[1])
    proxy = _TlsProxy(port, pki.server.cert_file, pki.server.key_file)
    yield f"https://127.0.0.1:{proxy.port}", pki
    proxy.close()


def test_tls_ca_bundle_fingerprint_pinning_and_explicit_opt_out(tls_sim: tuple[str, Any]) -> None:
    url, pki = tls_sim
    ca_pem = pki.ca.cert_pem.decode()
    der = ssl.PEM_cert_to_DER_cert(pki.server.cert_pem.decode())
    fingerprint = hashlib.sha256(der).hexdigest()
    colon_fingerprint = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    for tls in (
        TlsOptions(ca_bundle_pem=ca_pem),
        TlsOptions(certificate_sha256_fingerprint=colon_fingerprint),
        TlsOptions(insecure_skip_verify=True),
    ):
        for wire in ("json", "xml"):
            client = connect(XapiEndpoint(url, tls), "root", "password", wire=wire)  # type: ignore[arg-type]
            assert client.call("pool.get_all")
            client.close()
    # Wrong pin, foreign CA, or the system trust store for a private CA: refused.
    other = generate_test_pki(Path(pki.ca.cert_file).parent.parent / "other")
    for tls in (
        TlsOptions(certificate_sha256_fingerprint="00" * 32),
        TlsOptions(ca_bundle_pem=other.ca.cert_pem.decode()),
        TlsOptions(),
    ):
        for wire in ("json", "xml"):
            with pytest.raises(XapiConnectionError):
                connect(XapiEndpoint(url, tls), "root", "password", wire=wire)  # type: ignore[arg-type]
