"""A TEST DOUBLE of HypervisorSyncService for ha_service's unit tests: in memory, on a real gRPC socket.

Same revision semantics as sync_service: every mutation gets the next revision; lists return the current revision;
WatchChanges streams changes after a revision in order, with bookmarks, and answers OUT_OF_RANGE below the
retained floor. Tests drive the "hypervisor" with the mutators (add_vm, set_vm, crash_host, ...).
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from xsha_api.v1 import common_pb2, sync_service_pb2, sync_service_pb2_grpc
from xsha_common.errors import ServiceError, failed_precondition, not_found, out_of_range
from xsha_common.server import ServerSettings, ServiceRegistration, build_server

VERSIONS: dict[str, common_pb2.HypervisorVersion] = {
    "xs61": common_pb2.HypervisorVersion(
        api_version_major=1, api_version_minor=10, product_brand="XenServer", product_version="6.1.0"
    ),
    "xs62": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=0, product_brand="XenServer", product_version="6.2.0"
    ),
    "xs65": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=3, product_brand="XenServer", product_version="6.5.0"
    ),
    "xs71": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=6, product_brand="XenServer", product_version="7.1.0"
    ),
    "ch82": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=15, product_brand="Citrix Hypervisor", product_version="8.2.0"
    ),
    "xcp821": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=16, product_brand="XCP-ng", product_version="8.2.1"
    ),
    "xcp830": common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=21, product_brand="XCP-ng", product_version="8.3.0"
    ),
}


class FakeSync(sync_service_pb2_grpc.HypervisorSyncServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.revision = 0
        self.floor = 0
        self.changes: list[sync_service_pb2.Change] = []
        self.pools: dict[str, sync_service_pb2.Pool] = {}
        self.hosts: dict[str, sync_service_pb2.Host] = {}
        self.vms: dict[str, sync_service_pb2.Vm] = {}
        self.refuse_restart: set[str] = set()  # VM uuids or names whose "restart" XAPI refuses
        self.set_calls: list[tuple[str, str]] = []
        # Called (under the lock) before SetVmHaConfig writes: what else XAPI reports while the write is in flight.
        self.before_ha_write: Callable[[str], None] | None = None
        self.down = False
        self.server: Any = None

    # --- serving ----------------------------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        self.server = build_server(
            [ServiceRegistration(sync_service_pb2_grpc.add_HypervisorSyncServiceServicer_to_server, self,
                                 "cloudstack.xsha.v1.HypervisorSyncService")],
            ServerSettings(listen_address=f"127.0.0.1:{port}", auth_disabled=True, shutdown_grace_seconds=0.2),
        )  # fmt: skip
        self.server.start()
        return str(self.server.address)

    def stop(self) -> None:
        self.server.shutdown(0.2)

    # --- mutators ---------------------------------------------------------------------------------------------

    def _emit(
        self,
        kind: sync_service_pb2.ResourceKind.ValueType,
        change_type: sync_service_pb2.ChangeType.ValueType,
        cluster_id: str,
        obj: Any,
    ) -> None:
        self.revision += 1
        obj.revision = self.revision
        change = sync_service_pb2.Change(revision=self.revision, type=change_type, kind=kind, cluster_id=cluster_id)
        change.commit_time.GetCurrentTime()
        field = {sync_service_pb2.RESOURCE_KIND_POOL: "pool", sync_service_pb2.RESOURCE_KIND_HOST: "host"}.get(
            kind, "vm"
        )
        getattr(change, field).CopyFrom(obj)
        self.changes.append(change)
        self.lock.notify_all()

    def add_pool(self, cluster_id: str, version: str | common_pb2.HypervisorVersion = "ch82", ha: bool = True) -> None:
        with self.lock:
            pool = sync_service_pb2.Pool(cluster_id=cluster_id, pool_uuid=str(uuidlib.uuid4()), name=cluster_id)
            pool.version.CopyFrom(VERSIONS[version] if isinstance(version, str) else version)
            pool.ha.ha_enabled = ha
            pool.ha.ha_host_failures_to_tolerate = 1
            pool.ha.ha_plan_exists_for = 1
            self.pools[cluster_id] = pool
            self._emit(sync_service_pb2.RESOURCE_KIND_POOL, sync_service_pb2.CHANGE_TYPE_ADDED, cluster_id, pool)

    def set_pool_ha(self, cluster_id: str, **fields: Any) -> None:
        with self.lock:
            pool = self.pools[cluster_id]
            for name, value in fields.items():
                setattr(pool.ha, name, value)
            self._emit(sync_service_pb2.RESOURCE_KIND_POOL, sync_service_pb2.CHANGE_TYPE_MODIFIED, cluster_id, pool)

    def add_host(self, cluster_id: str, name: str) -> str:
        with self.lock:
            host = sync_service_pb2.Host(uuid=str(uuidlib.uuid4()), cluster_id=cluster_id, name=name, live=True)
            host.enabled = True
            self.hosts[host.uuid] = host
            self._emit(sync_service_pb2.RESOURCE_KIND_HOST, sync_service_pb2.CHANGE_TYPE_ADDED, cluster_id, host)
            return host.uuid

    def set_host_live(self, host_uuid: str, live: bool) -> None:
        with self.lock:
            host = self.hosts[host_uuid]
            host.live = live
            self._emit(
                sync_service_pb2.RESOURCE_KIND_HOST, sync_service_pb2.CHANGE_TYPE_MODIFIED, host.cluster_id, host
            )

    def add_vm(self, cluster_id: str, name: str, *, running_on: str = "", priority: str = "") -> str:
        with self.lock:
            vm = sync_service_pb2.Vm(uuid=str(uuidlib.uuid4()), name=name, cluster_id=cluster_id)
            self._set_power(vm, running_on)
            vm.ha_restart_priority = priority
            self.vms[vm.uuid] = vm
            self._emit(sync_service_pb2.RESOURCE_KIND_VM, sync_service_pb2.CHANGE_TYPE_ADDED, cluster_id, vm)
            return vm.uuid

    @staticmethod
    def _set_power(vm: sync_service_pb2.Vm, running_on: str) -> None:
        vm.xapi_power_state = common_pb2.XAPI_POWER_STATE_RUNNING if running_on else common_pb2.XAPI_POWER_STATE_HALTED
        vm.power_state = common_pb2.POWER_STATE_POWER_ON if running_on else common_pb2.POWER_STATE_POWER_OFF
        vm.resident_host_uuid = running_on

    def set_vm(self, vm_uuid: str, *, running_on: str | None = None, priority: str | None = None) -> None:
        """running_on: host uuid to run on, "" to halt, None to leave the power state alone."""
        with self.lock:
            vm = self.vms[vm_uuid]
            if running_on is not None:
                self._set_power(vm, running_on)
            if priority is not None:
                vm.ha_restart_priority = priority
            self._emit(sync_service_pb2.RESOURCE_KIND_VM, sync_service_pb2.CHANGE_TYPE_MODIFIED, vm.cluster_id, vm)

    def remove_vm(self, vm_uuid: str) -> None:
        with self.lock:
            vm = self.vms.pop(vm_uuid)
            vm.removed = True
            self._emit(sync_service_pb2.RESOURCE_KIND_VM, sync_service_pb2.CHANGE_TYPE_REMOVED, vm.cluster_id, vm)

    def crash_host_native(self, host_uuid: str, restart_on: str) -> list[str]:
        """XenServer HA failover: host dead, its VMs Halted, protected ones Running on `restart_on`."""
        self.set_host_live(host_uuid, False)
        victims = [v.uuid for v in list(self.vms.values()) if v.resident_host_uuid == host_uuid]
        for vm_uuid in victims:
            self.set_vm(vm_uuid, running_on="")
        for vm_uuid in victims:
            if self.vms[vm_uuid].ha_restart_priority == "restart":
                self.set_vm(vm_uuid, running_on=restart_on)
        return victims

    def forget_history(self) -> None:
        """Drops the change log (watches from older revisions get OUT_OF_RANGE)."""
        with self.lock:
            self.floor = self.revision
            self.changes.clear()

    def vm_by_name(self, name: str) -> sync_service_pb2.Vm:
        with self.lock:
            return next(v for v in self.vms.values() if v.name == name)

    # --- RPCs -------------------------------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.down:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "fake sync_service is down", "DOWN")

    def GetPool(self, request: Any, context: Any) -> sync_service_pb2.GetPoolResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            if request.cluster_id not in self.pools:
                raise not_found("pool", request.cluster_id, reason="POOL_NOT_FOUND")
            return sync_service_pb2.GetPoolResponse(pool=self.pools[request.cluster_id])

    def ListPools(self, request: Any, context: Any) -> sync_service_pb2.ListPoolsResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            return sync_service_pb2.ListPoolsResponse(pools=list(self.pools.values()), revision=self.revision)

    def ListHosts(self, request: Any, context: Any) -> sync_service_pb2.ListHostsResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            return sync_service_pb2.ListHostsResponse(hosts=list(self.hosts.values()), revision=self.revision)

    def ListVms(self, request: Any, context: Any) -> sync_service_pb2.ListVmsResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            vms = [v for v in self.vms.values() if not request.name_prefix or v.name.startswith(request.name_prefix)]
            return sync_service_pb2.ListVmsResponse(vms=vms, revision=self.revision)

    def WatchChanges(self, request: Any, context: Any) -> Iterator[sync_service_pb2.WatchChangesResponse]:  # noqa: N802
        self._check_up()
        last = request.since_revision
        with self.lock:
            if last < self.floor:
                raise out_of_range(f"revision {last} not retained", "REVISION_NOT_RETAINED")
        interval = max(0.1, request.bookmark_interval.ToMilliseconds() / 1000 or 5.0)
        next_bookmark = time.monotonic() + interval
        while context.is_active() and not self.down:
            with self.lock:
                if last < self.floor:
                    raise out_of_range(f"revision {last} not retained", "REVISION_NOT_RETAINED")
                pending = [c for c in self.changes if c.revision > last]
                if not pending:
                    self.lock.wait(0.1)
                    pending = [c for c in self.changes if c.revision > last]
                current = self.revision
            for change in pending:
                yield sync_service_pb2.WatchChangesResponse(change=change)
                last = change.revision
            if time.monotonic() >= next_bookmark:
                last = max(last, current)
                yield sync_service_pb2.WatchChangesResponse(bookmark=common_pb2.Bookmark(revision=last))
                next_bookmark = time.monotonic() + interval
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake sync_service went down")

    def SetVmHaConfig(self, request: Any, context: Any) -> sync_service_pb2.SetVmHaConfigResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            vm = self.vms.get(request.vm_uuid)
            if vm is None:
                raise not_found("VM", request.vm_uuid, reason="VM_NOT_FOUND")
            self.set_calls.append((request.vm_uuid, request.ha_restart_priority))
            if self.before_ha_write is not None:
                self.before_ha_write(request.vm_uuid)
            if request.ha_restart_priority == "restart" and {vm.uuid, vm.name} & self.refuse_restart:
                raise failed_precondition(
                    "XAPI refused the change: HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
                    "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
                    metadata={"xapi_code": "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"},
                )
            changed = (vm.ha_restart_priority, vm.order, vm.start_delay_seconds) != (
                request.ha_restart_priority,
                request.order,
                request.start_delay_seconds,
            )
            vm.ha_restart_priority = request.ha_restart_priority
            vm.order = request.order
            vm.start_delay_seconds = request.start_delay_seconds
            if changed:
                self._emit(sync_service_pb2.RESOURCE_KIND_VM, sync_service_pb2.CHANGE_TYPE_MODIFIED, vm.cluster_id, vm)
            return sync_service_pb2.SetVmHaConfigResponse(vm=vm)

    # Not needed by ha_service: the double refuses them.
    def RegisterPool(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "not in the test double", "UNIMPLEMENTED")

    def UpdatePool(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "not in the test double", "UNIMPLEMENTED")

    def DeregisterPool(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "not in the test double", "UNIMPLEMENTED")

    def GetVm(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "not in the test double", "UNIMPLEMENTED")

    def ResyncPool(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "not in the test double", "UNIMPLEMENTED")
