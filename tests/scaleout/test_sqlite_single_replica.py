"""SQLite means one replica of each service: a second one on the same database file is refused clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from sync_service.testing import spawn


def test_sqlite_second_replica_refused(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'sync.sqlite'}"
    key = Fernet.generate_key().decode()
    first = spawn(db_url, credentials_key=key)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "sync_service", "--listen-address", "127.0.0.1:0", "--database-url", db_url,
             "--metrics-address", "", "--auth-disabled", f"--credentials-key={key}"],  # a key may begin with "-"
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2
        assert "SQLite supports one replica" in second.stderr
        ha_db = f"sqlite:///{tmp_path / 'ha.sqlite'}"
        ha_args = [sys.executable, "-m", "ha_service", "--listen-address", "127.0.0.1:0", "--database-url", ha_db,
                   "--metrics-address", "", "--auth-disabled", "--sync-address", first.address]  # fmt: skip
        ha_first = subprocess.Popen(ha_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert ha_first.stderr is not None
            for line in ha_first.stderr:
                if "ha_service serving" in line:
                    break
            ha_second = subprocess.run(ha_args, capture_output=True, text=True, timeout=60)
            assert ha_second.returncode == 2
            assert "SQLite supports one replica" in ha_second.stderr
        finally:
            ha_first.terminate()
            ha_first.wait(15)
    finally:
        assert first.stop() == 0
