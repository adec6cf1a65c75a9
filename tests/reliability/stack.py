"""The stack the reliability, security and soak runs drive: xapi_sim in-process, both services as child processes.

    with ChildStack.start(tmp_path, scenario, database=DatabaseTarget.choose(tmp_path)) as stack:
        stack.register_pools({"cs61": "xs61", ...})
        stack.kill_sync(); stack.start_sync()           # kill -9 is real: the services are child processes
        stack.db.cut(3.0)                              # services <-> database link cut (or SQLite lock held)
        stack.link.stall(); ...; stack.link.restore()  # ha_service <-> sync_service link

sync_service reaches its database through `FaultProxy` when the database is a server (MariaDB / PostgreSQL, from
XSHA_TEST_MYSQL_URL / XSHA_TEST_POSTGRES_URL); on SQLite a database "cut" is an exclusive lock held on the file
(every write then waits and fails), the closest a file database has to a dead link. ha_service reaches
sync_service through a second `FaultProxy`. Both services' output goes to log files the tests read (no secret
may appear there).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from tests.harness.tcp_proxy import FaultProxy
from xapi_sim import Simulator
from xsha_api.v1 import ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_common.db import normalize_url
from xsha_common.procs import ChildProcess, ProcessFailedError, health_status
from xsha_common.testing import free_port

XSHA_USER = "xsha"
XSHA_PASSWORD = "xsha-xapi-secret-9f1c"
ADMIN_USER = "root"
ADMIN_PASSWORD = "password"
CREDENTIALS = {ADMIN_USER: ADMIN_PASSWORD, XSHA_USER: XSHA_PASSWORD}
SYNC_ORIGINATOR = "xsha-sync"
START_TIMEOUT = 60.0

DB_ENV = {"mysql": "XSHA_TEST_MYSQL_URL", "postgresql": "XSHA_TEST_POSTGRES_URL"}


# ------------------------------------------------------------------------------------------------ the database


class DatabaseTarget:
    """One database both services use, and a way to cut it off from them."""

    def __init__(self, backend: str, service_url: str, *, proxy: FaultProxy | None, cleanup: list[Any]) -> None:
        self.backend = backend
        self.service_url = service_url
        self.proxy = proxy
        self._cleanup = cleanup

    @classmethod
    def choose(cls, directory: Path, backend: str | None = None) -> DatabaseTarget:
        """XSHA_FAULT_DB (sqlite, mysql, postgresql) or the first configured server, else SQLite."""
        wanted = backend or os.environ.get("XSHA_FAULT_DB", "").strip().lower()
        if not wanted:
            wanted = next((b for b in ("mysql", "postgresql") if os.environ.get(DB_ENV[b], "").strip()), "sqlite")
        if wanted == "sqlite":
            path = directory / "xsha.sqlite"
            return cls("sqlite", f"sqlite:///{path}", proxy=None, cleanup=[])
        raw = os.environ.get(DB_ENV[wanted], "").strip()
        if not raw:
            raise RuntimeError(f"XSHA_FAULT_DB={wanted} needs {DB_ENV[wanted]}")
        server = normalize_url(raw)
        name = f"xsha_r_{secrets.token_hex(5)}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as connection:
            suffix = " CHARACTER SET utf8mb4" if wanted == "mysql" else ""
            connection.exec_driver_sql(f"CREATE DATABASE {name}{suffix}")
        proxy = FaultProxy(server.host or "127.0.0.1", server.port or (3306 if wanted == "mysql" else 5432))
        proxy.start()
        url = server.set(database=name, host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

        def drop() -> None:
            force = " WITH (FORCE)" if wanted == "postgresql" else ""
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
            admin.dispose()

        return cls(wanted, url, proxy=proxy, cleanup=[proxy.stop, drop])

    def cut(self, seconds: float) -> None:
        """The database is unreachable for `seconds` (blocks that long), then back."""
        if self.proxy is not None:
            self.proxy.cut()
            try:
                time.sleep(seconds)
            finally:
                self.proxy.restore()
            return
        path = make_url(self.service_url).database
        assert path
        connection = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")  # in WAL mode: every writer waits, then fails with SQLITE_BUSY
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def alembic_versions(self) -> dict[str, list[str]]:
        """Every Alembic version table's rows (the services keep one each)."""
        url = self.service_url
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                tables = [t for t in sa.inspect(connection).get_table_names() if "version" in t]
                return {
                    t: sorted(str(r[0]) for r in connection.exec_driver_sql(f"SELECT version_num FROM {t}"))
                    for t in tables
                }
        finally:
            engine.dispose()

    def close(self) -> None:
        for step in self._cleanup:
            with contextlib.suppress(Exception):
                step()


# ------------------------------------------------------------------------------------------------------ clients


