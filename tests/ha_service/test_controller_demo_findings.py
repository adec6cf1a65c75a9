"""Behaviours the demo's author reported, pinned against the sync_service test double (R7, R11).

Each test replays the sequence the mirror delivered and counts what ha_service emitted.
"""

from __future__ import annotations

from ha_service.testing import RunningHaService, wait_for
from tests.ha_service.fake_sync import FakeSync
from tests.ha_service.test_controller import PENDING, Watcher, actions, managed
from tests.ha_service.test_settings_decisions import decide, set_global
from xsha_api.v1 import ha_service_pb2

RESTART_VM = ha_service_pb2.HA_ACTION_KIND_RESTART_VM
VM_HALTED = ha_service_pb2.RESTART_CAUSE_VM_HALTED
HOST_DEAD = ha_service_pb2.RESTART_CAUSE_HOST_DEAD
SUCCEEDED = ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
REPAIRED = ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_REPAIRED
DETECTED = ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_DETECTED


def settle(ha: RunningHaService) -> None:
    """Everything the double emitted so far processed, then a tick (grace periods, re-reconciles) processed."""
    assert ha.controller.wait_processed()
    ha.controller.tick_now()
    assert ha.controller.wait_processed()


def set_wanted(ha: RunningHaService, cluster: str, name: str, wanted: int) -> None:
    ha.stub().SetVmWantedState(
        ha_service_pb2.SetVmWantedStateRequest(cluster_id=cluster, instance_name=name, wanted_state=wanted)  # type: ignore[arg-type]
    )


def ack(ha: RunningHaService, action: ha_service_pb2.HaAction) -> None:
    ha.stub().AckHaAction(ha_service_pb2.AckHaActionRequest(action_id=action.action_id, outcome=SUCCEEDED))


def test_vm_not_seen_running_since_wanted_running_is_not_an_outage(ha, fake_sync: FakeSync) -> None:
    """The orchestrator stops a VM on purpose, starts it again and says RUNNING before the mirror showed the stop:
    the stale Halted is not an outage (no RESTART_VM). A later real outage gets exactly one, whatever is re-observed
    and acknowledged meanwhile."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1, h2 = fake_sync.add_host("cs", "h1"), fake_sync.add_host("cs", "h2")
    decide(ha, "cs", "i-1-1-VM")
    vm = fake_sync.add_vm("cs", "i-1-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-1-1-VM").present_on_hypervisor, what="bound")
    settle(ha)
    set_wanted(ha, "cs", "i-1-1-VM", ha_service_pb2.WANTED_STATE_STOPPED)
    set_wanted(ha, "cs", "i-1-1-VM", ha_service_pb2.WANTED_STATE_RUNNING)  # VM.start_on already called
    fake_sync.set_vm(vm, running_on="")  # the mirror catches up: the stop ...
    settle(ha)
    fake_sync.set_vm(vm, running_on=h2)  # ... and the start
    settle(ha)
    assert actions(ha) == [], "a VM not seen running since it was wanted running did not die"

    # A real outage: one action naming the host the VM last ran on, however often it is looked at again.
    fake_sync.set_vm(vm, running_on="")
    (action,) = wait_for(lambda: actions(ha), what="RESTART_VM")
    assert (action.kind, action.cause, action.host_uuid) == (RESTART_VM, VM_HALTED, h2)
    ack(ha, action)  # acknowledged as soon as the orchestrator started it, before the mirror shows it running
    settle(ha)
    fake_sync.set_vm(vm, priority="best-effort")  # another change of the still Halted VM
    fake_sync.set_host_live(h2, False)
    fake_sync.set_host_live(h2, True)
    settle(ha)
    set_wanted(ha, "cs", "i-1-1-VM", ha_service_pb2.WANTED_STATE_RUNNING)
    settle(ha)
    assert len(actions(ha)) == 1
    fake_sync.set_vm(vm, running_on=h1)
    settle(ha)
    assert len(actions(ha)) == 1
    # The next outage is a new one.
    fake_sync.set_vm(vm, running_on="")
    wait_for(lambda: len(actions(ha)) == 2, what="a second RESTART_VM for a second outage")
    settle(ha)
    assert [(a.cause, a.host_uuid) for a in actions(ha, PENDING)] == [(VM_HALTED, h1)]


def test_deployed_vm_started_after_wanted_running_gets_no_action(ha, fake_sync: FakeSync) -> None:
    """The demo's deployment: created Halted, VM.start_on, SetVmWantedState RUNNING while the mirror still shows it
    Halted, then Running: nothing to do."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    decide(ha, "cs", "i-2-1-VM")
    vm = fake_sync.add_vm("cs", "i-2-1-VM")
    set_wanted(ha, "cs", "i-2-1-VM", ha_service_pb2.WANTED_STATE_RUNNING)
    settle(ha)
    fake_sync.set_vm(vm, running_on=h1)
    settle(ha)
    set_wanted(ha, "cs", "i-2-1-VM", ha_service_pb2.WANTED_STATE_RUNNING)
    settle(ha)
    assert actions(ha) == []


