"""Credentials at rest: Fernet with rotation, key files created 0600, nothing readable without the key."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from sync_service.crypto import Credentials, CredentialsCipher, CredentialsKeyError


def test_round_trip_and_no_plaintext() -> None:
    cipher = CredentialsCipher(Fernet.generate_key().decode())
    token = cipher.encrypt(Credentials("root", "hunter2-password"))
    assert b"hunter2-password" not in token and b"root" not in token
    assert cipher.decrypt(token) == Credentials("root", "hunter2-password")
    assert "hunter2" not in repr(Credentials("root", "hunter2-password"))


def test_key_rotation_and_wrong_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = CredentialsCipher(old).encrypt(Credentials("u", "p"))
    assert CredentialsCipher(f"{new},{old}").decrypt(token) == Credentials("u", "p")
    with pytest.raises(CredentialsKeyError, match="cannot be decrypted"):
        CredentialsCipher(new).decrypt(token)
    with pytest.raises(CredentialsKeyError, match="Fernet key"):
        CredentialsCipher("not-a-key")


def test_key_file_is_generated_with_0600(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "var" / "key"
    with caplog.at_level(logging.WARNING):
        cipher = CredentialsCipher.from_settings("", str(path), create_key_file=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated a new credentials key file" in caplog.text
    token = cipher.encrypt(Credentials("u", "p"))
    assert CredentialsCipher.from_settings("", str(path), create_key_file=False).decrypt(token) == Credentials("u", "p")
    with pytest.raises(CredentialsKeyError):
        CredentialsCipher.from_settings("", str(tmp_path / "missing"), create_key_file=False)
