"""Run sync_service in-process for tests and benchmarks (ha_service's tests reuse it).

with start_sync_service(db_url) as sync:
    pool = sync.register_pool("cluster-1", sim.master_url(), "root", "password")
    sync.wait_for(lambda: sync.stub.GetPool(...).pool.sync_status.state == SYNC_STATE_WATCHING)
    vms = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(cluster_id="cluster-1")).vms
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import orjson
from cryptography.fernet import Fernet
from google.protobuf import duration_pb2

from sync_service.app import SyncApp, build_app
from sync_service.crypto import CredentialsCipher
from sync_service.handlers import WatchSettings
from sync_service.leases import LeaseSettings
from sync_service.supervisor import RetentionSettings
from sync_service.watcher import WatcherSettings
from xsha_api.v1 import sync_service_pb2, sync_service_pb2_grpc
from xsha_common.server import ServerSettings
from xsha_common.testing import ResumingStreamRecorder

T = TypeVar("T")


@dataclass
class RunningSyncService:
    app: SyncApp
    database_url: str
    credentials_key: str
    auth_token: str
    channel: grpc.Channel
    stub: sync_service_pb2_grpc.HypervisorSyncServiceStub
    _closed: bool = field(default=False, init=False)

    @property
    def address(self) -> str:
        return self.app.address

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the bearer token (pass as `metadata=` on every call when auth is on)."""
        return (("authorization", f"Bearer {self.auth_token}"),) if self.auth_token else ()

    def register_pool(
        self,
        cluster_id: str,
        master_url: str,
        username: str,
        password: str,
        *,
        tls: sync_service_pb2.XapiTlsOptions | None = None,
        request_id: str = "",
    ) -> sync_service_pb2.Pool:
        response = self.stub.RegisterPool(
            sync_service_pb2.RegisterPoolRequest(
                cluster_id=cluster_id,
                master_url=master_url.rstrip("/"),
                credentials=sync_service_pb2.XapiCredentials(username=username, password=password),
                tls=tls,
                request_id=request_id,
            ),
            metadata=self.metadata,
        )
        return response.pool

    def pool(self, cluster_id: str) -> sync_service_pb2.Pool:
        return self.stub.GetPool(sync_service_pb2.GetPoolRequest(cluster_id=cluster_id), metadata=self.metadata).pool

    def wait_watching(self, cluster_id: str, timeout: float = 30.0) -> sync_service_pb2.Pool:
        """Until the pool's watcher follows the event stream after a full list."""
        return wait_for(
            lambda: (
                pool
                if (pool := self.pool(cluster_id)).sync_status.state == sync_service_pb2.SYNC_STATE_WATCHING
                and pool.sync_status.connected
                and pool.sync_status.HasField("last_full_sync_time")
                else None
            ),
            timeout,
            what=f"pool {cluster_id} to be watched",
        )

    def list_all_vms(self, **filters: Any) -> tuple[list[sync_service_pb2.Vm], int]:
        """Every page of ListVms; the revision of the list (watch from there)."""
        vms: list[sync_service_pb2.Vm] = []
        token = ""
        revision = 0
        while True:
            response = self.stub.ListVms(
                sync_service_pb2.ListVmsRequest(page_size=1000, page_token=token, **filters), metadata=self.metadata
            )
            if not token:
                revision = response.revision
            vms.extend(response.vms)
            token = response.next_page_token
            if not token:
                return vms, revision

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        self.app.stop(grace=0.5)


def wait_for(predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError as error:  # e.g. not registered yet
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_error}"
            )
        time.sleep(interval)


def start(
    database_url: str,
    *,
    credentials_key: str | None = None,
    auth_token: str = "",
    wire: str = "auto",
    event_timeout: float = 2.0,
    backoff_base: float = 0.05,
    backoff_cap: float = 0.5,
    request_timeout: float = 10.0,
    poll_interval: float = 0.1,
    bookmark_interval: float = 5.0,
    retention: RetentionSettings | None = None,
    reconcile_interval: float = 1.0,
    owner: str = "test-replica",
    listen_address: str = "127.0.0.1:0",
    lease_period: float = 10.0,
) -> RunningSyncService:
    """A started sync_service on a free port (migrating `database_url` first). Stop it with `.stop()`."""
    key = credentials_key or Fernet.generate_key().decode()
    app = build_app(
        database_url=database_url,
        cipher=CredentialsCipher(key),
        server_settings=ServerSettings(
            listen_address=listen_address,
            auth_tokens=(auth_token,) if auth_token else (),
            auth_disabled=not auth_token,
            shutdown_grace_seconds=0.5,
        ),
        watcher=WatcherSettings(
            event_timeout=event_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            request_timeout=request_timeout,
            wire=wire,  # type: ignore[arg-type]
        ),
        retention=retention,
        watch=WatchSettings(poll_interval=poll_interval, default_bookmark_interval=bookmark_interval),
        auto_upgrade=True,
        owner=owner,
        reconcile_interval=reconcile_interval,
        leases=LeaseSettings(period=lease_period),
    )
    app.start()
    channel = grpc.insecure_channel(app.address)
    return RunningSyncService(
        app=app,
        database_url=database_url,
        credentials_key=key,
        auth_token=auth_token,
        channel=channel,
        stub=sync_service_pb2_grpc.HypervisorSyncServiceStub(channel),
    )


