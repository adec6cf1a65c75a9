"""sync_service's configuration: flags > environment (XSHA_SYNC_*) > config file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sync_service.leases import LeaseSettings
from sync_service.supervisor import RetentionSettings
from sync_service.watcher import WatcherSettings
from xsha_common.config import (
    Config,
    ConfigSchema,
    Setting,
    SettingGroup,
    database_settings_group,
    in_range,
    logging_settings_group,
    server_settings_group,
)

DEFAULT_DATA_DIR: Final = Path("var")
DEFAULT_DATABASE_URL: Final = f"sqlite:///{DEFAULT_DATA_DIR / 'sync_service.sqlite'}"
DEFAULT_KEY_FILE: Final = DEFAULT_DATA_DIR / "sync_credentials.key"

_SYNC_SETTINGS = (
    Setting("credentials_key", str, "",
            "Fernet key(s) encrypting XAPI credentials at rest, comma-separated (first encrypts, all decrypt).",
            secret=True),
    Setting("credentials_key_file", Path, DEFAULT_KEY_FILE,
            "File holding the Fernet key(s) when credentials_key is not set; generated (mode 0600) if missing."),
    Setting("change_retention_count", int, 100_000,
            "Changes kept in the change log (0: no count limit).", validator=in_range(0, 10**9)),
    Setting("change_retention_seconds", float, 7 * 24 * 3600.0,
            "Age after which changes leave the change log (0: no age limit).", validator=in_range(0, 10**9)),
    Setting("event_timeout_seconds", float, 30.0,
            "How long one XAPI event.from call waits for changes.", validator=in_range(0.1, 600)),
    Setting("xapi_request_timeout_seconds", float, 60.0,
            "Timeout of ordinary XAPI calls (login, get_record, set_*).", validator=in_range(1, 3600)),
    Setting("backoff_base_seconds", float, 0.5,
            "First reconnect backoff; doubles per failure, with full jitter.", validator=in_range(0.01, 600)),
    Setting("backoff_cap_seconds", float, 30.0, "Longest reconnect backoff.", validator=in_range(0.1, 3600)),
    Setting("xapi_wire_format", str, "auto",
            "XAPI wire format: auto (JSON-RPC where offered, else XML-RPC), json or xml.",
            choices=("auto", "json", "xml")),
    Setting("watch_poll_seconds", float, 0.5,
            "How often watch streams poll the change log for other replicas' commits.",
            validator=in_range(0.01, 60)),
    Setting("replica_id", str, "", "Name of this replica in sync status (default host:pid)."),
    Setting("lease_period_seconds", float, 10.0,
            "Pool lease period: a dead replica's pools are taken over within about one period; leases are "
            "renewed every third of it.", validator=in_range(0.5, 600)),
)  # fmt: skip

SCHEMA: Final = ConfigSchema(
    "sync_service",
    "XSHA_SYNC_",
    "xsha sync service: mirrors XenServer pools into a database and serves them over gRPC.",
    (
        server_settings_group("127.0.0.1:50061", "127.0.0.1:9101"),
        logging_settings_group(),
        database_settings_group(DEFAULT_DATABASE_URL),
        SettingGroup("Sync", _SYNC_SETTINGS),
    ),
)


def watcher_settings(config: Config) -> WatcherSettings:
    return WatcherSettings(
        event_timeout=config["event_timeout_seconds"],
        backoff_base=config["backoff_base_seconds"],
        backoff_cap=config["backoff_cap_seconds"],
        request_timeout=config["xapi_request_timeout_seconds"],
        wire=config["xapi_wire_format"],
    )


def lease_settings(config: Config) -> LeaseSettings:
    return LeaseSettings(period=config["lease_period_seconds"])


def retention_settings(config: Config) -> RetentionSettings:
    return RetentionSettings(
        keep_changes=config["change_retention_count"], keep_seconds=config["change_retention_seconds"]
    )