def test_recreated_vm_does_not_inherit_its_predecessors_outage(ha, fake_sync: FakeSync) -> None:
    """A VM re-created under the same name binds to the same decision, but not to the old VM's history: no action
    for the new VM (never seen running) and no host of the old one on a later action."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1, h2 = fake_sync.add_host("cs", "h1"), fake_sync.add_host("cs", "h2")
    decide(ha, "cs", "i-3-1-VM")
    old = fake_sync.add_vm("cs", "i-3-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-3-1-VM").present_on_hypervisor, what="bound")
    fake_sync.remove_vm(old)
    settle(ha)
    new = fake_sync.add_vm("cs", "i-3-1-VM")  # Halted, about to be started
    wait_for(lambda: managed(ha, "cs", "i-3-1-VM").decision.vm_uuid == new, what="re-bound")
    settle(ha)
    assert actions(ha) == []
    fake_sync.set_vm(new, running_on=h2)
    settle(ha)
    fake_sync.set_vm(new, running_on="")
    (action,) = wait_for(lambda: actions(ha), what="RESTART_VM")
    assert (action.cause, action.host_uuid, action.vm_uuid) == (VM_HALTED, h2, new)


def test_first_application_of_a_decision_is_not_drift(ha, fake_sync: FakeSync) -> None:
    """A VM created without its decided priority: ha_service applies it silently, even when the mirror delivers the
    VM's earlier changes (still without the priority) after the write. A later change of the confirmed config is
    drift: repaired and notified once."""
    fake_sync.add_pool("nat", "ch82", ha=True)
    set_global(ha, True)
    h1 = fake_sync.add_host("nat", "h1")
    decide(ha, "nat", "i-4-1-VM")
    watcher = Watcher(ha)

    def vm_starts_meanwhile(vm_uuid: str) -> None:
        fake_sync.before_ha_write = None
        fake_sync.set_vm(vm_uuid, running_on=h1)  # VM.start_on while the priority is being written

    fake_sync.before_ha_write = vm_starts_meanwhile
    vm = fake_sync.add_vm("nat", "i-4-1-VM")
    wait_for(lambda: fake_sync.vms[vm].ha_restart_priority == "restart", what="decision applied")
    settle(ha)
    wait_for(
        lambda: managed(ha, "nat", "i-4-1-VM").protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED,
        what="protected",
    )
    settle(ha)
    assert watcher.notifications(REPAIRED) == [] and watcher.notifications(DETECTED) == []
    assert fake_sync.set_calls == [(vm, "restart")]

    fake_sync.set_vm(vm, priority="")  # cleared in XenCenter: drift
    wait_for(lambda: watcher.notifications(REPAIRED), what="HA_CONFIG_DRIFT_REPAIRED")
    settle(ha)
    fake_sync.set_vm(vm, running_on="")
    fake_sync.set_vm(vm, running_on=h1)
    settle(ha)
    assert len(watcher.notifications(REPAIRED)) == 1
    assert fake_sync.vms[vm].ha_restart_priority == "restart"
    watcher.close()


def test_cloudstack_mode_with_pool_ha_on_host_death_is_one_halted_restart(ha, fake_sync: FakeSync) -> None:
    """Pool HA on, cluster CLOUDSTACK: XenServer fences the dead host and XAPI halts its VMs itself, so the action
    does not ask the orchestrator to fence and reset: cause VM_HALTED, the dead host named, exactly one."""
    fake_sync.add_pool("cs", "ch82", ha=True)
    h1 = fake_sync.add_host("cs", "h1")
    fake_sync.add_host("cs", "h2")
    decide(ha, "cs", "i-5-1-VM")
    vm = fake_sync.add_vm("cs", "i-5-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-5-1-VM").present_on_hypervisor, what="bound")
    settle(ha)
    fake_sync.set_host_live(h1, False)  # the host_metrics event first ...
    (action,) = wait_for(lambda: actions(ha), what="RESTART_VM")
    fake_sync.set_vm(vm, running_on="")  # ... then XAPI halts the VM
    settle(ha)
    assert [(a.kind, a.cause, a.host_uuid) for a in actions(ha)] == [(RESTART_VM, VM_HALTED, h1)]
    assert "pool HA" in action.message


def test_cloudstack_mode_without_pool_ha_still_asks_to_fence(ha, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    decide(ha, "cs", "i-6-1-VM")
    fake_sync.add_vm("cs", "i-6-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-6-1-VM").present_on_hypervisor, what="bound")
    settle(ha)
    fake_sync.set_host_live(h1, False)
    (action,) = wait_for(lambda: actions(ha), what="RESTART_VM")
    assert (action.cause, action.host_uuid) == (HOST_DEAD, h1)
