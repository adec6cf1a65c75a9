"""TLS credentials for gRPC servers and clients, read from PEM files."""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> grpc.ServerCredentials:
    """Server TLS; with `client_ca_file`, mutual TLS that refuses clients without a certificate signed by that CA."""
    key_pair = (key_file.read_bytes(), cert_file.read_bytes())
    if client_ca_file is None:
        return grpc.ssl_server_credentials([key_pair])
    client_ca = client_ca_file.read_bytes()
    return grpc.ssl_server_credentials([key_pair], root_certificates=client_ca, require_client_auth=True)


def client_credentials(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS trusting `ca_file` (system roots when None), presenting `cert_file`/`key_file` for mutual TLS."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )
