"""What every figure shares: machine facts, statistics, fresh databases, and the child processes (xapi_sim,
sync_service, ha_service) with the clients a benchmark drives them through.

Every program under test runs as a child process (xsha_common.procs.ChildProcess), so the benchmark driver never
shares a GIL with what it measures; the driver only mutates through xapi_sim's control RPCs and observes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import socket
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet

from xapi_sim.testing import JsonRpcClient
from xsha_api.v1 import ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_common.db import create_engine_for, normalize_url
from xsha_common.procs import ChildProcess, ProcessFailedError

T = TypeVar("T")

DB_BACKENDS: tuple[str, ...] = ("sqlite", "mysql", "postgresql")
SERVER_URL_ENV: dict[str, str] = {"mysql": "XSHA_BENCH_MYSQL_URL", "postgresql": "XSHA_BENCH_POSTGRES_URL"}
DEFAULT_SERVER_URL: dict[str, str] = {
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
}
XAPI_USER = "root"
XAPI_PASSWORD = "password"
TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (a child died, a wait timed out); the figure is reported with the error."""


# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "memory_mib": _memory_total_mib(),
    }


def _memory_total_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """median / min / max of the repeats (NaN values, i.e. failed repeats, are left out)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


def rounded(value: float, digits: int = 4) -> float | None:
    """JSON has no NaN / infinity: those become null."""
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)


@dataclass
class FigureResult:
    """One figure in the output document."""

    figure: int
    name: str
    target: str
    unit: str
    values: list[float]
    met: bool
    db: str = "sqlite"
    wire: str = "json"
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        stats = summary(self.values)
        doc: dict[str, Any] = {
            "figure": self.figure,
            "name": self.name,
            "target": self.target,
            "value": {key: rounded(value) for key, value in stats.items()},
            "unit": self.unit,
            "repeats": len(self.values),
            "db": self.db,
            "wire": self.wire,
            "met": bool(self.met),
            "details": self.details,
        }
        if self.error:
            doc["error"] = self.error
        return doc


@dataclass
class BenchOptions:
    quick: bool
    repeats: int | None
    dbs: tuple[str, ...]
    work_dir: Path
    sizes: dict[str, int] = field(default_factory=dict)
    verbose: bool = True

    def repeat_count(self, full: int, quick: int = 1) -> int:
        if self.repeats is not None:
            return max(1, self.repeats)
        return quick if self.quick else full

    def size(self, name: str, full: int, quick: int) -> int:
        return self.sizes.get(name, quick if self.quick else full)

    @property
    def primary_db(self) -> str:
        return self.dbs[0]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (grpc.RpcError, OSError, sa.exc.DBAPIError) as error:
            last_error = error
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------------ /proc


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB of a process."""
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------------------------------- databases


def server_url(backend: str) -> str:
    return os.environ.get(SERVER_URL_ENV[backend], "").strip() or DEFAULT_SERVER_URL[backend]


def database_available(backend: str) -> str | None:
    """None when the backend can be used, else why not."""
    if backend == "sqlite":
        return None
    engine = create_engine_for(server_url(backend), pool_size=1, max_overflow=0, connect_timeout=5)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return None
    except sa.exc.DBAPIError as exc:
        return f"{backend} at {SERVER_URL_ENV[backend]} / default does not answer: {exc.orig}"
    finally:
        engine.dispose()


@contextmanager
def fresh_database(backend: str, work_dir: Path, label: str) -> Iterator[str]:
    """A fresh, empty database (a file for SQLite, `xsha_b_<random>` on a server), dropped afterwards."""
    if backend == "sqlite":
        directory = work_dir / f"db-{label}-{secrets.token_hex(3)}"
        directory.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{directory / 'xsha.sqlite'}"
        return
    url = normalize_url(server_url(backend))
    name = f"xsha_b_{secrets.token_hex(5)}"
    admin = create_engine_for(url, pool_size=1, max_overflow=0).execution_options(isolation_level="AUTOCOMMIT")
    create = f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if backend == "mysql" else "")
    drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if backend == "postgresql" else "")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(create)
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(drop)
        admin.engine.dispose()


