"""R7 (with R8 ownership, R10 and R11): what the controller does about one managed VM after a mirror change.

`reconcile_vm` is pure and idempotent: call it on every watch event for the VM and on a periodic tick (grace
periods only expire with time), always passing back the memory it returned. It never returns an action for a VM
whose owner is not CloudStack, and never a second action of a kind within one outage.

An outage starts when a VM the orchestrator does not stop on purpose is seen Halted, gone, running on a dead host,
or (console proxy / secondary storage VM) running with its agent disconnected beyond the grace period. It ends
when the VM is seen running on a live host (with its agent not Disconnected). A VM the orchestrator stops on purpose
is never in an outage.
"""

from __future__ import annotations

from dataclasses import replace

from ha_service.domain.model import (
    CAPACITY_SCANNED_SYSTEM_VMS,
    NO_PRIORITY,
    RESTART_PRIORITY,
    Action,
    ActionCause,
    ActionKind,
    AgentStatus,
    DriftIntent,
    HaConfig,
    HaMode,
    HostView,
    ManagedVm,
    Notification,
    NotificationKind,
    ReconcileInput,
    ReconcileResult,
    Restarter,
    UnprotectedReason,
    VmMemory,
    VmType,
    WantedState,
    XapiPowerState,
)
from ha_service.domain.policy import drift_intent, ha_config_drift

_SYSTEM_ACTIONS = frozenset({ActionKind.RESTART_SYSTEM_VM, ActionKind.RECREATE_SYSTEM_VM, ActionKind.REPLACE_SYSTEM_VM})
# While XAPI refuses "restart" (R5) its absence is the retry path's business, not drift.
_REFUSALS = frozenset({UnprotectedReason.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN, UnprotectedReason.XAPI_REFUSED})


def vm_owner(vm: ManagedVm, observed: HaConfig | None, cluster_migrating: bool = False) -> Restarter:
    """Who restarts this VM now.

    System VMs: CloudStack's application HA, in every mode. Non-HA user VMs: nobody. HA user VMs: the cluster's
    mode, except while the cluster migrates (R8): then whoever the hypervisor config says ("restart" ->
    XenServer, anything else -> CloudStack), so no VM ever has two captains or none. An unknown observed config
    during a migration falls back to the cluster's mode.
    """
    if vm.vm_type.is_system:
        return Restarter.CLOUDSTACK
    if not vm.ha_enabled:
        return Restarter.NONE
    if cluster_migrating and observed is not None:
        return Restarter.HYPERVISOR if observed.ha_restart_priority == RESTART_PRIORITY else Restarter.CLOUDSTACK
    return Restarter.HYPERVISOR if vm.mode is HaMode.NATIVE else Restarter.CLOUDSTACK


def _dead_since(host: str | None, inp: ReconcileInput) -> tuple[bool, float | None]:
    view: HostView | None = inp.hosts.get(host) if host is not None else None
    if view is None or view.live:
        return False, None
    return True, view.since


def _death_explains_outage(down_since: float | None, dead_since: float | None, inp: ReconcileInput) -> bool:
    """A host death explains an outage starting now, or one that began no earlier than the event skew before it."""
    if down_since is None or dead_since is None:
        return True
    return dead_since <= down_since + inp.grace.event_skew_seconds


