"""NATIVE clusters end to end: XenServer HA restarts, ha_service only reports (R5, R6, R7, R9, R11)."""

from __future__ import annotations

from tests.e2e.conftest import WAIT, StartStack, is_power_operation, pool_spec
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.testing import wait_until

RESTARTED = ha_service_pb2.HA_NOTIFICATION_KIND_VM_RESTARTED_BY_HYPERVISOR
DRIFT_REPAIRED = ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_REPAIRED
POOL_UNFENCED = ha_service_pb2.HA_NOTIFICATION_KIND_POOL_UNFENCED


def test_native_host_crash_is_restarted_by_xenserver_and_only_notified(start_stack: StartStack) -> None:
    """Pool HA restarts the protected VMs of a crashed host; ha_service notifies each restart and asks nothing."""
    protected = ["i-2-1-VM", "i-2-2-VM", "i-2-3-VM"]
    vms = [{"name": name, "memory_gib": 2, "host": 1} for name in protected]
    vms.append({"name": "i-2-4-VM", "memory_gib": 2, "host": 1})  # non-HA offering: nobody restarts it
    vms.append({"name": "i-2-5-VM", "memory_gib": 2, "host": 0})  # HA, on the surviving master
    stack = start_stack(
        [pool_spec("xs82", hosts={"count": 3, "memory_gib": 64}, ha_enabled=True, vms=vms)], {"native": "xs82"}
    )
    stack.set_native(True)
    for name in [*protected, "i-2-5-VM"]:
        decision = stack.decide("native", name)
        assert (decision.mode, decision.ha_restart_priority, decision.restarter) == (
            common_pb2.HA_MODE_NATIVE,
            "restart",
            ha_service_pb2.RESTARTER_HYPERVISOR,
        )
    assert stack.decide("native", "i-2-4-VM", ha=False).restarter == ha_service_pb2.RESTARTER_NONE
    stack.wait_bound("native", *protected, "i-2-4-VM", "i-2-5-VM")
    for name in [*protected, "i-2-5-VM"]:  # the decision reached XAPI through sync_service: the VM is protected
        rec = stack.vm_rec("native", name)
        assert (rec["ha_restart_priority"], rec["ha_always_run"]) == ("restart", True), name
    assert stack.vm_rec("native", "i-2-4-VM")["ha_restart_priority"] == ""

    events = stack.watch()
    mark = stack.call_log_mark()
    dead_host = stack.host_uuid("native", 1)
    stack.control("native").crash_host(1)

    def all_restarted() -> bool:
        return all(
            stack.vm_rec("native", n)["power_state"] == "Running" and stack.vm_host_uuid("native", n) != dead_host
            for n in protected
        )

    wait_until(all_restarted, WAIT, what="xapi_sim's pool HA to restart the protected VMs elsewhere")
    wait_until(
        lambda: {n.instance_name for n in events.notifications(RESTARTED)} >= set(protected),
        WAIT,
        what="VM_RESTARTED_BY_HYPERVISOR for every protected VM",
    )
    stack.settle()

    notices = {n.instance_name: n for n in events.notifications(RESTARTED)}
    assert set(notices) == set(protected), "only the VMs XenServer restarted are reported"
    assert len(events.notifications(RESTARTED)) == len(protected), "one notification per restart"
    for name in protected:
        notice = notices[name]
        assert notice.cluster_id == "native"
        assert notice.vm_uuid == stack.vm_rec("native", name)["uuid"]
        assert notice.old_host_uuid == dead_host
        assert notice.new_host_uuid == stack.vm_host_uuid("native", name) != dead_host
        assert notice.HasField("downtime") and notice.downtime.ToTimedelta().total_seconds() >= 0
    assert stack.vm_rec("native", "i-2-4-VM")["power_state"] == "Halted"  # pool HA leaves it down
    assert events.actions() == [] and stack.actions() == [], "ha_service never acts in a NATIVE cluster"

    # Nobody but the simulator's own HA touched a VM's power state: no power operation from any session.
    after = stack.calls(mark)
    assert [c for c in after if is_power_operation(c["method"])] == []
    assert stack.xsha_calls(mark), "sync_service kept following the pool through the crash"


