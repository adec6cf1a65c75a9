"""TLS for XAPI connections: a CA bundle, a pinned SHA-256 certificate fingerprint, or an explicit opt-out."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import ssl
from dataclasses import dataclass

from sync_service.xapi.errors import XapiConnectionError

_FINGERPRINT_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(value: str) -> str:
    """`AB:CD:...` or `abcd...` -> 64 lower-case hex digits; ValueError when it is not a SHA-256 fingerprint."""
    cleaned = value.strip().lower().replace(":", "").replace(" ", "")
    if not _FINGERPRINT_HEX.match(cleaned):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits (colons optional)")
    return cleaned


@dataclass(frozen=True)
class TlsOptions:
    """At most one of the three is set; none means the system trust store with hostname checks."""

    ca_bundle_pem: str = ""
    certificate_sha256_fingerprint: str = ""
    insecure_skip_verify: bool = False

    @property
    def mode(self) -> str:
        if self.ca_bundle_pem:
            return "ca_bundle"
        if self.certificate_sha256_fingerprint:
            return "fingerprint"
        if self.insecure_skip_verify:
            return "insecure"
        return "system"

    def ssl_context(self) -> ssl.SSLContext:
        """The context for an https connection. Fingerprint pinning and insecure turn chain verification off;
        pinning then checks the peer certificate itself after the handshake (`check_peer`)."""
        if self.ca_bundle_pem:
            context = ssl.create_default_context(cadata=self.ca_bundle_pem)
            # Pools are often addressed by IP with certificates naming the host: the CA is the trust anchor here.
            context.check_hostname = False
            return context
        if self.certificate_sha256_fingerprint or self.insecure_skip_verify:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context()

    def check_peer(self, sock: socket.socket) -> None:
        """With pinning: XapiConnectionError unless the peer's DER certificate hashes to the pinned fingerprint."""
        if not self.certificate_sha256_fingerprint or not isinstance(sock, ssl.SSLSocket):
            return
        der = sock.getpeercert(binary_form=True)
        if der is None:
            raise XapiConnectionError("the XAPI host presented no TLS certificate")
        actual = hashlib.sha256(der).hexdigest()
        expected = normalize_fingerprint(self.certificate_sha256_fingerprint)
        if not hmac.compare_digest(actual, expected):
            raise XapiConnectionError(
                f"the XAPI host's certificate fingerprint {actual} does not match the pinned one; "
                "update the pool's TLS options if the certificate was replaced on purpose"
            )