class SyncView:
    """A small client of sync_service with what `sync_service.testing.mirror_diff` and `WatchRecorder` use."""

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.auth_token = token
        self.channel = grpc.insecure_channel(address)
        self.stub = sync_service_pb2_grpc.HypervisorSyncServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.auth_token}"),)

    def pool(self, cluster_id: str) -> sync_service_pb2.Pool:
        return self.stub.GetPool(
            sync_service_pb2.GetPoolRequest(cluster_id=cluster_id), metadata=self.metadata, timeout=10
        ).pool

    def list_all_vms(self, **filters: Any) -> tuple[list[sync_service_pb2.Vm], int]:
        vms: list[sync_service_pb2.Vm] = []
        token, revision = "", 0
        while True:
            page = self.stub.ListVms(
                sync_service_pb2.ListVmsRequest(page_size=1000, page_token=token, **filters),
                metadata=self.metadata,
                timeout=10,
            )
            revision = revision or page.revision
            vms.extend(page.vms)
            token = page.next_page_token
            if not token:
                return vms, revision

    def close(self) -> None:
        self.channel.close()


class HaView:
    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.token = token
        self.channel = grpc.insecure_channel(address)
        self.stub = ha_service_pb2_grpc.HaPolicyServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def call(self, method: str, request: Any, timeout: float = 10.0) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def all_actions(self) -> tuple[list[ha_service_pb2.HaAction], int]:
        actions: list[ha_service_pb2.HaAction] = []
        token, revision = "", 0
        while True:
            page = self.call("ListHaActions", ha_service_pb2.ListHaActionsRequest(page_size=1000, page_token=token))
            revision = revision or page.revision
            actions.extend(page.actions)
            token = page.next_page_token
            if not token:
                return actions, revision

    def close(self) -> None:
        self.channel.close()


# -------------------------------------------------------------------------------------------------------- stack


@dataclass
class ServiceRun:
    """One service's child process and what the harness did to it."""

    name: str
    port: int
    child: ChildProcess | None = None
    kills: int = 0
    starts: int = 0
    refused_starts: int = 0  # exited before serving (e.g. its database was cut) and started again
    unexpected_exits: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def check_alive(self) -> None:
        """Records an exit the harness did not cause (a crash by itself)."""
        if self.child is not None and self.child.returncode is not None:
            self.unexpected_exits.append(f"{self.name} exited by itself with {self.child.returncode}")
            self.child = None