class DbReader:
    """A light read-only connection to a benchmark database for polling (plain sqlite3 for SQLite, so the
    observer adds no SQLAlchemy cost to the machine it measures)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None
        parsed = normalize_url(url)
        if parsed.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(str(parsed.database), isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA busy_timeout = 5000")
        else:
            self._engine = create_engine_for(url, pool_size=1, max_overflow=0)
            self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return list(self._sqlite.execute(sql, tuple(params)).fetchall())
        assert self._connection is not None
        # DB-API paramstyle differs (pymysql/psycopg: %s); the callers write "?".
        driver_sql = sql.replace("?", "%s")
        return [tuple(row) for row in self._connection.exec_driver_sql(driver_sql, tuple(params)).fetchall()]

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._connection is not None:
            self._connection.close()
        if self._engine is not None:
            self._engine.dispose()


# ----------------------------------------------------------------------------------------------- xapi_sim


def pool_scenario(
    name: str,
    *,
    vms: int,
    hosts: int = 4,
    jsonrpc: bool = True,
    ha_enabled: bool = False,
    host_memory_gib: int = 4096,
    vm_memory_mib: int = 256,
    ha_restart_priority: str = "",
    version: str = "citrix-hypervisor-8.2",
) -> dict[str, Any]:
    vm_group: dict[str, Any] = {
        "count": vms,
        "name_pattern": f"{name}-vm-{{n}}",
        "memory_mib": vm_memory_mib,
        "resident": "spread",
    }
    if ha_restart_priority:
        vm_group["ha_restart_priority"] = ha_restart_priority
    return {
        "name": name,
        "version": version,
        "jsonrpc": jsonrpc,
        "ha_enabled": ha_enabled,
        "ha_allow_overcommit": True,
        "hosts": {"count": hosts, "memory_gib": host_memory_gib, "name_pattern": f"{name}-host-{{n}}"},
        "vms": [vm_group] if vms else [],
    }


class SimControlJson:
    """xapi_sim's sim.* control calls (and plain XAPI calls) over one keep-alive JSON-RPC connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = JsonRpcClient(url, timeout=120.0)
        self._lock = threading.Lock()
        self._session = ""

    def sim(self, method: str, *params: Any) -> Any:
        with self._lock:
            return self.client.call(f"sim.{method}", *params)

    def xapi(self, method: str, *params: Any) -> Any:
        with self._lock:
            if not self._session:
                self._session = self.client.call(
                    "session.login_with_password", XAPI_USER, XAPI_PASSWORD, "1.0", "xsha-bench"
                )
            return self.client.call(method, self._session, *params)

    def close(self) -> None:
        self.client.close()


class SimProcess:
    """xapi_sim in its own process, serving `scenario`; `pools` is its ready-file entry per pool."""

    def __init__(self, scenario: dict[str, Any], work_dir: Path, label: str) -> None:
        self.dir = work_dir / f"sim-{label}-{secrets.token_hex(3)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scenario_path = self.dir / "scenario.yaml"
        self.scenario_path.write_text(yaml.safe_dump(scenario))
        self.ready_file = self.dir / "ready.json"
        self.child = ChildProcess.python_module(
            "xapi_sim",
            "xapi_sim",
            ["--scenario", str(self.scenario_path), "--ready-file", str(self.ready_file)],
            log_path=self.dir / "xapi_sim.log",
        )
        self.pools: dict[str, dict[str, Any]] = {}
        self._controls: dict[str, SimControlJson] = {}

    def start(self, timeout: float = 120.0) -> SimProcess:
        self.child.start()

        def ready() -> bool:
            if self.child.returncode is not None:
                raise ProcessFailedError(f"xapi_sim exited:\n{self.child.log_tail()}")
            return self.ready_file.exists()

        wait_for(ready, timeout, "xapi_sim to serve", interval=0.05)
        self.pools = json.loads(self.ready_file.read_text())["pools"]
        return self

    @property
    def pid(self) -> int:
        return self.child.pid

    def master_url(self, pool: str) -> str:
        return str(self.pools[pool]["master_url"]).rstrip("/")

    def control(self, pool: str) -> SimControlJson:
        if pool not in self._controls:
            self._controls[pool] = SimControlJson(self.master_url(pool))
        return self._controls[pool]

    def stop(self) -> None:
        for control in self._controls.values():
            control.close()
        self.child.stop(timeout=10)

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ services