def reconcile_vm(inp: ReconcileInput) -> ReconcileResult:
    vm, cur, mem = inp.vm, inp.current, inp.memory
    owner = vm_owner(vm, cur.ha if cur.present else None, inp.cluster_migrating)

    running = cur.present and cur.power_state is XapiPowerState.Running
    resident = cur.resident_host if running else None
    resident_dead, resident_dead_since = _dead_since(resident, inp)
    running_on_live = running and not resident_dead  # unknown liveness counts as live: no action on a guess
    running_on_dead = running and resident_dead
    halted = cur.present and cur.power_state is XapiPowerState.Halted

    agent_disconnected = (
        vm.vm_type in CAPACITY_SCANNED_SYSTEM_VMS
        and inp.agent is not None
        and inp.agent.status is AgentStatus.Disconnected
    )
    agent_overdue = (
        agent_disconnected
        and inp.agent is not None
        and inp.now - inp.agent.since >= inp.grace.agent_disconnected_seconds
    )

    up = running_on_live and not agent_disconnected
    down = not cur.present or halted or running_on_dead or (running_on_live and agent_overdue)

    # The host the VM was last running on: the resident host if it runs, else memory.
    last_host = resident if running else mem.last_running_host
    last_host_dead, last_host_dead_since = (
        (resident_dead, resident_dead_since) if running else _dead_since(mem.last_running_host, inp)
    )

    actions: list[Action] = []
    notifications: list[Notification] = []
    new_mem = replace(mem, last=cur, last_running_host=last_host)

    if vm.wanted is WantedState.STOPPED_ON_PURPOSE:
        # A VM stopped on purpose has no host whose later failure could explain a later outage.
        new_mem = replace(
            new_mem,
            last_running_host=last_host if running else None,
            down_since=None,
            host_failed=False,
            actions_requested=frozenset(),
            overdue_notified=False,
        )
    elif up:
        if owner is Restarter.HYPERVISOR:
            notice = _restarted_by_hypervisor(inp, resident)
            if notice is not None:
                notifications.append(notice)
        new_mem = replace(
            new_mem, down_since=None, host_failed=False, actions_requested=frozenset(), overdue_notified=False
        )
    elif down:
        death_counts = last_host_dead and _death_explains_outage(mem.down_since, last_host_dead_since, inp)
        starts = [cur.at] if mem.down_since is None else [mem.down_since]
        if death_counts and last_host_dead_since is not None:
            starts.append(last_host_dead_since)
        new_mem = replace(new_mem, down_since=min(starts), host_failed=mem.host_failed or death_counts)
        if owner is Restarter.HYPERVISOR:
            notice = _restart_overdue(inp, new_mem)
            if notice is not None:
                notifications.append(notice)
                new_mem = replace(new_mem, overdue_notified=True)
        elif owner is Restarter.CLOUDSTACK and vm.wanted is WantedState.RUNNING:
            action = _cloudstack_action(inp, new_mem, halted=halted, running_on_dead=running_on_dead)
            if action is not None:
                actions.append(action)
        pending = frozenset(p.kind for p in inp.pending_actions)
        new_mem = replace(new_mem, actions_requested=new_mem.actions_requested | pending | {a.kind for a in actions})

    drift, new_mem = _drift(inp, new_mem)
    return ReconcileResult(owner, tuple(actions), tuple(notifications), drift, new_mem)


def _restarted_by_hypervisor(inp: ReconcileInput, new_host: str | None) -> Notification | None:
    """Running -> (Halted) -> Running after the VM's host died: XenServer HA restarted it.

    Only a host failure counts: native HA restarts nothing else, so a VM halted and started again by someone
    is not reported as a hypervisor restart. A coalesced Running(H1) -> Running(H2) with H1 dead is one too.
    """
    mem = inp.memory
    old_host = mem.last_running_host
    old_dead, old_dead_since = _dead_since(old_host, inp)
    if mem.down_since is not None:
        if not (mem.host_failed or (old_dead and _death_explains_outage(mem.down_since, old_dead_since, inp))):
            return None
        down_since: float | None = mem.down_since
        if old_dead_since is not None:
            down_since = min(mem.down_since, old_dead_since)
    elif old_host is not None and old_host != new_host and old_dead:
        down_since = old_dead_since
    else:
        return None  # live migration / host maintenance (R10), or nothing happened
    downtime = max(0.0, inp.current.at - down_since) if down_since is not None else None
    shown = f"{downtime:.0f} s" if downtime is not None else "an unknown time"
    return Notification(
        NotificationKind.VM_RESTARTED_BY_HYPERVISOR,
        f"XenServer HA restarted VM {inp.vm.vm_uuid} on host {new_host} after host {old_host} failed; "
        f"it was down for {shown}.",
        vm_uuid=inp.vm.vm_uuid,
        cluster_id=inp.vm.cluster_id,
        old_host_uuid=old_host,
        new_host_uuid=new_host,
        downtime_seconds=downtime,
    )


def _restart_overdue(inp: ReconcileInput, mem: VmMemory) -> Notification | None:
    if (
        not inp.current.present
        or not mem.host_failed
        or mem.overdue_notified
        or mem.down_since is None
        or inp.now - mem.down_since < inp.grace.ha_restart_overdue_seconds
    ):
        return None
    waited = inp.now - mem.down_since
    return Notification(
        NotificationKind.HA_RESTART_OVERDUE,
        f"VM {inp.vm.vm_uuid} is still not running {waited:.0f} s after its host {mem.last_running_host} failed; "
        "XenServer HA has not restarted it. Check pool HA, capacity and the VM's HA priority.",
        vm_uuid=inp.vm.vm_uuid,
        cluster_id=inp.vm.cluster_id,
        old_host_uuid=mem.last_running_host,
        downtime_seconds=waited,
    )


