"""Assembly of ha_service: database, sync_service client, handlers, gRPC server and controller.

`__main__` builds it from configuration; `ha_service.testing` builds it in-process for tests, the CLI's tests, the
demo and the benchmarks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Engine, Table

from ha_service.controller import Controller, ControllerConfig
from ha_service.events import EventBus
from ha_service.handlers import Handlers, PoolViewCache, ensure_settings_row
from ha_service.metrics import HaMetrics
from ha_service.migration_handlers import MigrationHandlers
from ha_service.mode_migration import MigrationConfig
from ha_service.servicer import SERVICE_NAME, HaPolicyServicer
from ha_service.settings import HaSettings
from ha_service.store.models import CONTROLLER_NAME, VERSION_TABLE, ControllerStateRow
from ha_service.sync_client import SyncClient, SyncClientConfig
from xsha_api.v1 import ha_service_pb2_grpc
from xsha_common.db import backend_of, create_engine_for, ensure_schema, make_sessionmaker
from xsha_common.leases import LeaseTable, SingleActiveLease, SqliteReplicaLock, holder_id
from xsha_common.metrics import MetricsRegistry
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server

log = logging.getLogger(__name__)

# The controller's lease lives in its state row (holder, fencing token, expiry in database-clock epoch seconds).
CONTROLLER_LEASE = LeaseTable(
    cast(Table, ControllerStateRow.__table__),
    "name",
    "holder",
    "fencing_token",
    "lease_expire_time",
    defaults={"sync_revision": 0},
    touch="update_time",
)


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
    # Upper bound on how long a decision may use cached pool facts should the change stream miss an update.
    pool_cache_ttl: float = 2.0
    # The controller runs on one replica at a time, under a database lease of this period (SQLite: one replica).
    controller_lease_seconds: float = 10.0
    replica_id: str = ""


class HaService:
    """One ha_service process: start() serves and runs the controller, stop() ends both."""

    def __init__(self, options: HaServiceOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self._replica_lock = SqliteReplicaLock(options.db_url, "ha_service").acquire()
        try:
            ensure_schema("ha_service", options.db_url, VERSION_TABLE, auto_upgrade=options.auto_upgrade)
        except BaseException:
            self._replica_lock.release()
            raise
        self.engine: Engine = create_engine_for(options.db_url, pool_size=options.db_pool_size, max_overflow=20)
        self.sessions = make_sessionmaker(self.engine)
        ensure_settings_row(self.sessions, options.settings_defaults, clock())
        self.registry = MetricsRegistry()
        self.metrics = HaMetrics(self.registry)
        self.bus = EventBus()
        self.sync = SyncClient(options.sync)
        self.controller: Controller | None = None
        self._controller_lock = threading.Lock()
        self._controller_started = False
        self.controller_lease: SingleActiveLease | None = None
        # Decisions reuse pool facts while the controller's change stream is there to invalidate them.
        pool_cache = PoolViewCache(
            ttl=options.pool_cache_ttl if options.controller_enabled else 0.0,
            live=self._controller_connected,
        )
        self._pool_cache = pool_cache
        if options.controller_enabled:
            self.controller = self._new_controller()
            self.controller_lease = SingleActiveLease(
                self.engine,
                CONTROLLER_LEASE,
                CONTROLLER_NAME,
                holder_id(options.replica_id or f"{socket.gethostname()}:{os.getpid()}"),
                period=options.controller_lease_seconds,
                on_acquired=self._activate,
                on_lost=self._deactivate,
                force=backend_of(self.engine) == "sqlite",  # the lock file proves there is no other replica
            )
        self.handlers = Handlers(
            sessions=self.sessions,
            sync=self.sync,
            bus=self.bus,
            clock=clock,
            metrics=self.metrics,
            bookmark_interval_default=options.bookmark_interval,
            on_decision=self._notify_decision,
            pool_cache=pool_cache,
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
            concurrency="asyncio",
        )
        self.server.add_shutdown_callback(self._close, "ha_service resources")
        self._closed = False
        self._controller_used = False

    def _new_controller(self) -> Controller:
        controller = Controller(
            self.sessions,
            self.sync,
            self.bus,
            clock=self.clock,
            metrics=self.metrics,
            config=self.options.controller,
            is_active_replica=lambda: self.controller_lease is None or self.controller_lease.active,
        )
        controller.on_pool_change = self._pool_cache.invalidate
        return controller

    def _controller_connected(self) -> bool:
        controller = self.controller
        return controller is not None and self._controller_started and controller.connected.is_set()

    def _notify_decision(self, cluster_id: str, instance_name: str) -> None:
        controller = self.controller
        if controller is not None and self._controller_started:
            controller.notify_decision(cluster_id, instance_name)

    def _activate(self, epoch: int) -> None:
        """This replica took the controller lease: run the controller, resuming from the persisted revision."""
        with self._controller_lock:
            if self._controller_started or self._closed:
                return
            if self.controller is None or self._controller_used:
                self.controller = self._new_controller()
            if self.controller_lease is not None:
                # Its revision writes are fenced by this epoch (the lease row is the controller's state row).
                self.controller.lease_fence = (self.controller_lease.holder, epoch)
            self._controller_used = True
            self.controller.start()
            self._controller_started = True
        self.metrics.controller_active.set(1)
        log.info("controller active", extra={"epoch": epoch})

    def _deactivate(self) -> None:
        with self._controller_lock:
            if not self._controller_started or self.controller is None:
                return
            self._controller_started = False
            self.controller.stop()
        self.metrics.controller_active.set(0)
        log.warning("controller lease lost; this replica stands by")

    @property
    def controller_active(self) -> bool:
        return self._controller_started

    def start(self) -> int:
        port = self.server.start()
        if self.controller_lease is not None:
            self.controller_lease.start()
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
        if self.controller_lease is not None:
            self.controller_lease.stop()  # stops the controller and gives the lease back at once
        self._closed = True
        if self.controller is not None and self._controller_started:
            self.controller.stop()
        self.sync.close()
        self.engine.dispose()
        self._replica_lock.release()
