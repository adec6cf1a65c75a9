"""The demo's deployment and failover, end to end: no spurious action or drift notification (R7, R11)."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import WAIT, Stack, StartStack, pool_spec, sqlite_only
from xsha_api.v1 import ha_service_pb2
from xsha_common.testing import wait_until

RUNNING = ha_service_pb2.WANTED_STATE_RUNNING
DRIFT_KINDS = (
    ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_REPAIRED,
    ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_DETECTED,
)


def _deploy_like_the_demo(stack: Stack, cluster_id: str, name: str, orchestrator: Any) -> None:
    """Decide, create the VM Halted *without* the decided priority, VM.start_on host 1, and say RUNNING at once
    (the mirror still shows it Halted)."""
    stack.decide(cluster_id, name)
    stack.control(cluster_id).add_vms(1, {"name": name, "power_state": "Halted", "memory_gib": 2})
    vm = orchestrator.xenapi.VM.get_by_name_label(name)[0]
    host = orchestrator.xenapi.host.get_by_uuid(stack.host_uuid(cluster_id, 1))
    orchestrator.xenapi.VM.start_on(vm, host, False, False)
    stack.set_wanted(cluster_id, name, RUNNING)


@sqlite_only
def test_demo_deploys_and_fails_over_without_spurious_events(start_stack: StartStack) -> None:
    stack = start_stack(
        [pool_spec("xs82", ha_enabled=True), pool_spec("xs61", "xenserver-6.1")], {"nat": "xs82", "old": "xs61"}
    )
    stack.set_native(True)
    events = stack.watch()
    _deploy_like_the_demo(stack, "nat", "i-2-100-VM", stack.xapi_session("nat", "cloudstack-orchestrator"))
    orchestrator = stack.xapi_session("old", "cloudstack-orchestrator")
    _deploy_like_the_demo(stack, "old", "i-5-100-VM", orchestrator)
    stack.wait_bound("nat", "i-2-100-VM")
    stack.wait_bound("old", "i-5-100-VM")
    stack.settle()
    stack.settle()
    assert stack.actions() == [], "a VM that has just been started did not die"
    assert [n for n in events.notifications() if n.kind in DRIFT_KINDS] == [], "first application is not drift"

    # The old cluster's host dies: exactly one RESTART_VM, naming the mirrored host it ran on.
    dead_host = stack.host_uuid("old", 1)
    stack.control("old").crash_host(1)
    wait_until(lambda: bool(stack.actions()), WAIT, what="RESTART_VM")
    stack.settle()
    (action,) = stack.actions()
    assert (action.kind, action.cause, action.host_uuid) == (
        ha_service_pb2.HA_ACTION_KIND_RESTART_VM,
        ha_service_pb2.RESTART_CAUSE_HOST_DEAD,
        dead_host,
    )
    # The orchestrator fences, resets, starts it on the other host and acknowledges straight away.
    control = stack.control("old")
    control.change_vm("i-5-100-VM", "power_state", "Halted")
    control.change_vm("i-5-100-VM", "resident_on", "OpaqueRef:NULL")
    vm = orchestrator.xenapi.VM.get_by_name_label("i-5-100-VM")[0]
    spare = orchestrator.xenapi.host.get_by_uuid(stack.host_uuid("old", 0))
    orchestrator.xenapi.VM.start_on(vm, spare, False, False)
    stack.stub().AckHaAction(
        ha_service_pb2.AckHaActionRequest(action_id=action.action_id, outcome=ha_service_pb2.HA_ACTION_STATE_SUCCEEDED)
    )
    stack.set_wanted("old", "i-5-100-VM", RUNNING)
    wait_until(
        lambda: stack.managed("old", "i-5-100-VM").observed_host_uuid == stack.host_uuid("old", 0),
        WAIT,
        what="the restart to be mirrored",
    )
    stack.settle()
    stack.settle()
    assert [a.action_id for a in stack.actions()] == [action.action_id]
    assert [n for n in events.notifications() if n.kind in DRIFT_KINDS] == []
