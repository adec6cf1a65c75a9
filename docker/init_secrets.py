#!/usr/bin/env python3
"""Generate the secrets docker/compose.yaml mounts (standard library only): `python3 docker/init_secrets.py`.

Writes into docker/secrets/ (or the directory given), mode 0600, never overwriting a secret that exists:
  auth_token            bearer token both services accept (clients send it; ha_service uses it to call sync_service)
  db_password           MariaDB password of the xsha user
  db_root_password      MariaDB root password
  credentials_key       Fernet key encrypting XAPI credentials at rest (sync_service)
  sync_service.yaml     sync_service config file: database_url with the password
  ha_service.yaml       ha_service config file: database_url with the password, and sync_token
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "secrets"
DB_HOST = "mariadb"
DB_USER = "xsha"


def _write(path: Path, text: str) -> bool:
    """Create `path` with mode 0600; False when it already exists (left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def generate(directory: Path) -> list[str]:
    """Writes the missing secrets; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def ensure(name: str, make: str) -> str:
        if _write(directory / name, make + "\n"):
            written.append(name)
        return _read(directory / name)

    token = ensure("auth_token", secrets.token_urlsafe(32))
    password = ensure("db_password", secrets.token_urlsafe(24))
    ensure("db_root_password", secrets.token_urlsafe(24))
    ensure("credentials_key", base64.urlsafe_b64encode(os.urandom(32)).decode())
    sync_config = f"database_url: mysql+pymysql://{DB_USER}:{password}@{DB_HOST}:3306/xsha_sync\n"
    if _write(directory / "sync_service.yaml", sync_config):
        written.append("sync_service.yaml")
    ha_config = f"database_url: mysql+pymysql://{DB_USER}:{password}@{DB_HOST}:3306/xsha_ha\nsync_token: {token}\n"
    if _write(directory / "ha_service.yaml", ha_config):
        written.append("ha_service.yaml")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docker/compose.yaml's secrets.")
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    written = generate(args.directory)
    kept = "" if written else " (all existed; nothing changed)"
    print(f"secrets in {args.directory}: {', '.join(written) or 'none written'}{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
