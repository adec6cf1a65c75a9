"""`python -m ha_service` / `xsha-ha-service`: the HA policy service (settings from flags, env, config file)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ha_service.app import HaService, HaServiceOptions
from ha_service.controller import ControllerConfig
from ha_service.mode_migration import MigrationConfig
from ha_service.settings import DRIFT_REPAIR_MODES, HaSettings
from ha_service.sync_client import SyncClientConfig
from xsha_common.config import (
    ConfigError,
    ConfigSchema,
    Setting,
    SettingGroup,
    database_settings_group,
    host_port,
    in_range,
    load_config_or_exit,
    logging_settings_group,
    server_settings_group,
)
from xsha_common.db import (
    DatabaseUnavailableError,
    SchemaNotCurrentError,
    prepare_sqlite_directory,
    wait_for_database,
)
from xsha_common.gc_tuning import tune_for_serving
from xsha_common.leases import ReplicaRefusedError
from xsha_common.logging import setup_logging
from xsha_common.server import ListenError, ServerSettings

SCHEMA = ConfigSchema(
    "ha_service",
    "XSHA_HA_",
    "xsha HA policy service (HaPolicyService): modes, deployment decisions, HA actions and notifications.",
    (
        server_settings_group(
            "127.0.0.1:50052",
            "127.0.0.1:9102",
            workers_help="Threads serving the RPCs other than DecideVmDeployment (a coroutine on the event loop); "
            "each open watch stream holds one.",
        ),
        logging_settings_group(),
        database_settings_group("sqlite:///var/ha_service.sqlite"),
        SettingGroup(
            "ha_service",
            (
                Setting("sync_address", str, "127.0.0.1:50061", "sync_service gRPC address, host:port.",
                        validator=host_port),
                Setting("sync_token", str, None, "Bearer token for sync_service.", secret=True),
                Setting("sync_tls", bool, False, "Use TLS to sync_service."),
                Setting("sync_tls_ca_file", Path, None, "CA bundle for sync_service's certificate."),
                Setting("sync_tls_cert_file", Path, None, "Client certificate for mutual TLS to sync_service."),
                Setting("sync_tls_key_file", Path, None, "Client key for mutual TLS to sync_service."),
                Setting("sync_call_timeout", float, 10.0, "Deadline of each sync_service call, seconds.",
                        validator=in_range(0.1, 600)),
                Setting("controller_enabled", bool, True, "Run the controller (watch stream, actions, repairs)."),
                Setting("controller_lease_seconds", float, 10.0,
                        "Controller lease period: with several replicas one runs the controller; a standby takes "
                        "over within about one period after it dies.", validator=in_range(0.5, 600)),
                Setting("replica_id", str, "", "Name of this replica in the controller lease (default host:pid)."),
                Setting("controller_tick_interval", float, 1.0,
                        "Seconds between time-rule checks. A check looks again at the VMs a grace period, an agent "
                        "report or an acknowledged action may have changed; every controller_full_resync_interval "
                        "it looks at every down VM.",
                        validator=in_range(0.05, 60)),
                Setting("controller_full_resync_interval", float, 30.0,
                        "Seconds between the time-rule checks that look at every down VM, not only those that may "
                        "have changed (an agent report over a minute old is seen by these).",
                        validator=in_range(1, 3600)),
                Setting("event_retention", int, 100_000, "HA events kept (pending actions are always kept).",
                        validator=in_range(100, 100_000_000)),
                Setting("migration_lease_seconds", float, 60.0,
                        "How long an apply of a migration holds its cluster without progress (a crashed apply "
                        "blocks the cluster that long).", validator=in_range(1, 3600)),
                Setting("default_native_ha_enabled", bool, False,
                        "xenserver.native.ha.enabled on a fresh database (then managed with UpdateSettings)."),
                Setting("default_drift_repair_mode", str, "REPAIR", "Drift repair on a fresh database.",
                        choices=DRIFT_REPAIR_MODES),
                Setting("default_restart_overdue_grace", float, 120.0, "Seconds, fresh database.",
                        validator=in_range(1, 604800)),
                Setting("default_agent_disconnected_grace", float, 120.0, "Seconds, fresh database.",
                        validator=in_range(1, 604800)),
                Setting("default_unprotected_retry_interval", float, 60.0, "Seconds, fresh database.",
                        validator=in_range(1, 604800)),
            ),
        ),
    ),
)  # fmt: skip


def options_from(argv: Sequence[str] | None = None) -> tuple[HaServiceOptions, str, str, float]:
    config = load_config_or_exit(SCHEMA, argv)
    upgrade: bool | None = config.database_auto_upgrade
    db_url: str = config.database_url
    prepare_sqlite_directory(db_url)
    options = HaServiceOptions(
        db_url=db_url,
        sync=SyncClientConfig(
            address=config.sync_address,
            token=config.sync_token,
            tls=config.sync_tls,
            tls_ca_file=config.sync_tls_ca_file,
            tls_cert_file=config.sync_tls_cert_file,
            tls_key_file=config.sync_tls_key_file,
            call_timeout=config.sync_call_timeout,
        ),
        server=ServerSettings.from_config(config),
        controller_enabled=config.controller_enabled,
        controller=ControllerConfig(
            tick_interval=config.controller_tick_interval,
            full_resync_interval=config.controller_full_resync_interval,
            event_retention=config.event_retention,
        ),
        settings_defaults=HaSettings(
            native_ha_enabled=config.default_native_ha_enabled,
            drift_repair_mode=config.default_drift_repair_mode,
            restart_overdue_grace=config.default_restart_overdue_grace,
            agent_disconnected_grace=config.default_agent_disconnected_grace,
            unprotected_retry_interval=config.default_unprotected_retry_interval,
        ),
        auto_upgrade=upgrade,
        migration=MigrationConfig(lease_seconds=config.migration_lease_seconds),
        controller_lease_seconds=config.controller_lease_seconds,
        replica_id=config.replica_id,
    )
    return options, config.log_level, config.log_format, config.database_connect_timeout


def _cannot_start(error: Exception) -> int:
    """A start-up failure the operator can fix: one line on stderr, exit code 2."""
    print(f"ha_service: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options, level, log_format, connect_timeout = options_from(argv)
    except ConfigError as error:
        print(f"{error}\nRun with --help to see every setting.", file=sys.stderr)
        return 2
    setup_logging(level, log_format)
    try:
        wait_for_database(options.db_url, timeout=connect_timeout)
        service = HaService(options)
    except (DatabaseUnavailableError, SchemaNotCurrentError, ReplicaRefusedError) as error:
        return _cannot_start(error)
    service.server.install_signal_handlers()
    try:
        service.start()
    except ListenError as error:
        service.stop()
        return _cannot_start(error)
    tune_for_serving()
    service.server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
