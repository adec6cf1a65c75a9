"""The randomized fault run: seeded rounds of faults against the whole stack, invariants checked after each round.

Three pools: a XenServer 6.1 pool (cluster ``cs61``, CLOUDSTACK mode by the version gate, XML-RPC) and two native
HA pools (``nat1`` Citrix Hypervisor 8.2, ``nat2`` XCP-ng 8.2, JSON-RPC), a few hundred VMs. Each round applies one to
three faults (host crash, master failover, session expiry, token invalidation, dropped XAPI connections, a real
database cut, a stalled ha->sync link, kill -9 of either service, VM changes behind xsha's back), then clears them
(the orchestrator carries out RESTART_VM actions and acknowledges them, crashed hosts come back) and checks:

- mirror == xapi_sim's truth for every VM, host and pool;
- a WatchChanges and a WatchHaEvents client, resuming from their last revision, saw every change / event once, in
  order, up to the latest revision the lists report;
- exactly one RESTART_VM per HA VM of the CLOUDSTACK cluster per death while wanted running, none in NATIVE ones;
- no VM power operation from sync_service's XAPI sessions; no mode flip of a pinned cluster;
- no service exited by itself; both serve health.

`run_fault_rounds` is what the pytest test and `python -m tests.reliability.soak` call.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import XenAPI

from sync_service.testing import WatchRecorder, mirror_diff
from sync_service.xapi.allowed import VM_POWER_OPERATIONS, canonical_method
from tests.reliability.stack import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    CREDENTIALS,
    SYNC_ORIGINATOR,
    XSHA_USER,
    ChildStack,
    DatabaseTarget,
    wait_for,
)
from xapi_sim.pool import SimPool
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.testing import ResumingStreamRecorder

NULL_REF = "OpaqueRef:NULL"
POWER_OPERATIONS = frozenset(VM_POWER_OPERATIONS | {"VM.start_on", "VM.resume_on", "VM.pool_migrate"})
CLOUDSTACK_CLUSTER = "cs61"
NATIVE_CLUSTERS = ("nat1", "nat2")
CLUSTERS = {"cs61": "xs61", "nat1": "xs82", "nat2": "xcp82"}
NAME_PREFIX = {"cs61": "i-5-", "nat1": "i-2-", "nat2": "i-3-"}

FAULT_KINDS = (
    "host_crash",
    "master_failover",
    "session_expiry",
    "token_invalidation",
    "dropped_connections",
    "db_cut",
    "link_stall",
    "kill_sync",
    "kill_ha",
    "vm_changes",
)
INVARIANTS = (
    "mirror_equals_truth",
    "watch_changes_exactly_once",
    "watch_ha_events_exactly_once",
    "restart_vm_exactly_once",
    "no_restart_in_native",
    "no_power_op_from_sync",
    "no_pinned_mode_flip",
    "no_self_crash",
)
RESTART_VM = ha_service_pb2.HA_ACTION_KIND_RESTART_VM
PENDING = ha_service_pb2.HA_ACTION_STATE_PENDING


@dataclass(frozen=True)
class RunConfig:
    seed: int
    rounds: int = 30
    vms_per_pool: int = 100
    ha_vms_per_pool: int = 10
    db_cut_seconds: float = 2.5
    stall_seconds: float = 2.0
    converge_timeout: float = 60.0
    # Both services' lease period (sync_service's pool leases, ha_service's controller lease): twice a database
    # cut, so a cut never costs a lease, yet a killed service's successor takes over in seconds (default 10 s).
    lease_seconds: float = 6.0
    max_minutes: float = 0.0  # soak: keep going until this much time passed (0: exactly `rounds`)


@dataclass
class RunSummary:
    seed: int
    backend: str
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    invariants: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    changes_seen: int = 0
    ha_events_seen: int = 0
    restart_actions: int = 0
    service_kills: str = ""

    def lines(self) -> list[str]:
        faults = ", ".join(f"{kind}={self.faults[kind]}" for kind in sorted(self.faults))
        checks = ", ".join(f"{name}={self.invariants[name]}" for name in INVARIANTS)
        lines = [
            f"seed: {self.seed} (XSHA_FAULT_SEED={self.seed} reproduces the schedule)  database: {self.backend}",
            f"rounds: {self.rounds} in {self.seconds:.1f}s",
            f"faults by kind ({sum(self.faults.values())}): {faults}",
            f"invariants checked ({sum(self.invariants.values())}): {checks}",
            f"mirror changes watched: {self.changes_seen}, HA events watched: {self.ha_events_seen}, "
            f"RESTART_VM actions carried out: {self.restart_actions}",
            f"services: {self.service_kills}",
            f"violations: {len(self.violations)}",
        ]
        lines.extend(f"  - {v}" for v in self.violations[:50])
        return lines


def native_ha_request(enabled: bool) -> ha_service_pb2.UpdateSettingsRequest:
    request = ha_service_pb2.UpdateSettingsRequest()
    getattr(request, "global").native_ha_enabled = enabled  # `global` is a Python keyword
    return request


def scenario(vms_per_pool: int) -> dict[str, Any]:
    def pool(name: str, version: str, prefix: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "credentials": dict(CREDENTIALS),
            "hosts": {"count": 3, "memory_gib": 256},
            "vms": [{"count": vms_per_pool, "name_pattern": prefix + "{n}-VM", "memory_gib": 1}],
            **extra,
        }

    return {
        "time_scale": 0.01,
        "vm_boot_seconds": 0.1,
        "pools": [
            pool("xs61", "xenserver-6.1", NAME_PREFIX["cs61"], jsonrpc=False),
            pool("xs82", "citrix-hypervisor-8.2", NAME_PREFIX["nat1"], ha_enabled=True),
            pool("xcp82", "xcp-ng-8.2", NAME_PREFIX["nat2"], ha_enabled=True),
        ],
    }


# ------------------------------------------------------------------------------------------ HA events recorder


def _ha_event_of(message: ha_service_pb2.WatchHaEventsResponse) -> tuple[ha_service_pb2.HaEvent | None, int]:
    if message.HasField("event"):
        # A redelivered event (re-sent after a restart) proves nothing about the position.
        return message.event, 0 if message.event.redelivered else message.event.revision
    return None, message.bookmark.revision


class HaEventRecorder(ResumingStreamRecorder[ha_service_pb2.HaEvent]):
    """Follows WatchHaEvents from a revision, resuming from the last one seen whenever the stream breaks."""

    def __init__(self, stack: ChildStack, since_revision: int) -> None:
        def open_stream(position: int) -> Any:
            request = ha_service_pb2.WatchHaEventsRequest(since_revision=position)
            request.bookmark_interval.FromMilliseconds(200)
            return stack.ha.stub.WatchHaEvents(request, metadata=stack.ha.metadata)

        super().__init__(open_stream, _ha_event_of, since_revision, name="ha-event-recorder")

    @property
    def events(self) -> list[ha_service_pb2.HaEvent]:
        return self.items


# --------------------------------------------------------------------------------------------------- the run


class FaultRun:
    def __init__(self, stack: ChildStack, config: RunConfig, log: Callable[[str], None] = print) -> None:
        self.stack = stack
        self.config = config
        self.rng = random.Random(config.seed)
        self.log = log
        self.summary = RunSummary(seed=config.seed, backend=stack.db.backend)
        self.ha_vms: dict[str, list[str]] = {}  # cluster -> managed HA VM names
        self.managed: set[tuple[str, str]] = set()
        self.expected_restarts: Counter[str] = Counter()  # cs61 VM name -> deaths while wanted running
        self.initial_modes: dict[str, tuple[int, int]] = {}
        self.call_marks: dict[str, int] = {}
        self.sync_calls_seen = 0
        self._admin_sessions: dict[str, Any] = {}
        self.changes: WatchRecorder | None = None
        self.events: HaEventRecorder | None = None
        self._extra_vm = 0

    # --- helpers ------------------------------------------------------------------------------------------------

    def pool(self, cluster: str) -> SimPool:
        return self.stack.sim.pool(CLUSTERS[cluster])

    def violation(self, text: str) -> None:
        self.log(f"VIOLATION: {text}")
        self.summary.violations.append(text)

    def ha_call(self, method: str, request: Any) -> Any:
        return wait_for(lambda: self.stack.ha.call(method, request), 60, what=f"ha_service {method}")

    # --- setup --------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        self.stack.register_pools(CLUSTERS)
        # Native HA on globally: cs61 stays CLOUDSTACK (version gate), nat1/nat2 become NATIVE and get pinned.
        self.ha_call(
            "UpdateSettings",
            native_ha_request(True),
        )
        for cluster in CLUSTERS:
            names = [f"{NAME_PREFIX[cluster]}{n}-VM" for n in range(1, self.config.ha_vms_per_pool + 1)]
            self.ha_vms[cluster] = names
            for name in names:
                self.decide(cluster, name, ha=True)
            for n in range(self.config.ha_vms_per_pool + 1, self.config.ha_vms_per_pool + 4):
                self.decide(cluster, f"{NAME_PREFIX[cluster]}{n}-VM", ha=False)
        for name in self.ha_vms[CLOUDSTACK_CLUSTER]:
            self.ha_call(
                "SetVmWantedState",
                ha_service_pb2.SetVmWantedStateRequest(
                    cluster_id=CLOUDSTACK_CLUSTER,
                    instance_name=name,
                    wanted_state=ha_service_pb2.WANTED_STATE_RUNNING,
                    request_id=f"wanted-{name}",
                ),
            )
        for cluster, names in self.ha_vms.items():
            for name in names:
                wait_for(lambda c=cluster, n=name: self.bound(c, n), 60, what=f"{name} bound in {cluster}")
        for cluster in CLUSTERS:
            status = self.ha_call(
                "GetClusterHaStatus", ha_service_pb2.GetClusterHaStatusRequest(cluster_id=cluster)
            ).status
            self.initial_modes[cluster] = (status.effective_mode, status.pinned_mode)
        expected = {"cs61": common_pb2.HA_MODE_CLOUDSTACK, "nat1": common_pb2.HA_MODE_NATIVE}
        for cluster, mode in expected.items():
            if self.initial_modes[cluster][0] != mode:
                raise AssertionError(f"{cluster} starts in mode {self.initial_modes[cluster]}, expected {mode}")
        self.call_marks = {name: 0 for name in self.stack.sim.pools}
        _, revision = self.stack.sync.list_all_vms()
        self.changes = WatchRecorder(lambda: self.stack.sync, revision)  # type: ignore[arg-type,return-value]
        _, ha_revision = self.stack.ha.all_actions()
        self.events = HaEventRecorder(self.stack, ha_revision)

    def decide(self, cluster: str, name: str, *, ha: bool) -> None:
        self.ha_call(
            "DecideVmDeployment",
            ha_service_pb2.DecideVmDeploymentRequest(
                cluster_id=cluster,
                instance_name=name,
                vm_type=common_pb2.VM_TYPE_USER,
                offering_ha_enabled=ha,
                request_id=f"decide-{cluster}-{name}",
            ),
        )
        self.managed.add((cluster, name))

    def bound(self, cluster: str, name: str) -> bool:
        vm = self.stack.ha.call(
            "GetManagedVm", ha_service_pb2.GetManagedVmRequest(cluster_id=cluster, instance_name=name)
        ).vm
        return bool(
            vm.present_on_hypervisor
            and vm.protection_state
            in (ha_service_pb2.PROTECTION_STATE_PROTECTED, ha_service_pb2.PROTECTION_STATE_NOT_APPLICABLE)
            and vm.observed_ha_restart_priority == vm.decision.ha_restart_priority
        )

    def admin(self, cluster: str) -> Any:
        """A XenAPI session of "someone else" (the orchestrator, XenCenter) on the pool's current master."""
        session = self._admin_sessions.get(cluster)
        if session is not None:
            try:
                session.xenapi.pool.get_all()
                return session
            except Exception:
                self._admin_sessions.pop(cluster, None)
        pool = self.pool(cluster)
        session = XenAPI.Session(self.stack.sim.host_url(CLUSTERS[cluster], pool.master.rec["name_label"]))
        session.xenapi.login_with_password(ADMIN_USER, ADMIN_PASSWORD, "1.0", "reliability-orchestrator")
        self._admin_sessions[cluster] = session
        return session

    # --- faults -------------------------------------------------------------------------------------------------

    def schedule(self, round_index: int) -> list[str]:
        """1-3 fault kinds; the first rounds cover every kind once (seeded order)."""
        if round_index == 0:
            self._coverage = list(FAULT_KINDS)
            self.rng.shuffle(self._coverage)
        kinds: list[str] = []
        if round_index < len(self._coverage):
            kinds.append(self._coverage[round_index])
        extra = self.rng.randint(0 if kinds else 1, 2)
        for kind in self.rng.sample(FAULT_KINDS, len(FAULT_KINDS)):
            if len(kinds) >= len(kinds[:1]) + extra:
                break
            if kind not in kinds:
                kinds.append(kind)
        return kinds

    def run_round(self, round_index: int) -> None:
        kinds = self.schedule(round_index)
        self.log(f"round {round_index + 1}: {', '.join(kinds)}")
        crashed: list[tuple[str, Any]] = []
        background: list[threading.Thread] = []
        for kind in kinds:
            self.summary.faults[kind] += 1
            if kind == "db_cut":
                background.append(self._background(lambda: self.stack.db.cut(self.config.db_cut_seconds)))
            elif kind == "link_stall":
                background.append(self._background(self._stall_link))
        for kind in kinds:
            if kind == "host_crash":
                crashed.extend(self.crash_hosts())
            elif kind == "master_failover":
                self.failover_master()
            elif kind in ("session_expiry", "token_invalidation", "dropped_connections"):
                self.xapi_fault(kind)
            elif kind == "kill_sync":
                self.stack.kill_sync()
                time.sleep(self.rng.uniform(0, 0.5))
                self.stack.start_sync()
            elif kind == "kill_ha":
                self.stack.kill_ha()
                time.sleep(self.rng.uniform(0, 0.5))
                self.stack.start_ha()
            elif kind == "vm_changes":
                self.vm_changes()
        self.probe_changes(round_index * 2 + 1)  # during the faults: must arrive once they are over
        for thread in background:
            thread.join(60)
        # Faults cleared: the orchestrator acts on what ha_service asked for, dead hosts come back.
        self.carry_out_restarts()
        for cluster, host in crashed:
            self.pool(cluster).restore_host(host)
            self.summary.faults["host_restore"] += 1
        self.probe_changes(round_index * 2 + 2)  # after them: the watchers must be following again
        self.check_invariants()
        self.summary.rounds += 1

    def probe_changes(self, value: int) -> None:
        """A XenCenter-style edit in every pool that the mirror only shows if its watcher follows the stream."""
        for cluster in CLUSTERS:
            pool = self.pool(cluster)
            unmanaged = [vm for vm in pool.user_vms() if (cluster, vm.rec["name_label"]) not in self.managed]
            pool.change_vm(self.rng.choice(unmanaged), "start_delay", 1000 + value)

    def _background(self, action: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        return thread

    def _stall_link(self) -> None:
        self.stack.link.stall()
        try:
            time.sleep(self.config.stall_seconds)
        finally:
            self.stack.link.restore()

    def live_hosts(self, pool: SimPool) -> list[Any]:
        return [h for h in pool.hosts if pool.is_host_live(h)]

    def crash_hosts(self) -> list[tuple[str, Any]]:
        cluster = self.rng.choice(list(CLUSTERS))
        pool = self.pool(cluster)
        live = self.live_hosts(pool)
        if len(live) < 3:
            return []
        if cluster == CLOUDSTACK_CLUSTER:
            # Without pool HA a dead master has no successor: crash a member (CloudStack fences it).
            live = [h for h in live if h.ref != pool.master_ref]
        host = self.rng.choice(live)
        if cluster == CLOUDSTACK_CLUSTER:
            with pool.store.lock:
                for name in self.ha_vms[cluster]:
                    rec = pool.vm_by_name(name).rec
                    if rec["resident_on"] == host.ref and rec["power_state"] == "Running":
                        self.expected_restarts[name] += 1
        self.log(f"  crash {host.rec['name_label']} of {cluster}")
        pool.crash_host(host)
        return [(cluster, host)]

    def failover_master(self) -> None:
        cluster = self.rng.choice(list(CLUSTERS))
        pool = self.pool(cluster)
        others = [h for h in self.live_hosts(pool) if h.ref != pool.master_ref]
        if others:
            pool.failover_master(self.rng.choice(others))
            self._admin_sessions.pop(cluster, None)

    def xapi_fault(self, kind: str) -> None:
        for cluster in self.rng.sample(list(CLUSTERS), self.rng.randint(1, len(CLUSTERS))):
            pool = self.pool(cluster)
            if kind == "session_expiry":
                pool.expire_sessions()
                self._admin_sessions.pop(cluster, None)
            elif kind == "token_invalidation":
                pool.store.invalidate_tokens()
            else:
                pool.hooks.drop_connections()

    def vm_changes(self) -> None:
        """Changes behind xsha's back: XenCenter edits, power changes of unmanaged VMs, a VM created and one
        destroyed, and drift of a protected VM's HA config (ha_service repairs it)."""
        for cluster in CLUSTERS:
            pool = self.pool(cluster)
            unmanaged = [vm for vm in pool.user_vms() if (cluster, vm.rec["name_label"]) not in self.managed]
            for vm in self.rng.sample(unmanaged, min(5, len(unmanaged))):
                action = self.rng.choice(["other_config", "power", "start_delay"])
                with contextlib.suppress(Exception):  # a VM on a dead host, no room: XAPI says no, as it would
                    if action == "power" and vm.rec["power_state"] == "Running":
                        pool.shutdown_vm(vm, hard=True)
                    elif action == "power" and vm.rec["power_state"] == "Halted":
                        pool.start_vm(vm, boot=False)
                    elif action == "start_delay":
                        pool.change_vm(vm, "start_delay", self.rng.randint(0, 30))
                    else:
                        pool.mutate_vms(1, "other_config", [vm])
            self._extra_vm += 1
            session = self.admin(cluster)
            session.xenapi.VM.clone(self._a_template(cluster), f"x-{cluster}-{self._extra_vm}-VM")
            self.summary.faults["vm_created"] += 1
            halted = [vm for vm in unmanaged if vm.rec["power_state"] == "Halted"]
            if halted and self.rng.random() < 0.5:
                victim = self.rng.choice(halted)
                session.xenapi.VM.destroy(session.xenapi.VM.get_by_uuid(victim.uuid))
                self.summary.faults["vm_destroyed"] += 1
        cluster = self.rng.choice(list(NATIVE_CLUSTERS))
        name = self.rng.choice(self.ha_vms[cluster])
        pool = self.pool(cluster)
        vm = pool.vm_by_name(name)
        if vm.rec["power_state"] == "Running":
            pool.change_vm(vm, "ha_restart_priority", "")
            self.summary.faults["ha_config_drift"] += 1

    def _a_template(self, cluster: str) -> str:
        session = self.admin(cluster)
        for ref, rec in session.xenapi.VM.get_all_records().items():
            if rec["is_a_template"] and not rec["is_a_snapshot"]:
                return str(ref)
        raise AssertionError("no template")

    # --- clearing -----------------------------------------------------------------------------------------------

    def carry_out_restarts(self) -> None:
        """The orchestrator's part for the CLOUDSTACK cluster: wait for one RESTART_VM per VM that died, fence and
        reset, start it on a live host, acknowledge."""
        expected_total = sum(self.expected_restarts.values())

        def restart_actions() -> tuple[list[ha_service_pb2.HaAction]] | None:
            actions, _ = self.stack.ha.all_actions()
            restarts = [a for a in actions if a.kind == RESTART_VM and a.cluster_id == CLOUDSTACK_CLUSTER]
            return (restarts,) if len(restarts) >= expected_total else None

        try:
            (actions,) = wait_for(restart_actions, self.config.converge_timeout, what="a RESTART_VM per dead HA VM")
        except AssertionError as error:
            self.violation(f"restart_vm_exactly_once: {error}")
            return
        pool = self.pool(CLOUDSTACK_CLUSTER)
        for action in actions:
            if action.state != PENDING:
                continue
            vm = pool.vm_by_name(action.instance_name)
            with pool.store.lock:
                dead = vm.rec["resident_on"] != NULL_REF and vm.rec["resident_on"] in pool.dead_hosts
            if dead or vm.rec["power_state"] == "Halted":
                if dead:  # fence the host, reset the VM's power state (xe vm-reset-powerstate)
                    pool.change_vm(vm, "power_state", "Halted")
                    pool.change_vm(vm, "resident_on", NULL_REF)
                target = self.rng.choice(self.live_hosts(pool))
                session = self.admin(CLOUDSTACK_CLUSTER)
                session.xenapi.VM.start_on(
                    session.xenapi.VM.get_by_uuid(vm.uuid), session.xenapi.host.get_by_uuid(target.uuid), False, False
                )
                host_uuid = target.uuid
                outcome = ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
            else:
                host_uuid = ""
                outcome = ha_service_pb2.HA_ACTION_STATE_SKIPPED

            def observed(name: str = action.instance_name, host: str = host_uuid) -> bool:
                vm = self.stack.ha.call(
                    "GetManagedVm",
                    ha_service_pb2.GetManagedVmRequest(cluster_id=CLOUDSTACK_CLUSTER, instance_name=name),
                ).vm
                return bool(
                    vm.observed_power_state == common_pb2.XAPI_POWER_STATE_RUNNING
                    and (not host or vm.observed_host_uuid == host)
                )

            wait_for(observed, self.config.converge_timeout, what=f"{action.instance_name} running again, observed")
            self.ha_call(
                "AckHaAction",
                ha_service_pb2.AckHaActionRequest(
                    action_id=action.action_id, outcome=outcome, message="restarted by the reliability harness"
                ),
            )
            self.summary.restart_actions += 1

    # --- invariants ---------------------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        checks = self.summary.invariants
        for cluster in CLUSTERS:
            problems = self._converged(cluster)
            if problems:
                self.violation(f"mirror_equals_truth {cluster}: " + "; ".join(problems[:5]))
            checks["mirror_equals_truth"] += 1
        self._check_changes_watch()
        checks["watch_changes_exactly_once"] += 1
        self._check_ha_events_watch()
        checks["watch_ha_events_exactly_once"] += 1
        self._check_restart_actions()
        checks["restart_vm_exactly_once"] += 1
        checks["no_restart_in_native"] += 1
        self._check_power_operations()
        checks["no_power_op_from_sync"] += 1
        self._check_modes()
        checks["no_pinned_mode_flip"] += 1
        exits = self.stack.check_alive()
        if exits or not self.stack.healthy():
            self.violation(f"no_self_crash: {exits or 'a service does not serve health'}")
        checks["no_self_crash"] += 1

    def _converged(self, cluster: str) -> list[str]:
        deadline = time.monotonic() + self.config.converge_timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            try:
                problems = mirror_diff(self.stack.sync, self.pool(cluster), cluster)  # type: ignore[arg-type]
            except grpc.RpcError as error:
                problems = [f"RPC failed: {error.code()}"]  # type: ignore[attr-defined]
            if not problems:
                return []
            time.sleep(0.1)
        return problems

    def _check_changes_watch(self) -> None:
        assert self.changes is not None
        # One listing, one snapshot: its VMs are judged against the changes up to its revision. (Listing again
        # after the wait would judge changes committed since, which the recorder need not have received yet.)
        vms, latest = self.stack.sync.list_all_vms(include_removed=True)
        recorder = self.changes
        try:
            wait_for(lambda: recorder.position >= latest, self.config.converge_timeout, what="WatchChanges to catch up")
        except AssertionError as error:
            self.violation(f"watch_changes_exactly_once: {error}")
            return
        with recorder._lock:
            changes = list(recorder.changes)
            errors = list(recorder.errors)
        revisions = [c.revision for c in changes]
        expected = list(
            range(recorder.start_revision + 1, (revisions[-1] if revisions else recorder.start_revision) + 1)
        )
        if revisions != expected:
            duplicates = [r for r, n in Counter(revisions).items() if n > 1]
            missing = sorted(set(expected) - set(revisions))
            self.violation(
                f"watch_changes_exactly_once: duplicates {duplicates[:10]}, gaps {missing[:10]}, "
                f"out of order {revisions != sorted(revisions)}"
            )
        if errors:
            self.violation(f"watch_changes_exactly_once: the watch ended with {errors[:3]}")
            recorder.errors.clear()
        # Every VM state the listing shows was delivered as a change, with the same revision.
        delivered = {(change.vm.uuid, change.vm.revision) for change in changes if change.HasField("vm")}
        for vm in vms:
            if vm.revision > recorder.start_revision and (vm.uuid, vm.revision) not in delivered:
                self.violation(f"watch_changes_exactly_once: VM {vm.name} at revision {vm.revision} never delivered")
                break
        self.summary.changes_seen = len(changes)

    def _check_ha_events_watch(self) -> None:
        assert self.events is not None
        recorder = self.events
        _, latest = self.stack.ha.all_actions()
        try:
            wait_for(lambda: recorder.snapshot()[1] >= latest, self.config.converge_timeout, what="WatchHaEvents")
        except AssertionError as error:
            self.violation(f"watch_ha_events_exactly_once: {error}")
            return
        events, _ = recorder.snapshot()
        first = [e for e in events if not e.redelivered]
        revisions = [e.revision for e in first]
        duplicates = [r for r, n in Counter(revisions).items() if n > 1]
        if duplicates or revisions != sorted(revisions):
            self.violation(f"watch_ha_events_exactly_once: duplicates {duplicates[:10]} or out of order")
        actions, _ = self.stack.ha.all_actions()
        delivered = {e.action.action_id for e in first if e.HasField("action")}
        undelivered = [a.instance_name for a in actions if a.action_id not in delivered]
        if undelivered:
            self.violation(f"watch_ha_events_exactly_once: actions never delivered: {undelivered[:10]}")
        if recorder.errors:
            self.violation(f"watch_ha_events_exactly_once: {recorder.errors[:3]}")
            recorder.errors.clear()
        self.summary.ha_events_seen = len(events)

    def _check_restart_actions(self) -> None:
        actions, _ = self.stack.ha.all_actions()
        restarts = Counter(a.instance_name for a in actions if a.kind == RESTART_VM and a.cluster_id == "cs61")
        if restarts != self.expected_restarts:
            self.violation(
                f"restart_vm_exactly_once: RESTART_VM per VM {dict(restarts)}, deaths {dict(self.expected_restarts)}"
            )
            self.expected_restarts = Counter(restarts)  # report once, keep checking from here
        native = [a.instance_name for a in actions if a.kind == RESTART_VM and a.cluster_id in NATIVE_CLUSTERS]
        if native:
            self.violation(f"no_restart_in_native: RESTART_VM for {native[:10]}")

    def _check_power_operations(self) -> None:
        for name, pool in self.stack.sim.pools.items():
            calls = pool.calls_since(self.call_marks.get(name, 0))
            if calls:
                self.call_marks[name] = calls[-1]["seq"]
            ours = [c for c in calls if c["user"] == XSHA_USER or c["originator"] == SYNC_ORIGINATOR]
            self.sync_calls_seen += len(ours)
            power = [c["method"] for c in ours if canonical_method(c["method"]) in POWER_OPERATIONS]
            if power:
                self.violation(f"no_power_op_from_sync: {name}: {power[:5]}")

    def _check_modes(self) -> None:
        noted: set[str] = set()
        for cluster, initial in self.initial_modes.items():
            # While ha_service cannot reach sync_service the pool's version is unknown and a NATIVE cluster's mode
            # reads UNSPECIFIED (never a guess); the pin itself must never change, and the mode must come back.
            def same(c: str = cluster, want: tuple[int, int] = initial) -> bool:
                status = self.stack.ha.call(
                    "GetClusterHaStatus", ha_service_pb2.GetClusterHaStatusRequest(cluster_id=c)
                ).status
                now = (status.effective_mode, status.pinned_mode)
                if status.pinned_mode != want[1] or now[0] not in (want[0], common_pb2.HA_MODE_UNSPECIFIED):
                    self.violation(f"no_pinned_mode_flip: {c} went from {want} to {now}: {status.mode_explanation}")
                    return True
                if now != want and c not in noted:
                    noted.add(c)
                    self.log(f"  {c}: mode {now} ({[w.message for w in status.warnings]})")
                return now == want

            try:
                wait_for(same, self.config.converge_timeout, what=f"{cluster}'s mode to read {initial} again")
            except AssertionError as error:
                self.violation(f"no_pinned_mode_flip: {error}")
        # A settings change that would flip the pinned native clusters is refused.
        try:
            self.stack.ha.call(
                "UpdateSettings",
                native_ha_request(False),
            )
            self.violation("no_pinned_mode_flip: turning native HA off globally was accepted with pinned clusters")
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                self.violation(f"no_pinned_mode_flip: a flip answered {error.code()}")  # type: ignore[attr-defined]

    def finish(self) -> None:
        if self.sync_calls_seen == 0:
            self.violation("no_power_op_from_sync: sync_service made no XAPI call at all (the check proves nothing)")
        for recorder in (self.changes, self.events):
            if recorder is not None:
                recorder.stop()


def run_fault_rounds(directory: Path, config: RunConfig, log: Callable[[str], None] = print) -> RunSummary:
    """Runs the whole fault run in `directory` (logs under logs/); never raises for a violation: see the summary."""
    started = time.monotonic()
    database = DatabaseTarget.choose(directory)
    stack = ChildStack(
        directory,
        scenario(config.vms_per_pool),
        database,
        sync_args=("--lease-period-seconds", str(config.lease_seconds)),
        ha_args=("--controller-lease-seconds", str(config.lease_seconds)),
    )
    run: FaultRun | None = None
    try:
        stack.start_sync()
        stack.start_ha()
        run = FaultRun(stack, config, log)
        run.setup()
        index = 0
        while index < config.rounds or (config.max_minutes and time.monotonic() - started < config.max_minutes * 60):
            run.run_round(index)
            index += 1
        run.finish()
        return run.summary
    finally:
        if run is not None:
            run.summary.seconds = time.monotonic() - started
            run.summary.service_kills = ", ".join(
                f"{r.name} kill -9 x{r.kills}, started x{r.starts} (refused while the database was cut: "
                f"{r.refused_starts})"
                for r in (stack.sync_run, stack.ha_run)
            )
        stack.close()