def _cloudstack_action(inp: ReconcileInput, mem: VmMemory, *, halted: bool, running_on_dead: bool) -> Action | None:
    vm, cur = inp.vm, inp.current
    pending = {p.kind for p in inp.pending_actions}
    if vm.vm_type is VmType.User:
        if ActionKind.RESTART_VM in pending or ActionKind.RESTART_VM in mem.actions_requested:
            return None
        if halted:
            return Action(
                ActionKind.RESTART_VM,
                vm.vm_uuid,
                ActionCause.HALTED,
                f"HA-enabled VM {vm.vm_uuid} is Halted but wanted running: restart it.",
                mem.last_running_host,
            )
        if running_on_dead and inp.pool_ha_enabled:
            # Pool HA fenced the host and XAPI halts its VMs: the orchestrator restarts, it does not fence/reset.
            return Action(
                ActionKind.RESTART_VM,
                vm.vm_uuid,
                ActionCause.HALTED,
                f"HA-enabled VM {vm.vm_uuid} was running on host {cur.resident_host}, which died; pool HA has fenced "
                "the host and XAPI halts the VM: restart it (no fencing or power-state reset needed).",
                cur.resident_host,
            )
        if running_on_dead:
            return Action(
                ActionKind.RESTART_VM,
                vm.vm_uuid,
                ActionCause.HOST_DEAD_STILL_RUNNING,
                f"HA-enabled VM {vm.vm_uuid} is still reported Running on dead host {cur.resident_host}: fence the "
                "host, reset the VM's power state, then restart it.",
                cur.resident_host,
            )
        return None
    if pending & _SYSTEM_ACTIONS:
        return None
    if vm.vm_type is VmType.DomainRouter:
        if halted and not vm.redundant_router and ActionKind.RESTART_SYSTEM_VM not in mem.actions_requested:
            return Action(
                ActionKind.RESTART_SYSTEM_VM,
                vm.vm_uuid,
                ActionCause.HALTED,
                f"Virtual router {vm.vm_uuid} is Halted but wanted running: restart it.",
                mem.last_running_host,
            )
        return None  # a redundant pair fails over by itself (RvR)
    if vm.vm_type not in CAPACITY_SCANNED_SYSTEM_VMS:
        return None  # other system VMs keep CloudStack's own handling unchanged
    requested = mem.actions_requested
    if not cur.present:
        # A replacement supersedes the old VM: its disappearance is expected, not a reason to create another.
        if requested & {ActionKind.RECREATE_SYSTEM_VM, ActionKind.REPLACE_SYSTEM_VM}:
            return None
        return Action(
            ActionKind.RECREATE_SYSTEM_VM,
            vm.vm_uuid,
            ActionCause.GONE_FROM_HYPERVISOR,
            f"{vm.vm_type} {vm.vm_uuid} is gone from the hypervisor: create a new one.",
            mem.last_running_host,
        )
    if halted:
        if ActionKind.RESTART_SYSTEM_VM in requested:
            return None
        return Action(
            ActionKind.RESTART_SYSTEM_VM,
            vm.vm_uuid,
            ActionCause.HALTED,
            f"{vm.vm_type} {vm.vm_uuid} is Halted but wanted running: restart it.",
            mem.last_running_host,
        )
    if cur.power_state is XapiPowerState.Running and ActionKind.REPLACE_SYSTEM_VM not in requested:
        agent = inp.agent
        if agent is not None and agent.status is AgentStatus.Disconnected:
            return Action(
                ActionKind.REPLACE_SYSTEM_VM,
                vm.vm_uuid,
                ActionCause.AGENT_DISCONNECTED,
                f"{vm.vm_type} {vm.vm_uuid}'s agent has been Disconnected for {inp.now - agent.since:.0f} s: "
                "start a new one and destroy this one (CLOUDSTACK-5247).",
                cur.resident_host,
            )
    return None


def _drift(inp: ReconcileInput, mem: VmMemory) -> tuple[DriftIntent | None, VmMemory]:
    """R11, once per distinct drifted config (a controller whose repair failed clears memory.drift_reported)."""
    vm, cur = inp.vm, inp.current
    if not cur.present or cur.ha is None or inp.cluster_migrating:
        # A migration rewrites HA configs on purpose; repairing them back would fight it.
        return None, mem
    drift = ha_config_drift(vm.decided, cur.ha) if vm.config_confirmed else None
    if (
        drift is not None
        and vm.unprotected_reason in _REFUSALS
        and drift.fields == ("ha_restart_priority",)
        and cur.ha.ha_restart_priority == NO_PRIORITY
    ):
        drift = None
    if drift is None:
        return None, replace(mem, drift_reported=None)
    if mem.drift_reported == cur.ha:
        return None, mem
    intent = drift_intent(drift, vm.vm_uuid, vm.cluster_id, inp.drift_repair_enabled)
    return intent, replace(mem, drift_reported=cur.ha)
