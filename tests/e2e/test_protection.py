"""Protection edge cases end to end: XAPI refusing a priority (R5), a restart XenServer cannot make (R7), live
migration (R10). Simulated capacity: 8 GiB hosts with a 1 GiB control domain, 4 GiB VMs."""

from __future__ import annotations

from typing import Any

from ha_service.testing import ManualClock
from tests.e2e.conftest import WAIT, StartStack, pool_spec, sqlite_only
from xsha_api.v1 import ha_service_pb2
from xsha_common.testing import wait_until

UNPROTECTED = ha_service_pb2.PROTECTION_STATE_UNPROTECTED
PROTECTED = ha_service_pb2.PROTECTION_STATE_PROTECTED
VM_UNPROTECTED = ha_service_pb2.HA_NOTIFICATION_KIND_VM_UNPROTECTED
RESTARTED = ha_service_pb2.HA_NOTIFICATION_KIND_VM_RESTARTED_BY_HYPERVISOR
OVERDUE = ha_service_pb2.HA_NOTIFICATION_KIND_HA_RESTART_OVERDUE
RETRY_SECONDS = 60  # unprotected_retry_interval's default
OVERDUE_SECONDS = 120  # restart_overdue_grace's default


def _small_pool(name: str, hosts: int, vms: list[dict[str, Any]]) -> dict[str, Any]:
    return pool_spec(name, ha_enabled=True, dom0_memory_gib=1, hosts={"count": hosts, "memory_gib": 8}, vms=vms)


def test_priority_refused_by_failover_plan_is_reported_and_retried(
    start_stack: StartStack, manual_clock: ManualClock
) -> None:
    """R5: the deployment succeeds; XAPI refuses "restart" (HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN); the VM is
    recorded unprotected with the reason, reported, and protected by a retry once the pool allows it."""
    vms = [{"name": "i-6-1-VM", "memory_gib": 4, "host": 0}, {"name": "i-6-2-VM", "memory_gib": 4, "host": 1}]
    stack = start_stack([_small_pool("xs82", 2, vms)], clock=manual_clock)
    stack.set_native(True)
    events = stack.watch()
    stack.decide("xs82", "i-6-1-VM")
    stack.wait_bound("xs82", "i-6-1-VM")
    second = stack.decide("xs82", "i-6-2-VM")  # both on a 2-host pool tolerating 1 failure: no longer fits
    assert second.ha_restart_priority == "restart"

    wait_until(lambda: stack.managed("xs82", "i-6-2-VM").protection_state == UNPROTECTED, WAIT, what="UNPROTECTED")
    vm = stack.managed("xs82", "i-6-2-VM")
    assert "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN" in vm.unprotected_reason
    assert stack.vm_rec("xs82", "i-6-2-VM")["ha_restart_priority"] == ""
    wait_until(lambda: bool(events.notifications(VM_UNPROTECTED)), WAIT, what="VM_UNPROTECTED")
    assert [n.instance_name for n in events.notifications(VM_UNPROTECTED)] == ["i-6-2-VM"]
    assert stack.status("xs82").unprotected_vm_count == 1
    stack.settle()
    assert stack.managed("xs82", "i-6-2-VM").protection_state == UNPROTECTED, "no retry before the interval"

    # The operator lowers the failures to tolerate (XenCenter); the next retry protects the VM.
    admin = stack.xapi_session("xs82", "XenCenter")
    admin.xenapi.pool.set_ha_host_failures_to_tolerate(admin.xenapi.pool.get_all()[0], "0")
    manual_clock.advance(RETRY_SECONDS + 1)
    wait_until(lambda: stack.managed("xs82", "i-6-2-VM").protection_state == PROTECTED, WAIT, what="the retry")
    assert stack.vm_rec("xs82", "i-6-2-VM")["ha_restart_priority"] == "restart"
    assert len(events.notifications(VM_UNPROTECTED)) == 1, "reported once, not on every retry"
    assert stack.actions() == []


@sqlite_only
def test_protected_vm_xenserver_cannot_restart_is_overdue_not_acted_on(
    start_stack: StartStack, manual_clock: ManualClock
) -> None:
    """R7: two hosts die; the survivor has room for one protected VM. One restart is reported, the other VM is
    reported overdue after the grace period, and ha_service still asks for no action."""
    vms = [{"name": "i-7-1-VM", "memory_gib": 4, "host": 1}, {"name": "i-7-2-VM", "memory_gib": 4, "host": 2}]
    stack = start_stack([_small_pool("xs82", 3, vms)], clock=manual_clock)
    stack.set_native(True)
    for name in ("i-7-1-VM", "i-7-2-VM"):
        stack.decide("xs82", name)
    stack.wait_bound("xs82", "i-7-1-VM", "i-7-2-VM")
    events = stack.watch()
    survivor = stack.host_uuid("xs82", 0)

    stack.control("xs82").crash_host(1)
    wait_until(lambda: stack.vm_host_uuid("xs82", "i-7-1-VM") == survivor, WAIT, what="the first restart")
    stack.control("xs82").crash_host(2)
    wait_until(
        lambda: bool(stack.pool("xs82").messages("HA_PROTECTED_VM_RESTART_FAILED")), WAIT, what="XenServer giving up"
    )
    wait_until(lambda: bool(events.notifications(RESTARTED)), WAIT, what="VM_RESTARTED_BY_HYPERVISOR")
    stack.wait_mirrored("xs82", dead_hosts=(1, 2), halted=("i-7-2-VM",))
    assert events.notifications(OVERDUE) == [], "not before the grace period"
    manual_clock.advance(OVERDUE_SECONDS + 1)
    wait_until(lambda: bool(events.notifications(OVERDUE)), WAIT, what="HA_RESTART_OVERDUE")
    stack.settle()
    assert [n.instance_name for n in events.notifications(RESTARTED)] == ["i-7-1-VM"]
    (overdue,) = events.notifications(OVERDUE)
    assert (overdue.instance_name, overdue.old_host_uuid) == ("i-7-2-VM", stack.host_uuid("xs82", 2))
    assert stack.vm_rec("xs82", "i-7-2-VM")["power_state"] == "Halted"
    assert stack.actions() == [] and events.actions() == []


@sqlite_only
def test_live_migration_is_followed_without_action_or_notification(start_stack: StartStack) -> None:
    """R10: host maintenance moves VMs with VM.pool_migrate; the mirror follows, ha_service does nothing."""
    vms = [{"name": "i-8-1-VM", "memory_gib": 2, "host": 1}]
    stack = start_stack([pool_spec("xs82", ha_enabled=True, vms=vms)])
    stack.set_native(True)
    stack.decide("xs82", "i-8-1-VM")
    stack.wait_bound("xs82", "i-8-1-VM")
    events = stack.watch()
    orchestrator = stack.xapi_session("xs82", "cloudstack-orchestrator")
    vm = orchestrator.xenapi.VM.get_by_name_label("i-8-1-VM")[0]
    target = orchestrator.xenapi.host.get_by_uuid(stack.host_uuid("xs82", 0))
    orchestrator.xenapi.VM.pool_migrate(vm, target, {"live": "true"})
    destination = stack.host_uuid("xs82", 0)
    wait_until(
        lambda: stack.managed("xs82", "i-8-1-VM").observed_host_uuid == destination, WAIT, what="the mirror to follow"
    )
    stack.settle()
    assert events.notifications() == [] and events.actions() == []
    assert stack.managed("xs82", "i-8-1-VM").protection_state == PROTECTED
