"""HTTP connections shared by both wire formats: persistent, with per-call timeouts and TLS pinning."""

from __future__ import annotations

import contextlib
import http.client
import socket
from urllib.parse import urlsplit

from sync_service.xapi.tls import TlsOptions


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the pinned certificate fingerprint right after the handshake."""

    def __init__(self, host: str, port: int | None, *, timeout: float, tls: TlsOptions) -> None:
        super().__init__(host, port, timeout=timeout, context=tls.ssl_context())
        self._tls = tls

    def connect(self) -> None:
        super().connect()
        self._tls.check_peer(self.sock)


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


def open_connection(url: str, tls: TlsOptions, timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = parse_url(url)
    if scheme == "https":
        return _PinnedHTTPSConnection(host, port, timeout=timeout, tls=tls)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def set_timeout(connection: http.client.HTTPConnection, timeout: float) -> None:
    """Applies to the open socket and to the next one."""
    connection.timeout = timeout
    if connection.sock is not None:
        connection.sock.settimeout(timeout)


def abort_connection(connection: http.client.HTTPConnection | None) -> None:
    """Breaks a call blocked on this connection from another thread (its recv fails at once)."""
    if connection is None:
        return
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