def test_priority_cleared_behind_xshas_back_is_restored(start_stack: StartStack) -> None:
    """XenCenter clears a protected VM's priority; ha_service puts it back through sync_service and says so."""
    stack = start_stack([pool_spec("xs82", ha_enabled=True, vms=[{"name": "i-3-1-VM", "memory_gib": 2}])])
    stack.set_native(True)
    stack.decide("xs82", "i-3-1-VM")
    stack.wait_bound("xs82", "i-3-1-VM")
    events = stack.watch()
    mark = stack.call_log_mark()

    xencenter = stack.xapi_session("xs82", "XenCenter")
    ref = xencenter.xenapi.VM.get_by_name_label("i-3-1-VM")[0]
    xencenter.xenapi.VM.set_ha_restart_priority(ref, "")

    wait_until(lambda: bool(events.notifications(DRIFT_REPAIRED)), WAIT, what="HA_CONFIG_DRIFT_REPAIRED")
    wait_until(lambda: stack.vm_rec("xs82", "i-3-1-VM")["ha_restart_priority"] == "restart", WAIT, what="repair")
    notice = events.notifications(DRIFT_REPAIRED)[0]
    assert (notice.instance_name, notice.vm_uuid) == ("i-3-1-VM", stack.vm_rec("xs82", "i-3-1-VM")["uuid"])
    stack.wait_bound("xs82", "i-3-1-VM")  # the mirror shows the repair; the VM is protected again
    assert stack.managed("xs82", "i-3-1-VM").protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED
    stack.settle()
    assert len(events.notifications(DRIFT_REPAIRED)) == 1, "one repair, one notification"

    # Who did what: XenCenter cleared it, then sync_service (on ha_service's request) wrote it back.
    writes = [
        c for c in stack.calls(mark) if c["method"] in ("VM.set_ha_restart_priority", "VM_set_ha_restart_priority")
    ]
    assert [c["originator"] for c in writes] == ["XenCenter", "xsha-sync"]
    assert stack.actions() == []


def test_native_deployment_without_pool_ha_succeeds_with_warning(start_stack: StartStack) -> None:
    """R5: a NATIVE cluster whose pool HA is off still deploys (POOL_HA_DISABLED); R9: it is reported unfenced."""
    stack = start_stack([pool_spec("xs82", ha_enabled=False, vms=[{"name": "i-4-1-VM", "memory_gib": 2}])])
    events = stack.watch()
    stack.set_native(True)
    decision = stack.decide("xs82", "i-4-1-VM")
    assert decision.mode == common_pb2.HA_MODE_NATIVE
    assert decision.ha_restart_priority == "restart"
    assert decision.restarter == ha_service_pb2.RESTARTER_HYPERVISOR
    assert "POOL_HA_DISABLED" in {w.code for w in decision.warnings}
    stack.wait_bound("xs82", "i-4-1-VM")
    assert stack.vm_rec("xs82", "i-4-1-VM")["ha_restart_priority"] == "restart"

    policy = stack.fencing("xs82")
    assert (policy.mechanism, policy.unfenced, policy.storage_heartbeat_enabled) == (
        ha_service_pb2.FENCING_MECHANISM_NONE,
        True,
        False,
    )
    wait_until(lambda: bool(events.notifications(POOL_UNFENCED)), WAIT, what="POOL_UNFENCED")
    assert {n.cluster_id for n in events.notifications(POOL_UNFENCED)} == {"xs82"}
    assert "POOL_HA_DISABLED" in {w.code for w in stack.status("xs82").warnings}


def test_master_crash_restarts_are_notified_after_the_relist(start_stack: StartStack) -> None:
    """The pool master dies: a new master is elected, sync_service reconnects and lists the pool again, so it sees
    the old master dead and its VMs running elsewhere in one batch. Each restart is still notified."""
    protected = ["i-9-1-VM", "i-9-2-VM"]
    vms = [{"name": name, "memory_gib": 2, "host": 0} for name in protected]
    stack = start_stack([pool_spec("xs82", hosts={"count": 3, "memory_gib": 64}, ha_enabled=True, vms=vms)])
    stack.set_native(True)
    for name in protected:
        stack.decide("xs82", name)
    stack.wait_bound("xs82", *protected)
    events = stack.watch()
    old_master = stack.host_uuid("xs82", 0)
    stack.control("xs82").crash_host(0)

    wait_until(
        lambda: len(events.notifications(RESTARTED)) >= len(protected),
        WAIT,
        what="VM_RESTARTED_BY_HYPERVISOR for every VM of the old master",
    )
    stack.wait_mirrored("xs82", dead_hosts=(0,))
    notices = {n.instance_name: n for n in events.notifications(RESTARTED)}
    assert set(notices) == set(protected) and len(events.notifications(RESTARTED)) == len(protected)
    for name in protected:
        assert notices[name].old_host_uuid == old_master
        assert notices[name].new_host_uuid == stack.vm_host_uuid("xs82", name) != old_master
    assert stack.actions() == []
