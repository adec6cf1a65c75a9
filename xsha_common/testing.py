"""Helpers for tests of any area: a throwaway PKI (CA, server and client certificates), ports and bounded waits."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Engine, MetaData, event

from xsha_common.db import create_engine_for

Item = TypeVar("Item")


@dataclass(frozen=True)
class CertificateFiles:
    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()


@dataclass(frozen=True)
class TestPki:
    """A CA plus a server certificate (for localhost, 127.0.0.1 and ::1) and a client certificate it signed."""

    __test__ = False  # not a pytest test class

    ca: CertificateFiles
    server: CertificateFiles
    client: CertificateFiles


def generate_test_pki(directory: Path, name: str = "xsha-test") -> TestPki:
    """Write a fresh CA, server and client certificate + key (PEM) under `directory`; valid for one day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> CertificateFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        stem = common_name.replace(" ", "-")
        return _write(directory, stem, cert, key)

    ca_files = _write(directory, f"{name}-ca", ca_cert, ca_key)
    server = leaf(
        f"{name}-server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
    )
    client = leaf(f"{name}-client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(f"{name}-client")])
    return TestPki(ca=ca_files, server=server, client=client)


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertificateFiles:
    cert_file = directory / f"{stem}.crt"
    key_file = directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return CertificateFiles(cert_file, key_file)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. Prefer binding port 0 and reading the bound port: this one can be taken meanwhile."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, *, what: str = "") -> None:
    """Poll `condition` until it is true; AssertionError after `timeout` seconds (a bound, never an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r}")
        time.sleep(interval)


class ResumingStreamRecorder(Generic[Item]):
    """Follows a revision-ordered watch stream (WatchChanges, WatchHaEvents) in a thread, reopening it from the
    last revision seen whenever it breaks (e.g. the service restarted), and records every item it delivers, so a
    test can prove exactly-once delivery across restarts.

    `open_stream(position)` opens the stream from `position`; `read(message)` returns the item a message carries
    (None for a bookmark) and the position it proves. UNAVAILABLE and CANCELLED are expected while a service
    restarts; any other error is recorded in `errors`."""

    def __init__(
        self,
        open_stream: Callable[[int], Any],
        read: Callable[[Any], tuple[Item | None, int]],
        since_revision: int,
        *,
        name: str = "stream-recorder",
    ) -> None:
        self._open_stream = open_stream
        self._read = read
        self.start_revision = since_revision
        self.position = since_revision
        self.items: list[Item] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                call = self._open_stream(self.position)
                with self._lock:
                    self._call = call
                for message in call:
                    item, position = self._read(message)
                    with self._lock:
                        if item is not None:
                            self.items.append(item)
                        self.position = max(self.position, position)
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                # A call's error is also a grpc.Call (code, details); duck-typed, as the stubs do not say so.
                code = error.code() if callable(getattr(error, "code", None)) else None  # type: ignore[attr-defined]
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    details = error.details() if callable(getattr(error, "details", None)) else str(error)  # type: ignore[attr-defined]
                    self.errors.append(f"stream ended with {code.name if code else 'an error'}: {details}")
            except ValueError:  # "Channel closed": the target service is being replaced
                pass
            except Exception as error:
                if self._stop.is_set():
                    return
                self.errors.append(repr(error))
            self._stop.wait(0.1)

    def snapshot(self) -> tuple[list[Item], int]:
        with self._lock:
            return list(self.items), self.position

    def wait_position(self, revision: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.position >= revision, timeout, what=f"the stream to reach revision {revision}")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(5)


def schema_drift(db_url: str, metadata: MetaData, table_prefix: str) -> list[Any]:
    """How the database's tables named `table_prefix`* differ from `metadata` (Alembic's autogenerate comparison):
    empty when a service's migrations build exactly the schema its models declare."""

    def own_tables(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or (name or "").startswith(table_prefix)

    engine = create_engine_for(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_name": own_tables})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


class SqliteInstructions:
    """Counts the virtual-machine instructions SQLite runs for an engine's statements (by its progress handler):
    a measure of how much of a table a statement reads that does not depend on the machine's speed."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._count_on)

    def _count_on(self, connection: Any, *_: Any) -> None:
        connection.connection.driver_connection.set_progress_handler(self._tick, 100)

    def _tick(self) -> int:
        self.count += 100
        return 0  # go on

    def of(self, action: Callable[[], object]) -> int:
        self.count = 0
        action()
        return self.count