class SyncProcess:
    """sync_service as a child process (the real entry point, `python -m sync_service`)."""

    def __init__(
        self,
        db_url: str,
        work_dir: Path,
        label: str,
        *,
        wire: str = "auto",
        event_timeout: float = 5.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.dir = work_dir / f"sync-{label}-{secrets.token_hex(3)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = f"127.0.0.1:{free_port()}"
        self.db_url = db_url
        env = {
            "LISTEN_ADDRESS": self.address,
            "DATABASE_URL": db_url,
            "DATABASE_AUTO_UPGRADE": "true",
            "CREDENTIALS_KEY": Fernet.generate_key().decode(),
            "AUTH_TOKENS": TOKEN,
            "METRICS_ADDRESS": os.environ.get("XSHA_BENCH_SYNC_METRICS_ADDRESS", ""),
            "LOG_LEVEL": "WARNING",
            "EVENT_TIMEOUT_SECONDS": str(event_timeout),
            "XAPI_WIRE_FORMAT": wire,
            "WATCH_POLL_SECONDS": "0.5",
            "MAX_WORKERS": "64",
            **(extra_env or {}),
        }
        self.child = ChildProcess.python_module(
            "sync_service",
            "sync_service",
            [],
            log_path=self.dir / "sync_service.log",
            env={**os.environ, **{f"XSHA_SYNC_{key}": value for key, value in env.items()}},
        )
        self.channel: grpc.Channel | None = None
        self.stub: sync_service_pb2_grpc.HypervisorSyncServiceStub | None = None
        self.metadata = (("authorization", f"Bearer {TOKEN}"),)

    @property
    def pid(self) -> int:
        return self.child.pid

    def start(self) -> SyncProcess:
        self.child.start()
        self.child.wait_until_serving(self.address, timeout=120)
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = sync_service_pb2_grpc.HypervisorSyncServiceStub(self.channel)
        return self

    @property
    def api(self) -> sync_service_pb2_grpc.HypervisorSyncServiceStub:
        assert self.stub is not None, "sync_service not started"
        return self.stub

    def register(self, cluster_id: str, master_url: str) -> None:
        self.api.RegisterPool(
            sync_service_pb2.RegisterPoolRequest(
                cluster_id=cluster_id,
                master_url=master_url,
                credentials=sync_service_pb2.XapiCredentials(username=XAPI_USER, password=XAPI_PASSWORD),
            ),
            metadata=self.metadata,
            timeout=60,
        )

    def deregister(self, cluster_id: str) -> None:
        self.api.DeregisterPool(
            sync_service_pb2.DeregisterPoolRequest(cluster_id=cluster_id), metadata=self.metadata, timeout=60
        )

    def pool(self, cluster_id: str) -> sync_service_pb2.Pool:
        return self.api.GetPool(
            sync_service_pb2.GetPoolRequest(cluster_id=cluster_id), metadata=self.metadata, timeout=30
        ).pool

    def watching(self, cluster_id: str) -> bool:
        status = self.pool(cluster_id).sync_status
        return (
            status.state == sync_service_pb2.SYNC_STATE_WATCHING
            and status.connected
            and status.HasField("last_full_sync_time")
        )

    def wait_watching(self, cluster_id: str, timeout: float = 300.0) -> None:
        wait_for(lambda: self.watching(cluster_id), timeout, f"pool {cluster_id} to be mirrored", interval=0.05)

    def current_revision(self) -> int:
        response = self.api.ListPools(
            sync_service_pb2.ListPoolsRequest(page_size=1), metadata=self.metadata, timeout=30
        )
        return int(response.revision)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.child.stop(timeout=15)

    def __enter__(self) -> SyncProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HaProcess:
    """ha_service as a child process, talking to a SyncProcess."""

    def __init__(self, db_url: str, sync_address: str, work_dir: Path, label: str, *, tick: float = 0.2) -> None:
        self.dir = work_dir / f"ha-{label}-{secrets.token_hex(3)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = f"127.0.0.1:{free_port()}"
        env = {
            "LISTEN_ADDRESS": self.address,
            "DATABASE_URL": db_url,
            "DATABASE_AUTO_UPGRADE": "true",
            "AUTH_TOKENS": TOKEN,
            "METRICS_ADDRESS": os.environ.get("XSHA_BENCH_HA_METRICS_ADDRESS", ""),
            "LOG_LEVEL": "WARNING",
            "SYNC_ADDRESS": sync_address,
            "SYNC_TOKEN": TOKEN,
            "CONTROLLER_TICK_INTERVAL": str(tick),
            "MAX_WORKERS": "64",
        }
        self.child = ChildProcess.python_module(
            "ha_service",
            "ha_service",
            [],
            log_path=self.dir / "ha_service.log",
            env={**os.environ, **{f"XSHA_HA_{key}": value for key, value in env.items()}},
        )
        self.channel: grpc.Channel | None = None
        self.stub: ha_service_pb2_grpc.HaPolicyServiceStub | None = None
        self.metadata = (("authorization", f"Bearer {TOKEN}"),)

    @property
    def pid(self) -> int:
        return self.child.pid

    def start(self) -> HaProcess:
        self.child.start()
        self.child.wait_until_serving(self.address, timeout=120)
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = ha_service_pb2_grpc.HaPolicyServiceStub(self.channel)
        return self

    @property
    def api(self) -> ha_service_pb2_grpc.HaPolicyServiceStub:
        assert self.stub is not None, "ha_service not started"
        return self.stub

    def set_native(self, enabled: bool) -> None:
        request = ha_service_pb2.UpdateSettingsRequest()
        getattr(request, "global").CopyFrom(ha_service_pb2.GlobalSettingsPatch(native_ha_enabled=enabled))
        self.api.UpdateSettings(request, metadata=self.metadata, timeout=30)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.child.stop(timeout=15)

    def __enter__(self) -> HaProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_child_json(module: str, args: Sequence[str], work_dir: Path, label: str, timeout: float) -> dict[str, Any]:
    """Run `python -m module args` to completion; its last stdout line is a JSON document."""
    import subprocess

    log_path = work_dir / f"{label}-{secrets.token_hex(3)}.log"
    with log_path.open("wb") as err:
        completed = subprocess.run(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0:
        raise BenchError(f"{module} failed ({completed.returncode}): {log_path.read_text()[-2000:]}")
    lines = completed.stdout.decode().strip().splitlines()
    if not lines:
        raise BenchError(f"{module} printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
