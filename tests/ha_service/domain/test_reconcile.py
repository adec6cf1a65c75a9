"""R7 (with R8 ownership, R10, R11) for one managed VM: actions and notifications from mirror changes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_service.domain.model import (
    NO_PRIORITY,
    RESTART_PRIORITY,
    ActionCause,
    ActionKind,
    AgentState,
    AgentStatus,
    DriftResponse,
    GracePeriods,
    HaConfig,
    HaMode,
    HostView,
    ManagedVm,
    NotificationKind,
    PendingAction,
    ReconcileInput,
    ReconcileResult,
    Restarter,
    UnprotectedReason,
    VmMemory,
    VmObservation,
    VmType,
    WantedState,
    XapiPowerState,
)
from ha_service.domain.reconcile import reconcile_vm, vm_owner

NATIVE, CS = HaMode.NATIVE, HaMode.CLOUDSTACK
RUNNING, HALTED = XapiPowerState.Running, XapiPowerState.Halted
RESTART, NOPRIO = HaConfig(RESTART_PRIORITY), HaConfig()
LIVE = {"h1": HostView(True, 0.0), "h2": HostView(True, 0.0)}
H1_DEAD = {"h1": HostView(False, 95.0), "h2": HostView(True, 0.0)}
GRACE = GracePeriods(ha_restart_overdue_seconds=300.0, agent_disconnected_seconds=300.0, event_skew_seconds=60.0)


def vm(vm_type=VmType.User, ha=True, mode=NATIVE, wanted=WantedState.RUNNING, **kw) -> ManagedVm:
    decided = RESTART if (vm_type is VmType.User and ha and mode is NATIVE) else NOPRIO
    return ManagedVm("vm1", "c1", vm_type, ha, mode, wanted, kw.pop("decided", decided), **kw)


def obs(at, state=RUNNING, host="h1", ha=None, present=True) -> VmObservation:
    resident = host if state is RUNNING else None
    return VmObservation(at, present, state if present else None, resident if present else None, ha)


class Run:
    """Threads memory through a sequence of observations, as the controller does."""

    def __init__(self, managed: ManagedVm, **kw):
        self.vm, self.kw, self.memory = managed, kw, VmMemory()

    def see(self, current: VmObservation, hosts: Mapping[str, HostView] = LIVE, now=None, **kw) -> ReconcileResult:
        args = {**self.kw, **kw}
        result = reconcile_vm(
            ReconcileInput(
                self.vm, current, now if now is not None else current.at, self.memory, hosts, grace=GRACE, **args
            )
        )
        self.memory = result.memory
        return result


def kinds(result: ReconcileResult):
    return [a.kind for a in result.actions], [n.kind for n in result.notifications]


# --- ownership --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vm_type", list(VmType))
@pytest.mark.parametrize("ha", [False, True])
@pytest.mark.parametrize("mode", list(HaMode))
@pytest.mark.parametrize("migrating", [False, True])
@pytest.mark.parametrize("observed", [None, RESTART, NOPRIO, HaConfig("best-effort")])
def test_vm_owner(vm_type, ha, mode, migrating, observed):
    owner = vm_owner(vm(vm_type, ha, mode), observed, migrating)
    if vm_type is not VmType.User:
        assert owner is Restarter.CLOUDSTACK
    elif not ha:
        assert owner is Restarter.NONE
    elif migrating and observed is not None:
        assert owner is (Restarter.HYPERVISOR if observed == RESTART else Restarter.CLOUDSTACK)
    else:
        assert owner is (Restarter.HYPERVISOR if mode is NATIVE else Restarter.CLOUDSTACK)


# --- NATIVE, HA user VM -----------------------------------------------------------------------------------------


def test_native_failover_is_notified_with_hosts_and_downtime():
    run = Run(vm())
    assert kinds(run.see(obs(0, ha=RESTART))) == ([], [])
    assert kinds(run.see(obs(100, HALTED, ha=RESTART), H1_DEAD)) == ([], [])
    result = run.see(obs(130, RUNNING, "h2", ha=RESTART), H1_DEAD)
    assert kinds(result) == ([], [NotificationKind.VM_RESTARTED_BY_HYPERVISOR])
    note = result.notifications[0]
    assert (note.old_host_uuid, note.new_host_uuid, note.vm_uuid) == ("h1", "h2", "vm1")
    assert note.downtime_seconds == 35.0  # from the host's death (95), earlier than the Halted observation (100)
    # Seen again (an unrelated event, a tick): nothing new.
    assert kinds(run.see(obs(140, RUNNING, "h2", ha=RESTART), H1_DEAD)) == ([], [])


def test_native_failover_when_the_vm_event_arrives_before_the_host_event():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    run.see(obs(100, HALTED, ha=RESTART), LIVE)  # host death not mirrored yet
    result = run.see(obs(120, RUNNING, "h2", ha=RESTART), {"h1": HostView(False, 101.0), "h2": HostView(True)})
    assert kinds(result) == ([], [NotificationKind.VM_RESTARTED_BY_HYPERVISOR])
    assert result.notifications[0].downtime_seconds == 20.0


def test_native_failover_coalesced_into_one_event():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    result = run.see(obs(130, RUNNING, "h2", ha=RESTART), H1_DEAD)
    assert kinds(result) == ([], [NotificationKind.VM_RESTARTED_BY_HYPERVISOR])
    assert result.notifications[0].downtime_seconds == 35.0
    unknown_death = Run(vm())
    unknown_death.see(obs(0, ha=RESTART))
    r = unknown_death.see(obs(130, RUNNING, "h2", ha=RESTART), {"h1": HostView(False, None)})
    assert r.notifications[0].downtime_seconds is None


def test_native_halt_without_host_failure_is_not_a_hypervisor_restart():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    run.see(obs(100, HALTED, ha=RESTART))
    assert kinds(run.see(obs(200, RUNNING, "h2", ha=RESTART))) == ([], [])


def test_native_restart_overdue_after_grace_once():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    halted = obs(100, HALTED, ha=RESTART)
    assert kinds(run.see(halted, H1_DEAD)) == ([], [])
    assert kinds(run.see(halted, H1_DEAD, now=394.0)) == ([], [])  # 299 s after the death at 95
    result = run.see(halted, H1_DEAD, now=395.0)
    assert kinds(result) == ([], [NotificationKind.HA_RESTART_OVERDUE])
    assert result.notifications[0].old_host_uuid == "h1"
    assert kinds(run.see(halted, H1_DEAD, now=1000.0)) == ([], [])  # once per outage
    # Finally restarted: notified as a restart, and a later outage can be overdue again.
    assert kinds(run.see(obs(1100, RUNNING, "h2", ha=RESTART), H1_DEAD))[1] == [
        NotificationKind.VM_RESTARTED_BY_HYPERVISOR
    ]
    assert not run.memory.overdue_notified


def test_native_vm_running_on_dead_host_without_pool_ha_is_overdue_not_an_action():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    still = obs(100, RUNNING, "h1", ha=RESTART)
    assert kinds(run.see(still, H1_DEAD)) == ([], [])
    assert kinds(run.see(still, H1_DEAD, now=400.0)) == ([], [NotificationKind.HA_RESTART_OVERDUE])


def test_native_halted_without_host_failure_never_overdue():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    assert kinds(run.see(obs(100, HALTED, ha=RESTART), LIVE, now=10_000.0)) == ([], [])


def test_host_dying_long_after_the_vm_halted_is_not_its_cause():
    run = Run(vm())
    run.see(obs(0, ha=RESTART))
    run.see(obs(100, HALTED, ha=RESTART), LIVE)
    late_death = {"h1": HostView(False, 5000.0)}
    assert kinds(run.see(obs(100, HALTED, ha=RESTART), late_death, now=9000.0)) == ([], [])


def test_stopped_on_purpose_forgets_the_host():
    managed = vm(wanted=WantedState.STOPPED_ON_PURPOSE)
    run = Run(managed)
    run.see(obs(0, ha=RESTART))
    run.see(obs(50, HALTED, ha=RESTART))
    assert run.memory.last_running_host is None and run.memory.down_since is None
    run.vm = replace(managed, wanted=WantedState.RUNNING)
    assert kinds(run.see(obs(200, HALTED, ha=RESTART), H1_DEAD, now=10_000.0)) == ([], [])
    assert kinds(run.see(obs(10_100, RUNNING, "h2", ha=RESTART), H1_DEAD)) == ([], [])


# --- CLOUDSTACK, HA user VM -------------------------------------------------------------------------------------


def test_cloudstack_halted_gives_one_restart():
    run = Run(vm(mode=CS))
    run.see(obs(0, ha=NOPRIO))
    result = run.see(obs(100, HALTED, ha=NOPRIO))
    assert kinds(result) == ([ActionKind.RESTART_VM], [])
    action = result.actions[0]
    assert action.cause is ActionCause.HALTED and not action.needs_fencing and action.host_uuid == "h1"
    assert kinds(run.see(obs(100, HALTED, ha=NOPRIO), now=500.0)) == ([], [])  # no second action
    run.see(obs(200, RUNNING, "h2", ha=NOPRIO))
    assert kinds(run.see(obs(300, HALTED, ha=NOPRIO))) == ([ActionKind.RESTART_VM], [])  # a new outage


def test_cloudstack_running_on_dead_host_needs_fencing():
    run = Run(vm(mode=CS))
    run.see(obs(0, ha=NOPRIO))
    result = run.see(obs(100, RUNNING, "h1", ha=NOPRIO), H1_DEAD)
    assert kinds(result) == ([ActionKind.RESTART_VM], [])
    action = result.actions[0]
    assert action.cause is ActionCause.HOST_DEAD_STILL_RUNNING and action.needs_fencing and action.host_uuid == "h1"
    # The orchestrator fences and resets the VM: Halted is the same outage, no second action.
    assert kinds(run.see(obs(150, HALTED, ha=NOPRIO), H1_DEAD)) == ([], [])


def test_cloudstack_host_death_with_pool_ha_is_one_halted_restart():
    """Pool HA fences the dead host and XAPI halts its VMs: no fencing or reset asked, still exactly one action."""
    run = Run(vm(mode=CS), pool_ha_enabled=True)
    run.see(obs(0, ha=NOPRIO))
    result = run.see(obs(100, RUNNING, "h1", ha=NOPRIO), H1_DEAD)  # the host event arrives first
    assert kinds(result) == ([ActionKind.RESTART_VM], [])
    action = result.actions[0]
    assert action.cause is ActionCause.HALTED and not action.needs_fencing and action.host_uuid == "h1"
    assert "pool HA" in action.message
    assert kinds(run.see(obs(101, HALTED, ha=NOPRIO), H1_DEAD)) == ([], [])  # XAPI halts it: same outage


def test_unknown_host_liveness_is_no_reason_to_act():
    run = Run(vm(mode=CS))
    assert kinds(run.see(obs(0, RUNNING, "h9", ha=NOPRIO), {})) == ([], [])


def test_pending_action_deduplicates_even_without_memory():
    managed = vm(mode=CS)
    pending = (PendingAction(ActionKind.RESTART_VM, ActionCause.HALTED),)
    result = reconcile_vm(ReconcileInput(managed, obs(100, HALTED), 100.0, pending_actions=pending))
    assert result.actions == ()
    assert ActionKind.RESTART_VM in result.memory.actions_requested


@pytest.mark.parametrize("wanted", [WantedState.STOPPED_ON_PURPOSE, WantedState.UNKNOWN])
def test_cloudstack_acts_only_for_vms_wanted_running(wanted):
    run = Run(vm(mode=CS, wanted=wanted))
    run.see(obs(0))
    assert kinds(run.see(obs(100, HALTED))) == ([], [])
    assert kinds(run.see(obs(100, RUNNING, "h1"), H1_DEAD)) == ([], [])


@pytest.mark.parametrize("state", [XapiPowerState.Paused, XapiPowerState.Suspended, None])
def test_paused_suspended_or_unknown_power_is_no_outage(state):
    run = Run(vm(mode=CS))
    run.see(obs(0))
    assert kinds(run.see(VmObservation(100, True, state, None, NOPRIO))) == ([], [])


def test_cloudstack_user_vm_gone_is_not_acted_on():
    run = Run(vm(mode=CS))
    run.see(obs(0))
    assert kinds(run.see(obs(100, present=False))) == ([], [])


# --- R8 ownership during a migration ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(HaMode))
def test_migrating_cluster_follows_the_hypervisor_config(mode):
    native_owned = Run(vm(mode=mode), cluster_migrating=True)
    native_owned.see(obs(0, ha=RESTART))
    assert kinds(native_owned.see(obs(100, HALTED, ha=RESTART))) == ([], [])
    cs_owned = Run(vm(mode=mode), cluster_migrating=True)
    cs_owned.see(obs(0, ha=NOPRIO))
    result = cs_owned.see(obs(100, HALTED, ha=NOPRIO))
    assert kinds(result) == ([ActionKind.RESTART_VM], [])
    assert result.owner is Restarter.CLOUDSTACK and result.drift is None  # the migration rewrites configs


# --- R10 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(HaMode))
@pytest.mark.parametrize("vm_type", list(VmType))
def test_live_migration_causes_nothing(mode, vm_type):
    managed = vm(vm_type, True, mode)
    run = Run(managed)
    run.see(obs(0, ha=managed.decided))
    assert kinds(run.see(obs(10, RUNNING, "h2", ha=managed.decided))) == ([], [])
    assert run.memory.last_running_host == "h2"


# --- system VMs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vm_type", [VmType.ConsoleProxy, VmType.SecondaryStorageVm])
@pytest.mark.parametrize("mode", list(HaMode))
def test_capacity_scanned_system_vm_restart_recreate(vm_type, mode):
    run = Run(vm(vm_type, False, mode))
    run.see(obs(0))
    r = run.see(obs(10, HALTED))
    assert kinds(r) == ([ActionKind.RESTART_SYSTEM_VM], []) and r.actions[0].cause is ActionCause.HALTED
    assert kinds(run.see(obs(20, HALTED))) == ([], [])
    r = run.see(obs(30, present=False))  # escalation: the restart did not help, the VM is gone
    assert kinds(r) == ([ActionKind.RECREATE_SYSTEM_VM], []) and r.actions[0].cause is ActionCause.GONE_FROM_HYPERVISOR
    assert kinds(run.see(obs(40, present=False))) == ([], [])


@pytest.mark.parametrize("vm_type", [VmType.ConsoleProxy, VmType.SecondaryStorageVm])
def test_agent_disconnected_beyond_grace_replaces_once(vm_type):
    run = Run(vm(vm_type, False, CS))
    run.see(obs(0))
    agent = AgentState(AgentStatus.Disconnected, since=100.0)
    assert kinds(run.see(obs(200), agent=agent, now=399.0)) == ([], [])
    r = run.see(obs(200), agent=agent, now=400.0)
    assert kinds(r) == ([ActionKind.REPLACE_SYSTEM_VM], []) and r.actions[0].cause is ActionCause.AGENT_DISCONNECTED
    assert kinds(run.see(obs(200), agent=agent, now=900.0)) == ([], [])
    # The replaced VM disappears: expected, not a reason to create yet another one.
    assert kinds(run.see(obs(950, present=False), agent=agent, now=950.0)) == ([], [])


@pytest.mark.parametrize("status", [s for s in AgentStatus if s is not AgentStatus.Disconnected])
def test_other_agent_states_do_not_replace(status):
    run = Run(vm(VmType.ConsoleProxy, False, CS))
    assert kinds(run.see(obs(0), agent=AgentState(status, 0.0), now=10_000.0)) == ([], [])


def test_agent_reconnected_ends_the_outage():
    run = Run(vm(VmType.ConsoleProxy, False, CS))
    run.see(obs(0), agent=AgentState(AgentStatus.Disconnected, 0.0), now=400.0)
    run.see(obs(500), agent=AgentState(AgentStatus.Up, 450.0), now=500.0)
    assert run.memory.actions_requested == frozenset()
    r = run.see(obs(600), agent=AgentState(AgentStatus.Disconnected, 600.0), now=900.0)
    assert kinds(r) == ([ActionKind.REPLACE_SYSTEM_VM], [])


def test_pending_system_action_blocks_others():
    pending = (PendingAction(ActionKind.RESTART_SYSTEM_VM, ActionCause.HALTED),)
    r = reconcile_vm(
        ReconcileInput(vm(VmType.ConsoleProxy, False, CS), obs(5, present=False), 5.0, pending_actions=pending)
    )
    assert r.actions == ()


@pytest.mark.parametrize("redundant", [False, True])
@pytest.mark.parametrize("mode", list(HaMode))
def test_router(redundant, mode):
    run = Run(vm(VmType.DomainRouter, False, mode, redundant_router=redundant))
    run.see(obs(0))
    expected = [] if redundant else [ActionKind.RESTART_SYSTEM_VM]
    assert kinds(run.see(obs(10, HALTED))) == (expected, [])
    assert kinds(run.see(obs(20, present=False))) == ([], [])  # no recreate for routers


@pytest.mark.parametrize(
    "vm_type",
    [VmType.ElasticIpVm, VmType.ElasticLoadBalancerVm, VmType.InternalLoadBalancerVm, VmType.NetScalerVm],
)
def test_other_system_vms_keep_cloudstacks_own_handling(vm_type):
    run = Run(vm(vm_type, False, CS))
    run.see(obs(0))
    assert kinds(run.see(obs(10, HALTED))) == ([], [])
    assert kinds(run.see(obs(20, present=False))) == ([], [])


def test_system_vm_wanted_stopped_gets_nothing():
    run = Run(vm(VmType.ConsoleProxy, False, CS, wanted=WantedState.STOPPED_ON_PURPOSE))
    run.see(obs(0))
    assert kinds(run.see(obs(10, HALTED))) == ([], [])
    assert kinds(run.see(obs(20, present=False))) == ([], [])


# --- R11 drift in the reconcile ---------------------------------------------------------------------------------


def test_drift_repaired_once_per_drifted_config():
    run = Run(vm())
    r = run.see(obs(0, ha=NOPRIO))
    assert r.drift is not None and r.drift.response is DriftResponse.REPAIR and r.drift.apply == RESTART
    assert r.drift.notification.kind is NotificationKind.HA_CONFIG_DRIFT_REPAIRED
    assert run.see(obs(1, ha=NOPRIO)).drift is None
    assert run.see(obs(2, ha=RESTART)).drift is None  # repaired
    assert run.see(obs(3, ha=NOPRIO)).drift is not None  # drifted again


def test_decision_not_yet_applied_is_not_drift():
    """Until the hypervisor has reported the decided config, a difference is the first application, not drift."""
    run = Run(vm(config_confirmed=False))
    assert run.see(obs(0, ha=NOPRIO)).drift is None
    assert run.see(obs(1, ha=HaConfig("best-effort"))).drift is None
    assert Run(vm(config_confirmed=False, mode=CS), drift_repair_enabled=False).see(obs(0, ha=RESTART)).drift is None


def test_drift_report_only():
    r = Run(vm(mode=CS), drift_repair_enabled=False).see(obs(0, ha=RESTART))
    assert r.drift is not None and r.drift.response is DriftResponse.REPORT_ONLY and r.drift.apply is None
    assert r.drift.notification.kind is NotificationKind.HA_CONFIG_DRIFT_DETECTED


def test_refused_priority_is_not_drift():
    managed = vm(unprotected_reason=UnprotectedReason.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)
    assert Run(managed).see(obs(0, ha=NOPRIO)).drift is None
    assert Run(managed).see(obs(0, ha=HaConfig("best-effort"))).drift is not None


def test_no_drift_check_without_an_observed_config():
    assert Run(vm()).see(obs(0, ha=None)).drift is None
    assert Run(vm()).see(obs(0, present=False)).drift is None


# --- properties -------------------------------------------------------------------------------------------------

hosts_st = st.fixed_dictionaries(
    {},
    optional={
        "h1": st.builds(HostView, st.booleans(), st.one_of(st.none(), st.floats(0, 1000))),
        "h2": st.builds(HostView, st.booleans(), st.one_of(st.none(), st.floats(0, 1000))),
    },
)
obs_st = st.builds(
    VmObservation,
    st.floats(0, 1000),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(list(XapiPowerState))),
    st.one_of(st.none(), st.sampled_from(["h1", "h2", "h3"])),
    st.one_of(st.none(), st.sampled_from([RESTART, NOPRIO, HaConfig("best-effort"), HaConfig(RESTART_PRIORITY, 2, 1)])),
)
agent_st = st.one_of(st.none(), st.builds(AgentState, st.sampled_from(list(AgentStatus)), st.floats(0, 1000)))
pending_st = st.lists(
    st.builds(PendingAction, st.sampled_from(list(ActionKind)), st.sampled_from(list(ActionCause))), max_size=2
).map(tuple)


def _sequence(
    managed: ManagedVm,
    observations: list[VmObservation],
    hosts: Mapping[str, HostView],
    agent: AgentState | None,
    pending: tuple[PendingAction, ...],
    migrating: bool,
) -> Iterator[ReconcileResult]:
    memory = VmMemory()
    for o in observations:
        r = reconcile_vm(ReconcileInput(managed, o, o.at + 500, memory, hosts, agent, pending, GRACE, migrating))
        memory = r.memory
        yield r


@given(
    st.sampled_from(list(VmType)),
    st.sampled_from(list(HaMode)),
    st.sampled_from(list(WantedState)),
    st.lists(obs_st, min_size=1, max_size=6),
    hosts_st,
    agent_st,
    pending_st,
    st.booleans(),
)
def test_non_ha_user_vms_never_get_an_action(vm_type, mode, wanted, observations, hosts, agent, pending, migrating):
    managed = vm(VmType.User, False, mode, wanted)
    for r in _sequence(managed, observations, hosts, agent, pending, migrating):
        assert r.actions == () and r.owner is Restarter.NONE


@given(
    st.sampled_from(list(WantedState)),
    st.lists(obs_st, min_size=1, max_size=6),
    hosts_st,
    agent_st,
    pending_st,
)
def test_native_ha_user_vms_never_get_an_action(wanted, observations, hosts, agent, pending):
    for r in _sequence(vm(VmType.User, True, NATIVE, wanted), observations, hosts, agent, pending, False):
        assert r.actions == ()


@given(
    st.sampled_from(list(VmType)),
    st.booleans(),
    st.sampled_from(list(HaMode)),
    st.sampled_from(list(WantedState)),
    st.lists(obs_st, min_size=1, max_size=8),
    hosts_st,
    agent_st,
    st.booleans(),
)
def test_at_most_one_action_of_a_kind_per_outage(vm_type, ha, mode, wanted, observations, hosts, agent, migrating):
    managed = vm(vm_type, ha, mode, wanted)
    emitted: list[ActionKind] = []
    for r in _sequence(managed, observations, hosts, agent, (), migrating):
        if r.memory.actions_requested == frozenset():
            emitted = []
        for a in r.actions:
            assert a.kind not in emitted
            assert managed.wanted is WantedState.RUNNING
            assert r.owner is Restarter.CLOUDSTACK
            emitted.append(a.kind)
        assert len(r.actions) <= 1


@given(
    st.sampled_from(list(VmType)),
    st.booleans(),
    st.sampled_from(list(HaMode)),
    st.sampled_from(list(WantedState)),
    obs_st,
    hosts_st,
    agent_st,
    pending_st,
)
def test_reconcile_is_idempotent_for_the_same_observation(vm_type, ha, mode, wanted, o, hosts, agent, pending):
    managed = vm(vm_type, ha, mode, wanted)
    first = reconcile_vm(ReconcileInput(managed, o, o.at + 500, VmMemory(), hosts, agent, pending, GRACE))
    again = reconcile_vm(ReconcileInput(managed, o, o.at + 500, first.memory, hosts, agent, pending, GRACE))
    assert again.actions == () and again.notifications == () and again.drift is None


@given(st.sampled_from([NO_PRIORITY, RESTART_PRIORITY]), st.lists(obs_st, min_size=1, max_size=6), hosts_st, agent_st)
def test_system_vms_are_always_cloudstack_owned(_prio, observations, hosts, agent):
    for vm_type in VmType:
        if vm_type is VmType.User:
            continue
        for r in _sequence(vm(vm_type, True, NATIVE), observations, hosts, agent, (), True):
            assert r.owner is Restarter.CLOUDSTACK
            assert all(a.kind is not ActionKind.RESTART_VM for a in r.actions)