@contextmanager
def start_sync_service(database_url: str, **options: Any) -> Iterator[RunningSyncService]:
    """`start(...)` as a context manager."""
    running = start(database_url, **options)
    try:
        yield running
    finally:
        running.stop()


# ------------------------------------------------------------------------ mirror vs simulator comparison


def _sim_truth(sim_pool: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """VMs and hosts by uuid, and pool facts, as the simulator's model holds them (read under its lock)."""
    store = sim_pool.store
    with store.lock:
        host_uuid_by_ref = {host.ref: host.rec["uuid"] for host in sim_pool.hosts}
        vms = {}
        for vm in sim_pool.user_vms():
            rec = vm.rec
            vms[rec["uuid"]] = {
                "name": rec["name_label"],
                "xapi_power_state": rec["power_state"],
                "resident_host_uuid": host_uuid_by_ref.get(rec["resident_on"], ""),
                "ha_restart_priority": rec["ha_restart_priority"],
                "order": int(rec["order"]),
                "start_delay_seconds": int(rec["start_delay"]),
                "ha_always_run": bool(rec["ha_always_run"]),
                "memory_static_max_bytes": int(rec["memory_static_max"]),
            }
        hosts = {}
        for host in sim_pool.hosts:
            metrics = sim_pool.metrics_of(host).rec
            hosts[host.rec["uuid"]] = {
                "name": host.rec["name_label"],
                "live": bool(metrics["live"]),
                "enabled": bool(host.rec["enabled"]),
                "is_master": host.ref == sim_pool.master_ref,
            }
        pool_rec = sim_pool.pool_obj.rec
        pool = {
            "pool_uuid": pool_rec["uuid"],
            "master_host_uuid": host_uuid_by_ref.get(pool_rec["master"], ""),
            "ha_enabled": bool(pool_rec["ha_enabled"]),
        }
    return vms, hosts, pool


_POWER_NAMES = {1: "Halted", 2: "Paused", 3: "Running", 4: "Suspended", 0: ""}


def mirror_diff(sync: RunningSyncService, sim_pool: Any, cluster_id: str) -> list[str]:
    """Every difference between sync_service's mirror of `cluster_id` and the simulator pool's model (empty when
    the mirror equals XAPI's truth). VMs gone from XAPI must be kept as removed with PowerReportMissing."""
    truth_vms, truth_hosts, truth_pool = _sim_truth(sim_pool)
    mirrored, _ = sync.list_all_vms(cluster_id=cluster_id, include_removed=True)
    problems: list[str] = []
    seen: set[str] = set()
    for vm in mirrored:
        want = truth_vms.get(vm.uuid)
        if want is None:
            if not vm.removed or vm.power_state != 4:  # POWER_STATE_POWER_REPORT_MISSING
                problems.append(f"VM {vm.name} ({vm.uuid}) is gone from XAPI but mirrored as present")
            continue
        seen.add(vm.uuid)
        if vm.removed:
            problems.append(f"VM {vm.name} ({vm.uuid}) exists in XAPI but is mirrored as removed")
        got = {
            "name": vm.name,
            "xapi_power_state": _POWER_NAMES.get(vm.xapi_power_state, "?"),
            "resident_host_uuid": vm.resident_host_uuid,
            "ha_restart_priority": vm.ha_restart_priority,
            "order": vm.order,
            "start_delay_seconds": vm.start_delay_seconds,
            "ha_always_run": vm.ha_always_run,
            "memory_static_max_bytes": vm.memory_static_max_bytes,
        }
        for key, value in want.items():
            if got[key] != value:
                problems.append(f"VM {want['name']} {key}: mirror {got[key]!r}, XAPI {value!r}")
        expected_power = 1 if want["xapi_power_state"] == "Running" else 2
        if vm.power_state != expected_power:
            problems.append(f"VM {want['name']} power_state {vm.power_state} for XAPI {want['xapi_power_state']}")
    for uuid, want in truth_vms.items():
        if uuid not in seen:
            problems.append(f"VM {want['name']} ({uuid}) is missing from the mirror")
    hosts = sync.stub.ListHosts(
        sync_service_pb2.ListHostsRequest(cluster_id=cluster_id, page_size=1000), metadata=sync.metadata
    ).hosts
    host_seen = set()
    for host in hosts:
        want_host = truth_hosts.get(host.uuid)
        if want_host is None:
            problems.append(f"host {host.name} is mirrored but not in XAPI")
            continue
        host_seen.add(host.uuid)
        got_host = {"name": host.name, "live": host.live, "enabled": host.enabled, "is_master": host.is_master}
        for key, value in want_host.items():
            if got_host[key] != value:
                problems.append(f"host {want_host['name']} {key}: mirror {got_host[key]!r}, XAPI {value!r}")
    for uuid, want_host in truth_hosts.items():
        if uuid not in host_seen:
            problems.append(f"host {want_host['name']} is missing from the mirror")
    pool = sync.pool(cluster_id)
    got_pool = {
        "pool_uuid": pool.pool_uuid,
        "master_host_uuid": pool.master_host_uuid,
        "ha_enabled": pool.ha.ha_enabled,
    }
    for key, value in truth_pool.items():
        if got_pool[key] != value:
            problems.append(f"pool {key}: mirror {got_pool[key]!r}, XAPI {value!r}")
    return problems


def wait_converged(sync: RunningSyncService, sim_pool: Any, cluster_id: str, timeout: float = 30.0) -> None:
    """Until the mirror equals the simulator's truth; on timeout the assertion lists what still differs."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        try:
            problems = mirror_diff(sync, sim_pool, cluster_id)
        except grpc.RpcError as error:
            problems = [f"RPC failed: {error}"]
        if not problems:
            return
        time.sleep(0.05)
    raise AssertionError(f"mirror of {cluster_id} did not converge in {timeout}s:\n  " + "\n  ".join(problems[:30]))


def _change_of(message: sync_service_pb2.WatchChangesResponse) -> tuple[sync_service_pb2.Change | None, int]:
    if message.HasField("change"):
        return message.change, message.change.revision
    return None, message.bookmark.revision


class WatchRecorder(ResumingStreamRecorder[sync_service_pb2.Change]):
    """Follows WatchChanges from a revision in a thread, resuming from the last revision it saw whenever the
    stream breaks (e.g. sync_service restarted), and records every change, so a test can prove exactly-once."""

    def __init__(self, target: Callable[[], RunningSyncService], since_revision: int, cluster_id: str = "") -> None:
        self.cluster_id = cluster_id

        def open_stream(position: int) -> Any:
            sync = target()
            interval = duration_pb2.Duration()
            interval.FromMilliseconds(200)
            request = sync_service_pb2.WatchChangesRequest(
                since_revision=position, cluster_id=cluster_id, bookmark_interval=interval
            )
            return sync.stub.WatchChanges(request, metadata=sync.metadata)

        super().__init__(open_stream, _change_of, since_revision, name="watch-recorder")

    @property
    def changes(self) -> list[sync_service_pb2.Change]:
        return self.items

    def revisions(self) -> list[int]:
        changes, _position = self.snapshot()
        return [change.revision for change in changes]


# ----------------------------------------------------------------------------------------- as a subprocess


@dataclass
class SyncServiceProcess:
    """`python -m sync_service` in a child process (benchmarks: no GIL shared with the caller)."""

    process: Any
    address: str
    log_lines: list[str]
    channel: grpc.Channel
    stub: sync_service_pb2_grpc.HypervisorSyncServiceStub

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return int(self.process.wait(timeout))
        except Exception:
            self.process.kill()
            return int(self.process.wait(timeout))


def spawn(
    database_url: str,
    *,
    credentials_key: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 60.0,
) -> SyncServiceProcess:
    """Start `python -m sync_service` on a free port (auth off unless `extra_args` say otherwise) and wait until it
    serves. The child's JSON log lines are collected in `log_lines`."""

    child_env = {**os.environ, **(env or {})}
    if credentials_key is not None:
        child_env["XSHA_SYNC_CREDENTIALS_KEY"] = credentials_key
    args = [
        sys.executable,
        "-m",
        "sync_service",
        "--listen-address",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--log-format",
        "json",
        "--metrics-address",
        "",
        *extra_args,
    ]
    if not any(arg.startswith("--auth") for arg in extra_args) and "XSHA_SYNC_AUTH_TOKENS" not in child_env:
        args.append("--auth-disabled")
    process = subprocess.Popen(args, env=child_env, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    lines: list[str] = []
    address: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if not ready.is_set() and "sync_service serving" in line:
                try:
                    address.append(str(orjson.loads(line)["address"]))
                except (orjson.JSONDecodeError, KeyError):
                    continue
                ready.set()
        ready.set()

    threading.Thread(target=read, name="sync-service-log", daemon=True).start()
    if not ready.wait(timeout) or not address:
        process.kill()
        raise RuntimeError("sync_service did not start:\n" + "\n".join(lines[-30:]))
    channel = grpc.insecure_channel(address[0])
    return SyncServiceProcess(
        process, address[0], lines, channel, sync_service_pb2_grpc.HypervisorSyncServiceStub(channel)
    )
