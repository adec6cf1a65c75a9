"""End-to-end stack: xapi_sim + sync_service + ha_service, each on real sockets.

`start_stack(scenario, clusters)` starts the simulator from a scenario dict, sync_service on the test's `db_url`
(registering each cluster's pool with the credentials of the `xsha` XAPI user), then ha_service against that
sync_service. On MariaDB and PostgreSQL ha_service uses the same database: the services own separate tables and
Alembic version tables, so sharing one database also proves they do not step on each other. On SQLite each service
has its own file, as the embedded default deploys them. Everything is stopped after the test, and the simulator's
call log is checked: no VM power operation ever came from xsha's sessions (R6).

Sessions are told apart in the call log by user and originator: sync_service logs in as `xsha` with originator
`xsha-sync`; the test's "someone else" (XenCenter, the orchestrator) logs in as `root` with an originator of its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
import XenAPI

from ha_service.testing import ManualClock, RunningHaService, running_ha_service
from sync_service import testing as sync_testing
from sync_service.testing import RunningSyncService
from sync_service.xapi.allowed import VM_POWER_OPERATIONS, canonical_method
from sync_service.xapi.client import DEFAULT_ORIGINATOR
from xapi_sim import Simulator
from xapi_sim.pool import SimPool
from xapi_sim.testing import SimControl
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.testing import wait_until

XSHA_USER = "xsha"
XSHA_PASSWORD = "xsha-secret"
ADMIN_USER = "root"
ADMIN_PASSWORD = "password"
CREDENTIALS = {ADMIN_USER: ADMIN_PASSWORD, XSHA_USER: XSHA_PASSWORD}

# Every XAPI method that changes a VM's power state or residence: start, start_on, the shutdowns and reboots,
# suspend, resume(_on), pause, pool_migrate, migrate_send, power_state_reset, destroy (`Class_method` spellings are
# mapped onto these by canonical_method).
POWER_OPERATIONS = VM_POWER_OPERATIONS

WAIT = 30.0  # bound of every wait: generous for a loaded 2-core CI machine, never an assertion about speed

# A database per backend for the representative subset; heavy scenarios run on SQLite only.
sqlite_only = pytest.mark.parametrize(
    "db_backend", [pytest.param("sqlite", id="sqlite", marks=pytest.mark.sqlite)], indirect=False
)


def is_power_operation(method: str) -> bool:
    return canonical_method(method) in POWER_OPERATIONS


class HaEventLog:
    """Collects a WatchHaEvents stream on a thread (actions, notifications, redelivery flags)."""

    def __init__(self, ha: RunningHaService, since: int = 0, cluster_id: str = "") -> None:
        request = ha_service_pb2.WatchHaEventsRequest(since_revision=since, cluster_id=cluster_id)
        request.bookmark_interval.FromMilliseconds(200)
        self._call: Any = ha.stub().WatchHaEvents(request)
        self._lock = threading.Lock()
        self._events: list[ha_service_pb2.HaEvent] = []
        self.bookmark = since
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, name="ha-event-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._call:
                with self._lock:
                    if item.HasField("event"):
                        self._events.append(item.event)
                    else:
                        self.bookmark = max(self.bookmark, item.bookmark.revision)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                self.error = error

    @property
    def events(self) -> list[ha_service_pb2.HaEvent]:
        with self._lock:
            return list(self._events)

    @property
    def last_revision(self) -> int:
        with self._lock:
            return max([self.bookmark, *(e.revision for e in self._events)])

    def actions(self) -> list[ha_service_pb2.HaAction]:
        return [e.action for e in self.events if e.HasField("action")]

    def notifications(self, kind: int | None = None) -> list[ha_service_pb2.HaNotification]:
        return [
            e.notification
            for e in self.events
            if e.HasField("notification") and (kind is None or e.notification.kind == kind)
        ]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


class Stack:
    """The three running pieces of one test; `ha` is replaced by `restart_ha()`."""

    def __init__(
        self,
        sim: Simulator,
        sync: RunningSyncService,
        db_url: str,
        clusters: Mapping[str, str],
        clock: Callable[[], float],
        ha_options: Mapping[str, Any],
    ) -> None:
        self.sim = sim
        self.sync = sync
        self.db_url = db_url  # ha_service's database (sync_service's is self.sync.database_url)
        self.clusters = dict(clusters)
        self.clock = clock
        self._ha_options = dict(ha_options)
        self._ha_cm: AbstractContextManager[RunningHaService] | None = None
        self._ha: RunningHaService | None = None
        self._logs: list[HaEventLog] = []
        self._sessions: list[Any] = []

    # --- ha_service lifecycle -----------------------------------------------------------------------------------

    @property
    def ha(self) -> RunningHaService:
        assert self._ha is not None, "ha_service is not running"
        return self._ha

    def start_ha(self) -> RunningHaService:
        assert self._ha is None
        self._ha_cm = running_ha_service(self.db_url, self.sync.address, clock=self.clock, **self._ha_options)
        self._ha = self._ha_cm.__enter__()
        wait_until(self._ha.controller.connected.is_set, WAIT, what="ha_service's controller to follow sync_service")
        self.settle()
        return self._ha

    def stop_ha(self) -> None:
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._ha_cm is not None:
            self._ha_cm.__exit__(None, None, None)
        self._ha_cm = None
        self._ha = None

    def restart_ha(self) -> RunningHaService:
        """ha_service stopped and started again on the same database (a crash or an upgrade)."""
        self.stop_ha()
        return self.start_ha()

    def close(self) -> None:
        self.stop_ha()
        for session in self._sessions:
            with contextlib.suppress(Exception):  # the simulator may be gone already: nothing to clean up then
                session.xenapi.session.logout()

    # --- RPC helpers --------------------------------------------------------------------------------------------

    def stub(self) -> Any:
        return self.ha.stub()

    def watch(self, since: int = 0, cluster_id: str = "") -> HaEventLog:
        log = HaEventLog(self.ha, since, cluster_id)
        self._logs.append(log)
        return log

    def update_settings(self, **request: Any) -> ha_service_pb2.UpdateSettingsResponse:
        response: ha_service_pb2.UpdateSettingsResponse = self.stub().UpdateSettings(
            ha_service_pb2.UpdateSettingsRequest(**request)
        )
        return response

    def set_native(self, enabled: bool, **overrides: bool) -> None:
        """xenserver.native.ha.enabled globally, plus per-cluster overrides (cluster id -> native)."""
        self.update_settings(
            **{"global": ha_service_pb2.GlobalSettingsPatch(native_ha_enabled=enabled)},
            set_cluster_overrides=[
                ha_service_pb2.ClusterOverride(cluster_id=c, native_ha_enabled=v) for c, v in overrides.items()
            ],
        )

    def decide(
        self,
        cluster_id: str,
        name: str,
        *,
        ha: bool = True,
        vm_type: int = common_pb2.VM_TYPE_USER,
        redundant_router: bool = False,
        version: common_pb2.HypervisorVersion | None = None,
    ) -> ha_service_pb2.VmDeploymentDecision:
        request = ha_service_pb2.DecideVmDeploymentRequest(
            cluster_id=cluster_id,
            instance_name=name,
            vm_type=vm_type,  # type: ignore[arg-type]
            offering_ha_enabled=ha,
            redundant_router=redundant_router,
            request_id=f"decide-{cluster_id}-{name}",
        )
        if version is not None:
            request.hypervisor_version.CopyFrom(version)
        decision: ha_service_pb2.VmDeploymentDecision = self.stub().DecideVmDeployment(request).decision
        return decision

    def managed(self, cluster_id: str, name: str) -> ha_service_pb2.ManagedVm:
        request = ha_service_pb2.GetManagedVmRequest(cluster_id=cluster_id, instance_name=name)
        vm: ha_service_pb2.ManagedVm = self.stub().GetManagedVm(request).vm
        return vm

    def set_wanted(self, cluster_id: str, name: str, wanted: int) -> None:
        self.stub().SetVmWantedState(
            ha_service_pb2.SetVmWantedStateRequest(
                cluster_id=cluster_id,
                instance_name=name,
                wanted_state=wanted,  # type: ignore[arg-type]
            )
        )

    def actions(self, *states: int, cluster_id: str = "") -> list[ha_service_pb2.HaAction]:
        request = ha_service_pb2.ListHaActionsRequest(
            cluster_id=cluster_id,
            states=list(states),  # type: ignore[arg-type]
            page_size=1000,
        )
        return list(self.stub().ListHaActions(request).actions)

    def status(self, cluster_id: str) -> ha_service_pb2.ClusterHaStatus:
        request = ha_service_pb2.GetClusterHaStatusRequest(cluster_id=cluster_id)
        status: ha_service_pb2.ClusterHaStatus = self.stub().GetClusterHaStatus(request).status
        return status

    def fencing(self, cluster_id: str) -> ha_service_pb2.HostFencingPolicy:
        request = ha_service_pb2.GetHostFencingPolicyRequest(cluster_id=cluster_id)
        policy: ha_service_pb2.HostFencingPolicy = self.stub().GetHostFencingPolicy(request).policy
        return policy

    def wait_bound(self, cluster_id: str, *names: str) -> None:
        """Until ha_service has seen each VM in the mirror, running, with its decided HA config confirmed."""

        def done() -> bool:
            for name in names:
                vm = self.managed(cluster_id, name)
                if not vm.present_on_hypervisor or vm.observed_power_state != common_pb2.XAPI_POWER_STATE_RUNNING:
                    return False
                if vm.protection_state not in (
                    ha_service_pb2.PROTECTION_STATE_PROTECTED,
                    ha_service_pb2.PROTECTION_STATE_NOT_APPLICABLE,
                ):
                    return False
                if vm.observed_ha_restart_priority != vm.decision.ha_restart_priority:
                    return False
            return True

        wait_until(done, WAIT, what=f"{names} in {cluster_id} to be bound and confirmed")

    def wait_mirrored(self, cluster_id: str, *, dead_hosts: tuple[int, ...] = (), halted: tuple[str, ...] = ()) -> None:
        """Until sync_service's mirror shows these hosts (by index) dead and these VMs Halted, then `settle()`:
        before a manual clock moves, ha_service must have seen what happened at the time it happened."""
        dead = {self.host_uuid(cluster_id, index) for index in dead_hosts}

        def mirrored() -> bool:
            hosts = self.sync.stub.ListHosts(
                sync_service_pb2.ListHostsRequest(cluster_id=cluster_id), metadata=self.sync.metadata
            ).hosts
            if any(h.live for h in hosts if h.uuid in dead):
                return False
            vms, _ = self.sync.list_all_vms(cluster_id=cluster_id)
            states = {vm.name: vm.xapi_power_state for vm in vms}
            return all(states.get(name) == common_pb2.XAPI_POWER_STATE_HALTED for name in halted)

        wait_until(mirrored, WAIT, what=f"the mirror of {cluster_id} to show hosts {dead_hosts} dead, {halted} halted")
        self.settle()

    def settle(self) -> None:
        """Until ha_service's controller has processed everything sync_service mirrored so far (and a tick)."""
        _, revision = self.sync.list_all_vms()
        controller = self.ha.controller
        wait_until(lambda: controller.processed_revision >= revision, WAIT, what=f"the controller to reach {revision}")
        controller.tick_now()
        assert controller.wait_processed(WAIT), "the controller did not drain its queue"

    # --- the simulator ------------------------------------------------------------------------------------------

    def pool(self, cluster_id: str) -> SimPool:
        return self.sim.pool(self.clusters[cluster_id])

    def control(self, cluster_id: str) -> SimControl:
        return SimControl(self.sim.master_url(self.clusters[cluster_id]))

    def host_uuid(self, cluster_id: str, index: int) -> str:
        return str(self.pool(cluster_id).hosts[index].rec["uuid"])

    def vm_rec(self, cluster_id: str, name: str) -> dict[str, Any]:
        with self.pool(cluster_id).store.lock:
            return dict(self.pool(cluster_id).vm_by_name(name).rec)

    def vm_host_uuid(self, cluster_id: str, name: str) -> str:
        resident = self.vm_rec(cluster_id, name)["resident_on"]
        hosts = {h.ref: str(h.rec["uuid"]) for h in self.pool(cluster_id).hosts}
        return hosts.get(resident, "")

    def xapi_session(self, cluster_id: str, originator: str) -> Any:
        """A XenAPI SDK session of "someone else" (XenCenter, the orchestrator) on the pool master."""
        session = XenAPI.Session(self.sim.master_url(self.clusters[cluster_id]))
        session.xenapi.login_with_password(ADMIN_USER, ADMIN_PASSWORD, "1.0", originator)
        self._sessions.append(session)
        return session

    def call_log_mark(self) -> dict[str, int]:
        """The last call-log sequence number of every pool, to look at later calls only."""
        return {name: max([0, *(c["seq"] for c in pool.calls_since(0))]) for name, pool in self.sim.pools.items()}

    def calls(self, since: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for name, pool in self.sim.pools.items():
            found.extend({**c, "pool": name} for c in pool.calls_since((since or {}).get(name, 0)))
        return found

    def xsha_calls(self, since: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls(since) if c["user"] == XSHA_USER or c["originator"] == DEFAULT_ORIGINATOR]

    def xsha_power_operations(self, since: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        return [c for c in self.xsha_calls(since) if is_power_operation(c["method"])]


class StartStack(Protocol):
    def __call__(
        self,
        pools: list[dict[str, Any]],
        clusters: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = ...,
        ha_options: Mapping[str, Any] | None = None,
        time_scale: float = ...,
    ) -> Stack: ...


def pool_spec(name: str, version: str = "citrix-hypervisor-8.2", **fields: Any) -> dict[str, Any]:
    """A scenario pool: two 64 GiB hosts by default, xsha's and the admin's credentials, fast simulated time."""
    spec: dict[str, Any] = {
        "name": name,
        "version": version,
        "credentials": dict(CREDENTIALS),
        "hosts": {"count": 2, "memory_gib": 64},
        "vms": [],
    }
    spec.update(fields)
    return spec


def _ha_database(db_url: str) -> str:
    """ha_service's database: the same MariaDB / PostgreSQL database as sync_service's (separate tables and
    Alembic version tables), or a SQLite file of its own next to sync_service's, as the embedded default deploys
    them (one writer per SQLite file; sync_service writes constantly)."""
    if not db_url.startswith("sqlite:///"):
        return db_url
    sync_file = Path(db_url.removeprefix("sqlite:///"))
    return f"sqlite:///{sync_file.with_name('ha_service.sqlite')}"


@pytest.fixture
def start_stack(db_url: str) -> Iterator[StartStack]:
    """Starts the stack (once per test); stops it afterwards and checks R6 on the whole call log."""
    stacks: list[Stack] = []
    with ExitStack() as cleanup:

        def start(
            pools: list[dict[str, Any]],
            clusters: Mapping[str, str] | None = None,
            *,
            clock: Callable[[], float] = time.time,
            ha_options: Mapping[str, Any] | None = None,
            time_scale: float = 0.01,
        ) -> Stack:
            scenario = {"time_scale": time_scale, "vm_boot_seconds": 0.2, "pools": pools}
            sim = Simulator.from_scenario(scenario).start()
            cleanup.callback(sim.stop)
            sync = sync_testing.start(db_url, event_timeout=1.0, poll_interval=0.05, bookmark_interval=0.5)
            cleanup.callback(sync.stop)
            mapping = dict(clusters) if clusters is not None else {p["name"]: p["name"] for p in pools}
            for cluster_id, pool_name in mapping.items():
                sync.register_pool(cluster_id, sim.master_url(pool_name), XSHA_USER, XSHA_PASSWORD)
            for cluster_id in mapping:
                sync.wait_watching(cluster_id, WAIT)
            stack = Stack(sim, sync, _ha_database(db_url), mapping, clock, ha_options or {})
            cleanup.callback(stack.close)
            stack.start_ha()
            stacks.append(stack)
            return stack

        yield start
        for stack in stacks:
            # R6 for the whole test: sync_service made XAPI calls, none of them a power operation.
            assert stack.xsha_calls(), "sync_service made no XAPI call at all: the check below would prove nothing"
            assert stack.xsha_power_operations() == [], "a VM power operation came from xsha's sessions"


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()
