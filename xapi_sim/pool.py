"""One simulated pool: hosts, VMs, sessions, HA configuration and the VM power operations.

This is the model's behaviour; api.py maps XAPI method calls onto it, control.py maps sim.* calls, ha.py runs
the failover. Everything that reads and changes state together holds `store.lock`; slow parts (boot time,
start_delay) run outside it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xapi_sim import errors, records
from xapi_sim.errors import XapiError
from xapi_sim.model import MALFORMED_KINDS, ObjectStore, SimObject
from xapi_sim.records import GIB, MIB, NULL_REF, new_ref, new_uuid
from xapi_sim.versions import resolve_preset, software_version_for

POWER_STATES = ("Halted", "Paused", "Running", "Suspended")
HA_PRIORITIES = ("restart", "best-effort", "")
SESSIONS_PER_USER = 500  # xapi destroys a user's oldest session beyond this
CALL_LOG_LIMIT = 200_000
MUTATE_BATCH_INTERVAL_S = 0.01  # the shortest gap between two batches of paced mutations


class EndpointHooks(Protocol):
    """What the server layer does for the pool when hosts die or connections must drop."""

    def host_down(self, host_ref: str) -> None: ...

    def host_up(self, host_ref: str) -> None: ...

    def drop_connections(self) -> int: ...


class _NoEndpoints:
    def host_down(self, host_ref: str) -> None:
        pass

    def host_up(self, host_ref: str) -> None:
        pass

    def drop_connections(self) -> int:
        return 0


@dataclass(slots=True)
class Session:
    ref: str
    uuid: str
    user: str
    originator: str
    host_ref: str
    wire: str
    created: float
    last_active: float
    local: bool = False


@dataclass(slots=True)
class VmSpec:
    """Parameters of VMs to create (scenario groups, sim.add_vms)."""

    name_pattern: str = "vm-{n}"
    power_state: str = "Running"
    memory: int = 1 * GIB
    vcpus: int = 2
    ha_restart_priority: str = ""
    order: int = 0
    start_delay: int = 0
    resident: str | int = "spread"  # "spread" (round-robin over live hosts) or a host index / name / uuid / ref
    other_config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmSpec:
        spec = cls()
        for key, value in data.items():
            if key in ("name", "name_pattern"):
                spec.name_pattern = str(value)
            elif key == "power_state":
                spec.power_state = str(value)
            elif key == "memory":
                spec.memory = int(value)
            elif key == "memory_mib":
                spec.memory = int(value) * MIB
            elif key == "memory_gib":
                spec.memory = int(float(value) * GIB)
            elif key == "vcpus":
                spec.vcpus = int(value)
            elif key == "ha_restart_priority":
                spec.ha_restart_priority = str(value)
            elif key in ("order", "start_delay"):
                setattr(spec, key, int(value))
            elif key in ("resident", "host"):
                spec.resident = value if isinstance(value, int) else str(value)
            elif key == "other_config":
                spec.other_config = {str(k): str(v) for k, v in dict(value).items()}
            elif key != "count":
                raise ValueError(f"unknown VM parameter {key!r}")
        if spec.power_state not in POWER_STATES:
            raise ValueError(f"power_state must be one of {POWER_STATES}, not {spec.power_state!r}")
        if spec.ha_restart_priority not in HA_PRIORITIES:
            raise ValueError(f"ha_restart_priority must be one of {HA_PRIORITIES}")
        return spec


def int_param(name: str, value: object) -> int:
    """An XAPI int parameter: a decimal string on XML-RPC (or an <int> from lax clients), a number in JSON."""
    if isinstance(value, bool):
        raise XapiError(errors.FIELD_TYPE_ERROR, name)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise XapiError(errors.FIELD_TYPE_ERROR, name)


class SimPool:
    """A pool and everything in it; the unit of state, sessions, fault injection and call logging."""

    def __init__(
        self,
        name: str,
        *,
        version: str = "citrix-hypervisor-8.2",
        software_version: dict[str, Any] | None = None,
        jsonrpc: bool = True,
        credentials: dict[str, str] | None = None,
        ha_enabled: bool = False,
        ha_host_failures_to_tolerate: int = 1,
        ha_allow_overcommit: bool = False,
        time_scale: float = 1.0,
        vm_boot_seconds: float = 0.2,
        ha_retry_seconds: float = 2.0,
        dom0_memory: int = 4 * GIB,
        templates: Iterable[str] = ("Other install media", "CentOS 7", "Windows Server 2019 (64-bit)"),
        session_idle_timeout: float = 86400.0,
    ) -> None:
        self.name = name
        self.version = resolve_preset(version)
        self.software_version_overrides = dict(software_version or {})
        self.jsonrpc = jsonrpc
        self.credentials = dict(credentials or {"root": "password"})
        self.time_scale = float(time_scale)
        self.vm_boot_seconds = float(vm_boot_seconds)
        self.ha_retry_seconds = float(ha_retry_seconds)
        self.dom0_memory = dom0_memory
        self.session_idle_timeout = session_idle_timeout
        self.store = ObjectStore()
        self.hooks: EndpointHooks = _NoEndpoints()
        self.sessions: dict[str, Session] = {}
        self.call_log: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_LIMIT)
        self._call_seq = itertools.count(1)
        self._domids = itertools.count(1)
        self._vm_seq = itertools.count(1)  # `{n}` in VM name patterns: pool-wide, from 1
        self.latency = 0.0
        self._stall_until = 0.0
        self._stall_cleared = threading.Event()
        self._stall_cleared.set()
        self.dead_hosts: set[str] = set()
        self.stopping = threading.Event()
        self.stats: dict[str, int] = {
            "calls": 0,
            "xmlrpc_calls": 0,
            "jsonrpc_calls": 0,
            "failures": 0,
            "bytes_sent": 0,
            "mutations": 0,
            "ha_restarts": 0,
            "ha_restart_failures": 0,
        }
        self._used: dict[str, int] = {}  # host ref -> memory_static_max of VMs resident there
        self._spread = itertools.count()
        self._mutate_cursor = 0
        self.hosts: list[SimObject] = []
        self.pool_obj = self.store.add(
            "pool",
            new_ref(),
            records.pool_record(
                uuid_=new_uuid(),
                name_label=name,
                master=NULL_REF,
                ha_enabled=ha_enabled,
                ha_host_failures_to_tolerate=ha_host_failures_to_tolerate,
                ha_allow_overcommit=ha_allow_overcommit,
            ),
        )
        if ha_enabled:
            self.store.modify(self.pool_obj, {"ha_statefiles": [new_ref()]}, notify=False)
        for label in templates:
            self.store.add("VM", new_ref(), records.template_record(new_uuid(), label), notify=False)
        from xapi_sim.ha import HaEngine  # local import: ha.py depends on this module

        self.ha = HaEngine(self)

    # ------------------------------------------------------------------ building
    def add_host(self, name: str, memory: int = 256 * GIB, address: str = "127.0.0.1") -> SimObject:
        store = self.store
        with store.lock:
            host_ref, metrics_ref, dom0_ref = new_ref(), new_ref(), new_ref()
            software, api = software_version_for(self.version, name, self.software_version_overrides)
            host = store.add(
                "host",
                host_ref,
                records.host_record(
                    uuid_=new_uuid(),
                    hostname=name,
                    address=address,
                    metrics_ref=metrics_ref,
                    control_domain=dom0_ref,
                    software_version=software,
                    api_version=api,
                ),
                notify=False,
            )
            free = memory - self.dom0_memory - int(host.rec["memory_overhead"])
            store.add("host_metrics", metrics_ref, records.host_metrics_record(new_uuid(), memory, free), False)
            store.add("VM", dom0_ref, records.dom0_record(new_uuid(), host_ref, name, self.dom0_memory), False)
            store.modify(host, {"resident_VMs": [dom0_ref]}, notify=False)
            self._used[host_ref] = 0
            self.hosts.append(host)
            if self.pool_obj.rec["master"] == NULL_REF:
                store.modify(self.pool_obj, {"master": host_ref}, notify=False)
            store.notify()
            return host

    def add_vms(self, count: int, spec: VmSpec) -> list[SimObject]:
        """Bulk creation; one event per VM, host resident_VMs / memory updated once per host."""
        store = self.store
        created: list[SimObject] = []
        with store.lock:
            live = [h for h in self.hosts if self.is_host_live(h)] or self.hosts
            fixed = None if spec.resident == "spread" else self.resolve_host(spec.resident)
            running = spec.power_state in ("Running", "Paused")
            resident_add: dict[str, list[str]] = {}
            for i in range(count):
                host_ref = NULL_REF
                if running:
                    host_ref = (fixed or live[next(self._spread) % len(live)]).ref
                ref = new_ref()
                rec = records.vm_record(
                    uuid_=new_uuid(),
                    name_label=spec.name_pattern.format(n=next(self._vm_seq), i=i),
                    power_state=spec.power_state,
                    resident_on=host_ref,
                    memory=spec.memory,
                    vcpus=spec.vcpus,
                    ha_restart_priority=spec.ha_restart_priority,
                    order=spec.order,
                    start_delay=spec.start_delay,
                    domid=next(self._domids) if running else -1,
                    other_config=dict(spec.other_config) if spec.other_config else None,
                )
                created.append(store.add("VM", ref, rec, notify=False))
                if running:
                    resident_add.setdefault(host_ref, []).append(ref)
                    self._used[host_ref] += spec.memory
            for host_ref, refs in resident_add.items():
                host = store.by_ref[host_ref]
                store.modify(host, {"resident_VMs": [*host.rec["resident_VMs"], *refs]}, notify=False)
                self._refresh_free_memory(host_ref)
            store.notify()
        return created

    def set_host_address(self, host_ref: str, address: str) -> None:
        self.store.modify(self.store.get("host", host_ref), {"address": address})

    # ------------------------------------------------------------------ lookups
    @property
    def master_ref(self) -> str:
        return str(self.pool_obj.rec["master"])

    @property
    def master(self) -> SimObject:
        return self.store.by_ref[self.master_ref]

    def metrics_of(self, host: SimObject) -> SimObject:
        return self.store.by_ref[host.rec["metrics"]]

    def is_host_live(self, host: SimObject) -> bool:
        return host.ref not in self.dead_hosts and bool(self.metrics_of(host).rec["live"])

    def resolve_host(self, key: object) -> SimObject:
        """A host by ref, uuid, name or index (control interface and scenarios)."""
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(self.hosts):
            return self.hosts[key]
        if isinstance(key, str):
            for host in self.hosts:
                if key in (host.ref, host.rec["uuid"], host.rec["name_label"]):
                    return host
            if key.isdigit() and int(key) < len(self.hosts):
                return self.hosts[int(key)]
        raise XapiError(errors.HANDLE_INVALID, "host", key)

    def resolve_vm(self, key: object) -> SimObject:
        if isinstance(key, str):
            vms = self.store.by_class["VM"]
            obj = vms.get(key) or self.store.by_uuid["VM"].get(key)
            if obj is not None:
                return obj
            for vm in vms.values():
                if vm.rec["name_label"] == key:
                    return vm
        raise XapiError(errors.HANDLE_INVALID, "VM", key)

    def user_vms(self) -> list[SimObject]:
        """VMs a client must keep: not templates, snapshots or control domains."""
        return [vm for vm in self.store.all("VM") if is_user_vm(vm)]

    def vm_by_name(self, name: str) -> SimObject:
        for vm in self.store.all("VM"):
            if vm.rec["name_label"] == name:
                return vm
        raise KeyError(name)

    def host_address(self, host: SimObject) -> str:
        return str(host.rec["address"])

    def scaled(self, seconds: float) -> float:
        return max(0.0, seconds * self.time_scale)

    def sleep(self, seconds: float) -> bool:
        """Sleep simulated seconds; False when the simulator is stopping."""
        return not self.stopping.wait(self.scaled(seconds))

    # ------------------------------------------------------------------ sessions
    def login(
        self, host_ref: str, user: object, password: object, originator: str, wire: str, local: bool = False
    ) -> str:
        if not local and host_ref != self.master_ref:
            raise XapiError(errors.HOST_IS_SLAVE, self.host_address(self.master))
        if not isinstance(user, str) or not isinstance(password, str) or self.credentials.get(user) != password:
            raise XapiError(errors.SESSION_AUTHENTICATION_FAILED, user, "Authentication failure")
        now = time.time()
        session = Session(new_ref(), new_uuid(), user, originator, host_ref, wire, now, now, local)
        with self.store.lock:
            self.sessions[session.ref] = session
            mine = [s for s in self.sessions.values() if s.user == user]
            if len(mine) > SESSIONS_PER_USER:
                for old in sorted(mine, key=lambda s: s.last_active)[: len(mine) - SESSIONS_PER_USER]:
                    del self.sessions[old.ref]
                self.store.cond.notify_all()
        return session.ref

    def check_session(self, ref: object) -> Session:
        session = self.sessions.get(ref) if isinstance(ref, str) else None
        if session is None:
            raise XapiError(errors.SESSION_INVALID, ref)
        now = time.time()
        if now - session.last_active > self.session_idle_timeout:
            self.logout(session.ref)
            raise XapiError(errors.SESSION_INVALID, ref)
        session.last_active = now
        return session

    def logout(self, ref: str) -> None:
        with self.store.lock:
            if self.sessions.pop(ref, None) is not None:
                self.store.cond.notify_all()  # an event.from waiting on this session must fail now

    def expire_sessions(self) -> int:
        with self.store.lock:
            count = len(self.sessions)
            self.sessions.clear()
            self.store.cond.notify_all()
            return count

    # ------------------------------------------------------------------ call log, latency, stall
    def log_call(self, host_ref: str, method: str, session_ref: str, wire: str, outcome: str) -> None:
        session = self.sessions.get(session_ref)
        host = self.store.by_ref.get(host_ref)
        self.stats["calls"] += 1
        self.stats["xmlrpc_calls" if wire == "xmlrpc" else "jsonrpc_calls"] += 1
        if outcome != "ok":
            self.stats["failures"] += 1
        self.call_log.append(
            {
                "seq": next(self._call_seq),
                "time": time.time(),
                "host": host.rec["uuid"] if host is not None else "",
                "method": method,
                "session": session_ref,
                "user": session.user if session is not None else "",
                "originator": session.originator if session is not None else "",
                "wire": wire,
                "outcome": outcome,
            }
        )

    def calls_since(self, since: int = 0) -> list[dict[str, Any]]:
        return [entry for entry in list(self.call_log) if entry["seq"] > since]

    def set_latency(self, seconds: float) -> None:
        self.latency = max(0.0, float(seconds))

    def stall(self, seconds: float) -> None:
        """Hold every XAPI call for `seconds` (<= 0: until `unstall`)."""
        self._stall_until = float("inf") if seconds <= 0 else time.monotonic() + seconds
        self._stall_cleared.clear()

    def unstall(self) -> None:
        self._stall_until = 0.0
        self._stall_cleared.set()

    def delay_call(self) -> None:
        if self.latency:
            time.sleep(self.latency)
        while not self._stall_cleared.is_set():
            remaining = self._stall_until - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                break
            self._stall_cleared.wait(min(remaining, 1.0))

    # ------------------------------------------------------------------ memory and placement
    def usable_memory(self, host: SimObject) -> int:
        total = int(self.metrics_of(host).rec["memory_total"])
        return total - self.dom0_memory - int(host.rec["memory_overhead"])

    def free_memory(self, host: SimObject) -> int:
        return self.usable_memory(host) - self._used.get(host.ref, 0)

    def _refresh_free_memory(self, host_ref: str) -> None:
        host = self.store.by_ref[host_ref]
        metrics = self.metrics_of(host)
        free = self.free_memory(host)
        if metrics.rec["memory_free"] != free:
            self.store.modify(metrics, {"memory_free": free, "last_updated": records.XapiDateTime.now()}, False)

    def _pick_host(self, need: int) -> SimObject:
        best: SimObject | None = None
        best_free = -1
        for host in self.hosts:
            if not self.is_host_live(host) or not host.rec["enabled"]:
                continue
            free = self.free_memory(host)
            if free > best_free:
                best, best_free = host, free
        if best is None:
            raise XapiError(errors.HOST_OFFLINE, NULL_REF)
        if best_free < need:
            raise XapiError(errors.HOST_NOT_ENOUGH_FREE_MEMORY, need, max(best_free, 0))
        return best

    def _place(self, vm: SimObject, host: SimObject, power_state: str = "Running") -> None:
        """Make a VM resident on a host (caller holds the lock and checked memory)."""
        mem = int(vm.rec["memory_static_max"])
        self.store.modify(
            vm,
            {
                "power_state": power_state,
                "resident_on": host.ref,
                "scheduled_to_be_resident_on": NULL_REF,
                "domid": next(self._domids),
                "domarch": "x64",
                "memory_target": mem,
                "allowed_operations": records.vm_allowed_operations(power_state),
                "ha_always_run": vm.rec["ha_restart_priority"] == "restart",
                "consoles": vm.rec["consoles"] or [new_ref()],
                "guest_metrics": vm.rec["guest_metrics"] if vm.rec["guest_metrics"] != NULL_REF else new_ref(),
            },
            notify=False,
        )
        self._used[host.ref] = self._used.get(host.ref, 0) + mem
        self.store.modify(host, {"resident_VMs": [*host.rec["resident_VMs"], vm.ref]}, notify=False)
        self._refresh_free_memory(host.ref)

    def _unplace(self, vm: SimObject, power_state: str, ha_always_run: bool | None) -> None:
        """Take a VM off its host (caller holds the lock)."""
        host_ref = vm.rec["resident_on"]
        changes: dict[str, Any] = {
            "power_state": power_state,
            "resident_on": NULL_REF,
            "domid": -1,
            "memory_target": 0,
            "allowed_operations": records.vm_allowed_operations(power_state),
        }
        if ha_always_run is not None:
            changes["ha_always_run"] = ha_always_run
        self.store.modify(vm, changes, notify=False)
        host = self.store.by_ref.get(host_ref)
        # Only a VM counted on its host gives memory back (a record edited by sim.change_vm may not be).
        if host is not None and host.cls == "host" and vm.ref in host.rec["resident_VMs"]:
            self._used[host_ref] = self._used.get(host_ref, 0) - int(vm.rec["memory_static_max"])
            self.store.modify(host, {"resident_VMs": [r for r in host.rec["resident_VMs"] if r != vm.ref]}, False)
            self._refresh_free_memory(host_ref)

    # ------------------------------------------------------------------ VM operations
    def _assert_power(self, vm: SimObject, *expected: str) -> None:
        if vm.rec["is_a_template"]:
            raise XapiError(errors.VM_IS_TEMPLATE, vm.ref, "start")
        if vm.rec["is_control_domain"]:
            raise XapiError(errors.OPERATION_NOT_ALLOWED, "This operation is not allowed on a control domain")
        actual = vm.rec["power_state"]
        if actual not in expected:
            raise XapiError(errors.VM_BAD_POWER_STATE, vm.ref, expected[0].lower(), str(actual).lower())

    def start_vm(self, vm: SimObject, host: SimObject | None = None, paused: bool = False, boot: bool = True) -> None:
        with self.store.lock:
            self._assert_power(vm, "Halted")
            if host is not None and not self.is_host_live(host):
                raise XapiError(errors.HOST_OFFLINE, host.ref)
        if boot and self.vm_boot_seconds > 0:
            self.sleep(self.vm_boot_seconds)
        with self.store.lock:
            self._assert_power(vm, "Halted")
            need = int(vm.rec["memory_static_max"])
            if host is None:
                host = self._pick_host(need)
            elif not self.is_host_live(host):
                raise XapiError(errors.HOST_OFFLINE, host.ref)
            elif self.free_memory(host) < need:
                raise XapiError(errors.HOST_NOT_ENOUGH_FREE_MEMORY, need, max(self.free_memory(host), 0))
            self._place(vm, host, "Paused" if paused else "Running")
            self.store.notify()

    def shutdown_vm(self, vm: SimObject, hard: bool) -> None:
        with self.store.lock:
            allowed = ("Running", "Paused", "Suspended") if hard else ("Running",)
            self._assert_power(vm, *allowed)
            if vm.rec["power_state"] == "Suspended":
                self.store.modify(vm, {"power_state": "Halted", "ha_always_run": False}, notify=False)
            else:
                self._unplace(vm, "Halted", ha_always_run=False)
            self.store.notify()

    def reboot_vm(self, vm: SimObject, hard: bool) -> None:
        with self.store.lock:
            self._assert_power(vm, "Running", "Paused") if hard else self._assert_power(vm, "Running")
            self.store.modify(vm, {"domid": next(self._domids), "power_state": "Running"})

    def suspend_vm(self, vm: SimObject) -> None:
        with self.store.lock:
            self._assert_power(vm, "Running")
            self._unplace(vm, "Suspended", ha_always_run=False)
            self.store.modify(vm, {"suspend_VDI": new_ref()}, notify=False)
            self.store.notify()

    def resume_vm(self, vm: SimObject, host: SimObject | None = None, paused: bool = False) -> None:
        with self.store.lock:
            self._assert_power(vm, "Suspended")
            need = int(vm.rec["memory_static_max"])
            if host is None:
                host = self._pick_host(need)
            elif not self.is_host_live(host):
                raise XapiError(errors.HOST_OFFLINE, host.ref)
            self._place(vm, host, "Paused" if paused else "Running")
            self.store.modify(vm, {"suspend_VDI": NULL_REF}, notify=False)
            self.store.notify()

    def migrate_vm(self, vm: SimObject, host: SimObject) -> None:
        with self.store.lock:
            self._assert_power(vm, "Running")
            if not self.is_host_live(host):
                raise XapiError(errors.HOST_OFFLINE, host.ref)
            if vm.rec["resident_on"] == host.ref:
                return
            need = int(vm.rec["memory_static_max"])
            if self.free_memory(host) < need:
                raise XapiError(errors.HOST_NOT_ENOUGH_FREE_MEMORY, need, max(self.free_memory(host), 0))
            always = vm.rec["ha_always_run"]
            self._unplace(vm, "Halted", ha_always_run=None)
            self._place(vm, host)
            self.store.modify(vm, {"ha_always_run": always}, notify=False)
            self.store.notify()

    def clone_vm(self, vm: SimObject, new_name: str) -> SimObject:
        with self.store.lock:
            if vm.rec["is_control_domain"]:
                raise XapiError(errors.OPERATION_NOT_ALLOWED, "cannot clone a control domain")
            if vm.rec["power_state"] != "Halted":
                raise XapiError(errors.VM_BAD_POWER_STATE, vm.ref, "halted", str(vm.rec["power_state"]).lower())
            rec = dict(vm.rec)
            rec.update(
                {
                    "uuid": new_uuid(),
                    "name_label": new_name,
                    "is_a_template": False,
                    "is_default_template": False,
                    "allowed_operations": records.vm_allowed_operations("Halted"),
                    "VBDs": [new_ref(), new_ref()],
                    "VIFs": [new_ref()],
                    "metrics": new_ref(),
                    "snapshots": [],
                    "other_config": {k: v for k, v in vm.rec["other_config"].items() if k != "default_template"},
                }
            )
            return self.store.add("VM", new_ref(), rec)

    def create_vm(self, fields: dict[str, Any]) -> SimObject:
        rec = records.vm_record(uuid_=new_uuid(), name_label=str(fields.get("name_label", "")))
        for key, value in fields.items():
            if key not in rec:
                continue
            if key in ("power_state", "resident_on", "uuid", "domid"):
                continue  # a new VM is always Halted
            current = rec[key]
            if isinstance(current, int) and not isinstance(current, bool):
                value = int_param(key, value)
            rec[key] = value
        if rec["ha_restart_priority"] not in HA_PRIORITIES:
            raise XapiError(errors.INVALID_VALUE, "ha_restart_priority", rec["ha_restart_priority"])
        return self.store.add("VM", new_ref(), rec)

    def destroy_vm(self, vm: SimObject) -> None:
        with self.store.lock:
            if vm.rec["is_control_domain"]:
                raise XapiError(errors.OPERATION_NOT_ALLOWED, "cannot destroy a control domain")
            if vm.rec["power_state"] not in ("Halted", "Suspended"):
                raise XapiError(errors.VM_BAD_POWER_STATE, vm.ref, "halted", str(vm.rec["power_state"]).lower())
            self.store.delete(vm)

    # ------------------------------------------------------------------ HA configuration
    def _protected(self, vm: SimObject) -> bool:
        return bool(vm.rec["ha_always_run"]) and vm.rec["ha_restart_priority"] == "restart"

    def plan_max_failures(self, extra: SimObject | None = None) -> int:
        """How many host failures the protected VMs survive: the largest n for which their memory still fits on
        the live hosts minus the n biggest ones.

        A capacity-only plan (no bin packing; unprotected VMs may be sacrificed); -1 when not even 0 failures
        have a plan. `extra` counts one more VM as protected (the check before set_ha_restart_priority).
        """
        need = sum(
            int(vm.rec["memory_static_max"])
            for vm in self.store.by_class["VM"].values()
            if is_user_vm(vm) and vm.rec["power_state"] != "Halted" and (self._protected(vm) or vm is extra)
        )
        capacities = sorted(self.usable_memory(h) for h in self.hosts if self.is_host_live(h))
        for failures in range(len(capacities) - 1, -1, -1):
            if sum(capacities[: len(capacities) - failures]) >= need:
                return failures
        return -1

    def refresh_ha_plan(self) -> None:
        with self.store.lock:
            rec = self.pool_obj.rec
            if not rec["ha_enabled"]:
                changes: dict[str, Any] = {"ha_plan_exists_for": 0, "ha_overcommitted": False}
            else:
                tolerate = int(rec["ha_host_failures_to_tolerate"])
                plan = min(max(self.plan_max_failures(), 0), tolerate)
                changes = {"ha_plan_exists_for": plan, "ha_overcommitted": plan < tolerate}
            if any(rec[k] != v for k, v in changes.items()):
                self.store.modify(self.pool_obj, changes)

    def _would_break_plan(self, vm: SimObject | None) -> bool:
        rec = self.pool_obj.rec
        if not rec["ha_enabled"] or rec["ha_allow_overcommit"]:
            return False
        return self.plan_max_failures(vm) < int(rec["ha_host_failures_to_tolerate"])

    def set_ha_restart_priority(self, vm: SimObject, value: object) -> None:
        if value not in HA_PRIORITIES:
            raise XapiError(errors.INVALID_VALUE, "ha_restart_priority", value)
        with self.store.lock:
            halted = vm.rec["power_state"] == "Halted"
            if value == "restart" and not halted and not self._protected(vm) and self._would_break_plan(vm):
                raise XapiError(errors.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)
            changes: dict[str, Any] = {"ha_restart_priority": value}
            if not halted:
                changes["ha_always_run"] = value == "restart"
            self.store.modify(vm, changes)
        self.refresh_ha_plan()

    def set_vm_int(self, vm: SimObject, field_name: str, value: object) -> None:
        number = int_param(field_name, value)
        if number < 0:
            raise XapiError(errors.INVALID_VALUE, field_name, value)
        self.store.modify(vm, {field_name: number})

    def enable_ha(self, heartbeat_srs: list[Any], configuration: dict[str, Any]) -> None:
        with self.store.lock:
            if self.pool_obj.rec["ha_enabled"]:
                raise XapiError(errors.HA_IS_ENABLED)
            statefiles = [new_ref()]
            self.store.modify(
                self.pool_obj,
                {"ha_enabled": True, "ha_statefiles": statefiles, "ha_configuration": dict(configuration)},
            )
            for host in self.hosts:
                self.store.modify(host, {"ha_statefiles": statefiles, "ha_network_peers": [h.ref for h in self.hosts]})
        self.refresh_ha_plan()

    def disable_ha(self) -> None:
        with self.store.lock:
            if not self.pool_obj.rec["ha_enabled"]:
                raise XapiError(errors.HA_NOT_ENABLED)
            self.store.modify(self.pool_obj, {"ha_enabled": False, "ha_statefiles": [], "ha_configuration": {}})
            for host in self.hosts:
                self.store.modify(host, {"ha_statefiles": [], "ha_network_peers": []})
        self.refresh_ha_plan()

    def set_ha_host_failures_to_tolerate(self, value: object) -> None:
        number = int_param("value", value)
        if number < 0:
            raise XapiError(errors.INVALID_VALUE, "ha_host_failures_to_tolerate", value)
        with self.store.lock:
            rec = self.pool_obj.rec
            if rec["ha_enabled"] and not rec["ha_allow_overcommit"] and self.plan_max_failures() < number:
                raise XapiError(errors.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)
            self.store.modify(self.pool_obj, {"ha_host_failures_to_tolerate": number})
        self.refresh_ha_plan()

    # ------------------------------------------------------------------ messages
    def add_message(self, name: str, priority: int, cls: str, obj_uuid: str, body: str) -> SimObject:
        rec = records.message_record(
            uuid_=new_uuid(), name=name, priority=priority, cls=cls, obj_uuid=obj_uuid, body=body
        )
        return self.store.add("message", new_ref(), rec)

    def messages(self, name: str | None = None) -> list[SimObject]:
        return [m for m in self.store.all("message") if name is None or m.rec["name"] == name]

    # ------------------------------------------------------------------ faults
    def crash_host(self, host: SimObject) -> None:
        """The host dies: its endpoint goes away; with pool HA the survivors fail its VMs over."""
        with self.store.lock:
            if host.ref in self.dead_hosts:
                return
            self.dead_hosts.add(host.ref)
        self.hooks.host_down(host.ref)
        self.ha.host_failed(host)

    def restore_host(self, host: SimObject) -> None:
        with self.store.lock:
            if host.ref not in self.dead_hosts:
                return
            self.dead_hosts.discard(host.ref)
            metrics = self.metrics_of(host)
            self.store.modify(metrics, {"live": True, "last_updated": records.XapiDateTime.now()})
        self.hooks.host_up(host.ref)
        self.refresh_ha_plan()

    def failover_master(self, new_master: SimObject) -> None:
        """Make another host the master: sessions and event tokens of the old master are gone."""
        with self.store.lock:
            if new_master.ref in self.dead_hosts:
                raise XapiError(errors.HOST_OFFLINE, new_master.ref)
            if new_master.ref != self.master_ref:
                self.store.modify(self.pool_obj, {"master": new_master.ref})
                self.xapi_restarted()

    def xapi_restarted(self) -> None:
        """What clients see after xapi restarts: every session and event token is gone."""
        self.expire_sessions()
        self.store.invalidate_tokens()

    def serve_malformed(self, vm: SimObject, kind: str) -> None:
        if kind in ("", "none", "clear"):
            vm.malformed = None
        elif kind in MALFORMED_KINDS:
            vm.malformed = kind
        else:
            raise XapiError(errors.INVALID_VALUE, "kind", kind)
        self.store.modify(vm, {})  # a mod event, and a fresh record object so no stale fragment is cached

    def change_vm(self, vm: SimObject, field_name: str, value: Any) -> None:
        """Set any field directly (no validation): a change someone made in XenCenter, or a broken value."""
        if field_name not in vm.rec:
            raise XapiError(errors.INVALID_VALUE, "field", field_name)
        with self.store.lock:
            if field_name in ("power_state", "resident_on"):
                # Keep host memory / resident_VMs consistent with what the record now says.
                state = value if field_name == "power_state" else vm.rec["power_state"]
                where = value if field_name == "resident_on" else vm.rec["resident_on"]
                always = vm.rec["ha_always_run"]
                self._unplace(vm, str(vm.rec["power_state"]), ha_always_run=None)
                if where != NULL_REF and state in ("Running", "Paused"):
                    self._place(vm, self.store.get("host", where), str(state))
                self.store.modify(vm, {"power_state": state, "resident_on": where, "ha_always_run": always})
            else:
                self.store.modify(vm, {field_name: value})

    def mutate_vms(self, count: int, kind: str = "other_config", vms: list[SimObject] | None = None) -> int:
        """Change `count` user VMs (round-robin), one mod event each: the benchmark's event source."""
        if vms is None:
            vms = [vm for vm in self.store.all("VM") if is_user_vm(vm)]
        if not vms:
            return 0
        done = 0
        with self.store.lock:
            for _ in range(count):
                vm = vms[self._mutate_cursor % len(vms)]
                self._mutate_cursor += 1
                if self.store.by_ref.get(vm.ref) is not vm:
                    continue  # destroyed since the list was taken
                self.stats["mutations"] += 1
                if kind == "power_state" and vm.rec["power_state"] == "Running":
                    self._unplace(vm, "Halted", ha_always_run=None)
                elif kind == "power_state" and vm.rec["power_state"] == "Halted":
                    live = [h for h in self.hosts if self.is_host_live(h)]
                    if live:
                        self._place(vm, live[self._mutate_cursor % len(live)])
                        self.store.modify(vm, {"ha_always_run": vm.rec["ha_always_run"]}, notify=False)
                else:
                    other = dict(vm.rec["other_config"])
                    other["xsha-sim-mutation"] = str(self.stats["mutations"])
                    self.store.modify(vm, {"other_config": other}, notify=False)
                done += 1
            self.store.notify()
        return done

    def mutate_vms_at_rate(self, count: int, rate: float, kind: str = "other_config") -> None:
        """Spread `count` changes at `rate` per second in the background, in batches at least 10 ms apart.

        The thread sleeps until the next change is due rather than waking every 10 ms: figure 7 runs one such thread
        per pool at 1 change/s, and 200 threads polling at 100 Hz cost the simulator most of a core on the cores
        sync_service is measured on."""

        def run() -> None:
            vms = [vm for vm in self.store.all("VM") if is_user_vm(vm)]  # once, not per batch
            start = time.monotonic()
            done = 0
            while done < count and not self.stopping.is_set():
                due = min(count, int((time.monotonic() - start) * rate) + 1) - done
                if due > 0:
                    self.mutate_vms(due, kind, vms)
                    done += due
                    if done >= count:
                        break
                next_due = start + done / rate
                self.stopping.wait(max(MUTATE_BATCH_INTERVAL_S, next_due - time.monotonic()))

        threading.Thread(target=run, name=f"xapi-sim-mutate-{self.name}", daemon=True).start()

    def summary(self) -> dict[str, Any]:
        vms = self.store.by_class["VM"].values()
        return {
            "name": self.name,
            "version": self.version,
            "jsonrpc": self.jsonrpc,
            "hosts": len(self.hosts),
            "dead_hosts": len(self.dead_hosts),
            "vms": sum(1 for vm in vms if is_user_vm(vm)),
            "vm_objects": len(self.store.by_class["VM"]),
            "messages": len(self.store.by_class["message"]),
            "sessions": len(self.sessions),
            "generation": self.store.gen,
            "changes_made": self.store.changes_made,
            "time_scale": self.time_scale,
            **self.stats,
        }

    def run_later(self, fn: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=fn, name=f"xapi-sim-{name}-{self.name}", daemon=True)
        thread.start()
        return thread


def is_user_vm(vm: SimObject) -> bool:
    rec = vm.rec
    return not (rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"])
