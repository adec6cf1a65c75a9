"""System VM application HA end to end (R7): stopped -> restart, destroyed -> recreate, agent lost -> replace."""

from __future__ import annotations

from ha_service.testing import ManualClock
from tests.e2e.conftest import WAIT, StartStack, pool_spec
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.testing import wait_until

RESTART_SYSTEM_VM = ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM
RECREATE_SYSTEM_VM = ha_service_pb2.HA_ACTION_KIND_RECREATE_SYSTEM_VM
REPLACE_SYSTEM_VM = ha_service_pb2.HA_ACTION_KIND_REPLACE_SYSTEM_VM

STOPPED_PROXY = "v-1-VM"
DESTROYED_PROXY = "v-2-VM"
SILENT_PROXY = "v-3-VM"
SSVM = "s-4-VM"
GRACE_SECONDS = 120  # agent_disconnected_grace's default


def test_console_proxy_stopped_destroyed_and_disconnected(start_stack: StartStack, manual_clock: ManualClock) -> None:
    names = [STOPPED_PROXY, DESTROYED_PROXY, SILENT_PROXY, SSVM]
    stack = start_stack(
        [pool_spec("xs82", ha_enabled=True, vms=[{"name": n, "memory_gib": 1} for n in names])],
        clock=manual_clock,
    )
    stack.set_native(True)  # system VMs keep CloudStack's application HA in every mode
    for name in names:
        vm_type = common_pb2.VM_TYPE_SECONDARY_STORAGE_VM if name == SSVM else common_pb2.VM_TYPE_CONSOLE_PROXY
        decision = stack.decide("xs82", name, ha=False, vm_type=vm_type)
        assert (decision.mode, decision.ha_restart_priority, decision.restarter) == (
            common_pb2.HA_MODE_NATIVE,
            "",
            ha_service_pb2.RESTARTER_CLOUDSTACK,
        )
    stack.wait_bound("xs82", *names)
    events = stack.watch()

    # Someone else stops one console proxy and destroys another through XAPI.
    admin = stack.xapi_session("xs82", "XenCenter")
    admin.xenapi.VM.clean_shutdown(admin.xenapi.VM.get_by_name_label(STOPPED_PROXY)[0])
    destroyed = admin.xenapi.VM.get_by_name_label(DESTROYED_PROXY)[0]
    admin.xenapi.VM.hard_shutdown(destroyed)
    admin.xenapi.VM.destroy(destroyed)

    def kinds_of(name: str) -> list[int]:
        return [a.kind for a in stack.actions() if a.instance_name == name]

    wait_until(lambda: RESTART_SYSTEM_VM in kinds_of(STOPPED_PROXY), WAIT, what="RESTART_SYSTEM_VM")

    # When sync_service saw the destroyed proxy Halted before it vanished, a RESTART_SYSTEM_VM comes first and
    # ha_service asks for one system-VM action at a time: the orchestrator tries it, finds the VM gone and says so;
    # then the recreate follows. When the shutdown and the destroy reach it in one event batch, only the recreate.
    def recreate_or_stale_restart() -> bool:
        for action in stack.actions(ha_service_pb2.HA_ACTION_STATE_PENDING):
            if (action.instance_name, action.kind) == (DESTROYED_PROXY, RESTART_SYSTEM_VM):
                stack.stub().AckHaAction(
                    ha_service_pb2.AckHaActionRequest(
                        action_id=action.action_id,
                        outcome=ha_service_pb2.HA_ACTION_STATE_FAILED,
                        message="VM.start: the VM does not exist",
                    )
                )
        return RECREATE_SYSTEM_VM in kinds_of(DESTROYED_PROXY)

    wait_until(recreate_or_stale_restart, WAIT, what="RECREATE_SYSTEM_VM")
    stack.settle()
    assert kinds_of(STOPPED_PROXY) == [RESTART_SYSTEM_VM]
    assert kinds_of(DESTROYED_PROXY).count(RECREATE_SYSTEM_VM) == 1
    assert kinds_of(DESTROYED_PROXY).count(RESTART_SYSTEM_VM) <= 1
    assert set(kinds_of(DESTROYED_PROXY)) <= {RESTART_SYSTEM_VM, RECREATE_SYSTEM_VM}
    assert not stack.managed("xs82", DESTROYED_PROXY).present_on_hypervisor
    restart = next(a for a in stack.actions() if a.instance_name == STOPPED_PROXY)
    assert (restart.vm_type, restart.vm_uuid) == (
        common_pb2.VM_TYPE_CONSOLE_PROXY,
        stack.vm_rec("xs82", STOPPED_PROXY)["uuid"],
    )

    # The orchestrator reports a running console proxy's agent Disconnected: nothing until the grace period ends.
    stack.stub().ReportAgentState(
        ha_service_pb2.ReportAgentStateRequest(
            cluster_id="xs82", instance_name=SILENT_PROXY, status=common_pb2.AGENT_STATUS_DISCONNECTED
        )
    )
    manual_clock.advance(GRACE_SECONDS - 1)
    stack.settle()
    assert kinds_of(SILENT_PROXY) == []
    manual_clock.advance(2)
    wait_until(lambda: kinds_of(SILENT_PROXY) == [REPLACE_SYSTEM_VM], WAIT, what="REPLACE_SYSTEM_VM")
    stack.settle()
    assert kinds_of(SILENT_PROXY) == [REPLACE_SYSTEM_VM]
    assert kinds_of(SSVM) == [], "the secondary storage VM is fine"
    assert stack.vm_rec("xs82", SILENT_PROXY)["power_state"] == "Running", "xsha replaces nothing itself"
    wait_until(lambda: len(events.actions()) >= len(stack.actions()), WAIT, what="every action on the stream")
    streamed = {(a.instance_name, a.kind) for a in events.actions()}
    assert streamed == {(a.instance_name, a.kind) for a in stack.actions()}
