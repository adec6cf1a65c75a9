"""`python -m sync_service` / `xsha-sync-service`: load config, log, open the database, serve until signalled."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from sync_service.app import build_app
from sync_service.crypto import CredentialsCipher, CredentialsKeyError
from sync_service.handlers import WatchSettings
from sync_service.settings import DEFAULT_KEY_FILE, SCHEMA, lease_settings, retention_settings, watcher_settings
from xsha_common.config import ConfigError, load_config_or_exit
from xsha_common.db import (
    DatabaseUnavailableError,
    SchemaNotCurrentError,
    UnsupportedDatabaseURLError,
    wait_for_database,
)
from xsha_common.gc_tuning import tune_for_serving
from xsha_common.leases import ReplicaRefusedError
from xsha_common.logging import setup_logging
from xsha_common.server import ListenError, ServerSettings

log = logging.getLogger("sync_service")


def _cannot_start(error: Exception) -> int:
    """A start-up failure the operator can fix: logged, one line on stderr, exit code 2."""
    log.error("sync_service cannot start", extra={"error": str(error)})
    print(f"sync_service: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config_or_exit(SCHEMA, argv)
    setup_logging(config["log_level"], config["log_format"])
    try:
        server_settings = ServerSettings.from_config(config)
        key_file = config["credentials_key_file"]
        cipher = CredentialsCipher.from_settings(
            config["credentials_key"],
            str(key_file) if key_file is not None else "",
            create_key_file=key_file is not None and key_file == DEFAULT_KEY_FILE,
        )
        wait_for_database(config["database_url"], timeout=config["database_connect_timeout"])
        app = build_app(
            database_url=config["database_url"],
            cipher=cipher,
            server_settings=server_settings,
            watcher=watcher_settings(config),
            retention=retention_settings(config),
            watch=WatchSettings(poll_interval=config["watch_poll_seconds"]),
            auto_upgrade=config["database_auto_upgrade"],
            owner=config["replica_id"],
            leases=lease_settings(config),
        )
    except (
        ConfigError,
        CredentialsKeyError,
        DatabaseUnavailableError,
        SchemaNotCurrentError,
        UnsupportedDatabaseURLError,
        ReplicaRefusedError,
    ) as error:
        return _cannot_start(error)
    app.server.install_signal_handlers()
    try:
        app.start()
    except ListenError as error:
        app.stop()
        return _cannot_start(error)
    tune_for_serving()
    log.info("sync_service serving", extra={"address": app.address})
    app.server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
