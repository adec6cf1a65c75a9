"""Credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) with keys from the environment or a key file.

Several keys may be given (comma or newline separated): the first encrypts, all decrypt, so keys can be rotated.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from xsha_common.logging import register_secret

log = logging.getLogger(__name__)


class CredentialsKeyError(RuntimeError):
    """No usable key, or stored credentials that no configured key decrypts."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a debugger or a traceback
        return f"Credentials(username={self.username!r}, password='***')"


def _parse_keys(text: str) -> list[Fernet]:
    keys = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    if not keys:
        raise CredentialsKeyError("the credentials key is empty")
    try:
        return [Fernet(key.encode()) for key in keys]
    except (ValueError, TypeError) as exc:
        raise CredentialsKeyError(
            "a credentials key must be a Fernet key (32 url-safe base64-encoded bytes, e.g. from "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
        ) from exc


class CredentialsCipher:
    def __init__(self, keys: str) -> None:
        self._fernet = MultiFernet(_parse_keys(keys))

    @classmethod
    def from_settings(cls, key: str, key_file: str, *, create_key_file: bool) -> CredentialsCipher:
        """The key from `key` (e.g. an environment variable) or else `key_file`; with `create_key_file`, a missing
        file is generated with 0600 permissions (the embedded default) and the log says so."""
        if key:
            return cls(key)
        if not key_file:
            raise CredentialsKeyError("no credentials key: set the credentials key or a credentials key file")
        path = Path(key_file)
        if not path.exists():
            if not create_key_file:
                raise CredentialsKeyError(f"credentials key file {path} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(Fernet.generate_key() + b"\n")
            log.warning(
                "generated a new credentials key file; back it up, stored pool credentials cannot be read without it",
                extra={"key_file": str(path)},
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("credentials key file is readable by other users; chmod 600 it", extra={"key_file": str(path)})
        return cls(path.read_text())

    def encrypt(self, credentials: Credentials) -> bytes:
        return self._fernet.encrypt(orjson.dumps({"u": credentials.username, "p": credentials.password}))

    def decrypt(self, token: bytes) -> Credentials:
        try:
            data = orjson.loads(self._fernet.decrypt(token))
        except InvalidToken as exc:
            raise CredentialsKeyError(
                "stored credentials cannot be decrypted with the configured key(s); configure the key they were "
                "written with, or register the credentials again"
            ) from exc
        credentials = Credentials(str(data["u"]), str(data["p"]))
        register_secret(credentials.password)  # redacted from every log line from now on
        return credentials