class ChildStack:
    """xapi_sim + sync_service + ha_service (children), the database proxy and the ha->sync link proxy."""

    def __init__(
        self,
        directory: Path,
        scenario: Mapping[str, Any],
        database: DatabaseTarget,
        *,
        sync_args: tuple[str, ...] = (),
        ha_args: tuple[str, ...] = (),
        sync_env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.db = database
        self.sim = Simulator.from_scenario(dict(scenario)).start()
        self.sync_token = "sync-token-" + secrets.token_hex(12)
        self.ha_token = "ha-token-" + secrets.token_hex(12)
        self.credentials_key = Fernet.generate_key().decode()
        self.sync_run = ServiceRun("sync_service", free_port())
        self.ha_run = ServiceRun("ha_service", free_port())
        self.link = FaultProxy("127.0.0.1", self.sync_run.port)
        self.link.start()
        self._sync_args = sync_args
        self._ha_args = ha_args
        self._sync_env = dict(sync_env or {})
        self.sync = SyncView(self.sync_run.address, self.sync_token)
        self.ha = HaView(self.ha_run.address, self.ha_token)
        self.clusters: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def secrets(self) -> list[str]:
        """What must never appear in a log, an error message or an answer."""
        return [XSHA_PASSWORD, self.sync_token, self.ha_token, self.credentials_key]

    def log_path(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def start_sync(self) -> None:
        run = self.sync_run
        env = dict(os.environ)
        env["XSHA_SYNC_CREDENTIALS_KEY"] = self.credentials_key  # through the environment, as a deployment would
        env["XSHA_SYNC_AUTH_TOKENS"] = self.sync_token
        env.update(self._sync_env)
        args = [
            "--listen-address",
            run.address,
            "--metrics-address",
            "",
            "--database-url",
            self.db.service_url,
            "--database-auto-upgrade",
            "--event-timeout-seconds",
            "1",
            "--xapi-request-timeout-seconds",
            "5",
            "--backoff-base-seconds",
            "0.05",
            "--backoff-cap-seconds",
            "0.5",
            "--watch-poll-seconds",
            "0.05",
            "--shutdown-grace-seconds",
            "0.5",
            "--log-format",
            "text",
            "--replica-id",
            f"reliability-{run.starts}",
            *self._sync_args,
        ]
        self._launch(
            run,
            lambda: ChildProcess.python_module(
                "sync_service", "sync_service", args, log_path=self.log_path("sync_service"), env=env
            ),
        )

    def start_ha(self) -> None:
        run = self.ha_run
        env = dict(os.environ)
        env["XSHA_HA_AUTH_TOKENS"] = self.ha_token
        env["XSHA_HA_SYNC_TOKEN"] = self.sync_token
        args = [
            "--listen-address",
            run.address,
            "--metrics-address",
            "",
            "--database-url",
            self.db.service_url,
            "--database-auto-upgrade",
            "--sync-address",
            f"127.0.0.1:{self.link.port}",
            "--sync-call-timeout",
            "5",
            "--controller-tick-interval",
            "0.1",
            "--shutdown-grace-seconds",
            "0.5",
            "--log-format",
            "text",
            *self._ha_args,
        ]
        self._launch(
            run,
            lambda: ChildProcess.python_module(
                "ha_service", "ha_service", args, log_path=self.log_path("ha_service"), env=env
            ),
        )

    def _launch(self, run: ServiceRun, make: Callable[[], ChildProcess]) -> None:
        """Starts the child as a supervisor would: a start refused while the database is down (exit before
        serving) is tried again, within START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            child = make().start()
            run.starts += 1
            try:
                child.wait_until_serving(run.address, timeout=max(1.0, deadline - time.monotonic()))
            except ProcessFailedError:
                if child.returncode is None or time.monotonic() > deadline:
                    child.kill()
                    raise
                run.refused_starts += 1
                time.sleep(0.5)
                continue
            run.child = child
            return

    def kill_sync(self) -> None:
        self._kill(self.sync_run)

    def kill_ha(self) -> None:
        self._kill(self.ha_run)

    def _kill(self, run: ServiceRun) -> None:
        run.check_alive()
        if run.child is not None:
            run.child.kill()
            run.kills += 1
            run.child = None

    def check_alive(self) -> list[str]:
        for run in (self.sync_run, self.ha_run):
            run.check_alive()
        return [*self.sync_run.unexpected_exits, *self.ha_run.unexpected_exits]

    def healthy(self) -> bool:
        return all(health_status(run.address, timeout=2.0) == "SERVING" for run in (self.sync_run, self.ha_run))

    def logs(self) -> str:
        texts = []
        for name in ("sync_service", "ha_service"):
            path = self.log_path(name)
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def close(self) -> None:
        for run in (self.ha_run, self.sync_run):
            if run.child is not None:
                with contextlib.suppress(Exception):
                    run.child.stop(timeout=10)
                run.child = None
        self.sync.close()
        self.ha.close()
        self.link.stop()
        self.sim.stop()
        self.db.close()

    def __enter__(self) -> ChildStack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- pools -----------------------------------------------------------------------------------------------

    def register_pools(self, clusters: Mapping[str, str], *, wait: float = 60.0) -> None:
        """Registers each cluster's pool (xsha's XAPI user) and waits until every one is watched."""
        for cluster_id, pool_name in clusters.items():
            self.sync.stub.RegisterPool(
                sync_service_pb2.RegisterPoolRequest(
                    cluster_id=cluster_id,
                    master_url=self.sim.master_url(pool_name).rstrip("/"),
                    credentials=sync_service_pb2.XapiCredentials(username=XSHA_USER, password=XSHA_PASSWORD),
                    request_id=f"register-{cluster_id}",
                ),
                metadata=self.sync.metadata,
                timeout=10,
            )
            self.clusters[cluster_id] = pool_name
        for cluster_id in clusters:
            wait_for(lambda c=cluster_id: self.watching(c), wait, what=f"pool {cluster_id} to be watched")

    def watching(self, cluster_id: str) -> bool:
        try:
            status = self.sync.pool(cluster_id).sync_status
        except grpc.RpcError:
            return False
        return bool(status.state == sync_service_pb2.SYNC_STATE_WATCHING and status.connected)


def wait_for(condition: Any, timeout: float, *, what: str, interval: float = 0.05) -> Any:
    """Poll until truthy; RPC errors count as "not yet". AssertionError after `timeout` (a bound, not a claim)."""
    deadline = time.monotonic() + timeout
    last: str = ""
    while True:
        try:
            value = condition()
            if value:
                return value
        except grpc.RpcError as error:
            last = f"{error.code()}: {error.details()}"  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}" + (f" (last: {last})" if last else "")
            )
        time.sleep(interval)


@contextlib.contextmanager
def child_stack(directory: Path, scenario: Mapping[str, Any], **options: Any) -> Iterator[ChildStack]:
    """A started stack (both services serving); everything stopped afterwards."""
    database = options.pop("database", None) or DatabaseTarget.choose(directory)
    stack = ChildStack(directory, scenario, database, **options)
    try:
        stack.start_sync()
        stack.start_ha()
        yield stack
    finally:
        stack.close()
