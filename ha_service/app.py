"""Assembly of ha_service: database, sync_service client, handlers, gRPC server and controller.

`__main__` builds it from configuration; `ha_service.testing` builds it in-process for tests, the CLI's tests, the
demo and the benchmarks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from ha_service.controller import Controller, ControllerConfig
from ha_service.events import EventBus
from ha_service.handlers import Handlers, ensure_settings_row
from ha_service.metrics import HaMetrics
from ha_service.migration_handlers import MigrationHandlers
from ha_service.mode_migration import MigrationConfig
from ha_service.servicer import SERVICE_NAME, HaPolicyServicer
from ha_service.settings import HaSettings
from ha_service.store.models import VERSION_TABLE
from ha_service.sync_client import SyncClient, SyncClientConfig
from xsha_api.v1 import ha_service_pb2_grpc
from xsha_common.db import create_engine_for, ensure_schema, make_sessionmaker
from xsha_common.metrics import MetricsRegistry
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server

log = logging.getLogger(__name__)


@dataclass
class HaServiceOptions:
    db_url: str
    sync: SyncClientConfig
    server: ServerSettings
    controller_enabled: bool = True
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    settings_defaults: HaSettings = field(default_factory=HaSettings)
    auto_upgrade: bool | None = None  # None: upgrade automatically on SQLite only
    bookmark_interval: float = 5.0
    db_pool_size: int = 10
    migration: MigrationConfig = field(default_factory=MigrationConfig)


class HaService:
    """One ha_service process: start() serves and runs the controller, stop() ends both."""

    def __init__(self, options: HaServiceOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        ensure_schema("ha_service", options.db_url, VERSION_TABLE, auto_upgrade=options.auto_upgrade)
        self.engine: Engine = create_engine_for(options.db_url, pool_size=options.db_pool_size, max_overflow=20)
        self.sessions = make_sessionmaker(self.engine)
        ensure_settings_row(self.sessions, options.settings_defaults, clock())
        self.registry = MetricsRegistry()
        self.metrics = HaMetrics(self.registry)
        self.bus = EventBus()
        self.sync = SyncClient(options.sync)
        self.controller: Controller | None = None
        if options.controller_enabled:
            self.controller = Controller(
                self.sessions, self.sync, self.bus, clock=clock, metrics=self.metrics, config=options.controller
            )
        self.handlers = Handlers(
            sessions=self.sessions,
            sync=self.sync,
            bus=self.bus,
            clock=clock,
            metrics=self.metrics,
            bookmark_interval_default=options.bookmark_interval,
            on_decision=self.controller.notify_decision if self.controller else (lambda cluster, name: None),
        )
        self.migrations = MigrationHandlers(self.sessions, self.sync, clock, options.migration)
        self.servicer = HaPolicyServicer(self.handlers, self.migrations)
        self.server: ServiceServer = build_server(
            [
                ServiceRegistration(
                    ha_service_pb2_grpc.add_HaPolicyServiceServicer_to_server, self.servicer, SERVICE_NAME
                )
            ],
            options.server,
            metrics=self.registry,
        )
        self.server.add_shutdown_callback(self._close, "ha_service resources")
        self._closed = False

    def start(self) -> int:
        port = self.server.start()
        if self.controller is not None:
            self.controller.start()
        log.info("ha_service serving", extra={"address": self.server.address})
        return port

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self, grace_seconds: float | None = 1.0) -> None:
        self.server.shutdown(grace_seconds)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.controller is not None:
            self.controller.stop()
        self.sync.close()
        self.engine.dispose()
