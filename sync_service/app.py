"""Assembly of sync_service: database, cipher, repository, supervisor, handlers, servicer and gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sync_service.crypto import CredentialsCipher
from sync_service.handlers import SyncHandlers, WatchSettings
from sync_service.leases import LeaseSettings, PoolLeases
from sync_service.metrics import SyncMetrics
from sync_service.servicer import SERVICE_NAME, HypervisorSyncServicer
from sync_service.store.models import VERSION_TABLE
from sync_service.store.repository import ChangeNotifier, Repository
from sync_service.supervisor import RetentionSettings, Supervisor, default_owner
from sync_service.watcher import WatcherSettings
from xsha_api.v1 import sync_service_pb2_grpc
from xsha_common.db import backend_of, create_engine_for, ensure_schema, prepare_sqlite_directory
from xsha_common.leases import SqliteReplicaLock
from xsha_common.metrics import MetricsRegistry
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server

log = logging.getLogger(__name__)


@dataclass
class SyncApp:
    """A running (or startable) sync_service: `start()`, then `server.port`; `stop()` ends everything."""

    server: ServiceServer
    supervisor: Supervisor
    repository: Repository
    handlers: SyncHandlers
    metrics: SyncMetrics
    _stopped: bool = field(default=False, init=False)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.address

    def start(self) -> SyncApp:
        self.supervisor.start()
        self.server.start()
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown(grace)


def build_app(
    *,
    database_url: str,
    cipher: CredentialsCipher,
    server_settings: ServerSettings,
    watcher: WatcherSettings | None = None,
    retention: RetentionSettings | None = None,
    watch: WatchSettings | None = None,
    auto_upgrade: bool | None = None,
    owner: str = "",
    reconcile_interval: float = 10.0,
    leases: LeaseSettings | None = None,
) -> SyncApp:
    """Raises ReplicaRefusedError when another replica already runs on the same SQLite database."""
    prepare_sqlite_directory(database_url)
    replica_lock = SqliteReplicaLock(database_url, "sync_service").acquire()
    try:
        ensure_schema("sync_service", database_url, VERSION_TABLE, auto_upgrade=auto_upgrade)
    except BaseException:
        replica_lock.release()
        raise
    engine = create_engine_for(database_url, pool_size=10, max_overflow=20)
    registry = MetricsRegistry()
    metrics = SyncMetrics(registry)
    repository = Repository(engine, ChangeNotifier(), on_write=metrics.db_write_seconds.observe)
    owner = owner or default_owner()
    pool_leases = PoolLeases(
        engine,
        owner,
        leases or LeaseSettings(),
        address=server_settings.listen_address,
        single=backend_of(engine) == "sqlite",
    )
    supervisor = Supervisor(
        repository,
        cipher,
        watcher or WatcherSettings(),
        retention=retention,
        metrics=metrics,
        owner=owner,
        reconcile_interval=reconcile_interval,
        leases=pool_leases,
    )
    handlers = SyncHandlers(repository, supervisor, cipher, watch=watch)
    servicer = HypervisorSyncServicer(handlers)
    server = build_server(
        [
            ServiceRegistration(
                sync_service_pb2_grpc.add_HypervisorSyncServiceServicer_to_server, servicer, SERVICE_NAME
            )
        ],
        server_settings,
        metrics=registry,
    )
    server.add_shutdown_callback(supervisor.stop, "stop pool watchers")
    server.add_shutdown_callback(engine.dispose, "close the database")
    server.add_shutdown_callback(replica_lock.release, "release the SQLite replica lock")
    return SyncApp(server, supervisor, repository, handlers, metrics)
