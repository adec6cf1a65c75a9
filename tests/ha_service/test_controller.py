"""The controller (R5, R7, R9, R11) through the RPCs, against the sync_service test double."""

from __future__ import annotations

import threading

import grpc
import pytest

from ha_service.store.models import ManagedVmRow
from ha_service.testing import ManualClock, RunningHaService, running_ha_service, wait_for
from tests.ha_service.fake_sync import FakeSync
from tests.ha_service.test_controller_batching import TransactionCounter
from tests.ha_service.test_controller_lease_fence import stored_revision
from tests.ha_service.test_settings_decisions import decide, set_global
from xsha_api.v1 import common_pb2, ha_service_pb2

PENDING = ha_service_pb2.HA_ACTION_STATE_PENDING


def actions(ha: RunningHaService, *states: int) -> list[ha_service_pb2.HaAction]:
    request = ha_service_pb2.ListHaActionsRequest(states=list(states))  # type: ignore[arg-type]
    return list(ha.stub().ListHaActions(request).actions)


class Watcher:
    """Collects WatchHaEvents events on a thread."""

    def __init__(self, ha: RunningHaService, since: int = 0, **kwargs: object) -> None:
        request = ha_service_pb2.WatchHaEventsRequest(since_revision=since, **kwargs)  # type: ignore[arg-type]
        request.bookmark_interval.FromMilliseconds(200)
        self.call = ha.stub().WatchHaEvents(request)
        self.events: list[ha_service_pb2.HaEvent] = []
        self.bookmarks: list[int] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.call:
                if item.HasField("event"):
                    self.events.append(item.event)
                else:
                    self.bookmarks.append(item.bookmark.revision)
        except grpc.RpcError as error:
            self.error = error

    def notifications(self, kind: int) -> list[ha_service_pb2.HaNotification]:
        return [e.notification for e in self.events if e.HasField("notification") and e.notification.kind == kind]

    def actions(self) -> list[ha_service_pb2.HaAction]:
        return [e.action for e in self.events if e.HasField("action")]

    def close(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]
        self.thread.join(5)


def managed(ha: RunningHaService, cluster: str, name: str) -> ha_service_pb2.ManagedVm:
    request = ha_service_pb2.GetManagedVmRequest(cluster_id=cluster, instance_name=name)
    return ha.stub().GetManagedVm(request).vm


def test_cloudstack_cluster_host_crash_emits_one_restart_per_wanted_ha_vm(ha, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1, h2 = fake_sync.add_host("cs", "h1"), fake_sync.add_host("cs", "h2")
    names = {"i-1-1-VM": True, "i-1-2-VM": True, "i-1-3-VM": False, "i-1-4-VM": True}
    for name, ha_enabled in names.items():
        decide(ha, "cs", name, ha_enabled=ha_enabled)
        fake_sync.add_vm("cs", name, running_on=h1)
    ha.stub().SetVmWantedState(
        ha_service_pb2.SetVmWantedStateRequest(
            cluster_id="cs", instance_name="i-1-4-VM", wanted_state=ha_service_pb2.WANTED_STATE_STOPPED
        )
    )
    wait_for(lambda: all(managed(ha, "cs", n).present_on_hypervisor for n in names), what="VMs bound")
    fake_sync.set_vm(fake_sync.vm_by_name("i-1-4-VM").uuid, running_on="")  # stopped on purpose
    watcher = Watcher(ha)
    fake_sync.set_host_live(h1, False)  # no pool HA: XAPI still says Running on the dead host
    found = wait_for(lambda: len(actions(ha)) >= 2 and actions(ha), what="two RESTART_VM")
    assert sorted(a.instance_name for a in found) == ["i-1-1-VM", "i-1-2-VM"]
    assert {(a.kind, a.cause, a.host_uuid) for a in found} == {
        (ha_service_pb2.HA_ACTION_KIND_RESTART_VM, ha_service_pb2.RESTART_CAUSE_HOST_DEAD, h1)
    }
    # The orchestrator fences and resets the power state: Halted is the same outage, no second action.
    for name in ("i-1-1-VM", "i-1-2-VM"):
        fake_sync.set_vm(fake_sync.vm_by_name(name).uuid, running_on="")
    ha.controller.wait_processed()
    ha.controller.tick_now()
    ha.controller.wait_processed()
    assert len(actions(ha)) == 2
    wait_for(lambda: len(watcher.actions()) == 2, what="actions on the watch stream")
    # Ack: idempotent with the same outcome, FAILED_PRECONDITION with another.
    ack = ha_service_pb2.AckHaActionRequest(
        action_id=found[0].action_id, outcome=ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
    )
    assert ha.stub().AckHaAction(ack).action.state == ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
    assert ha.stub().AckHaAction(ack).action.state == ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
    ack.outcome = ha_service_pb2.HA_ACTION_STATE_FAILED
    with pytest.raises(grpc.RpcError) as caught:
        ha.stub().AckHaAction(ack)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A reconnecting watcher gets the unacknowledged one again, marked redelivered.
    last = max(e.revision for e in watcher.events)
    watcher.close()
    again = Watcher(ha, since=last)
    wait_for(lambda: again.events, what="redelivery")
    assert [(e.redelivered, e.action.action_id) for e in again.events[:1]] == [(True, found[1].action_id)]
    again.close()
    # The VM restarted by the orchestrator and halted again (new outage): a new action.
    vm = fake_sync.vm_by_name("i-1-1-VM").uuid
    fake_sync.set_vm(vm, running_on=h2)
    ha.controller.wait_processed()
    fake_sync.set_vm(vm, running_on="")
    wait_for(
        lambda: [a for a in actions(ha, PENDING) if a.cause == ha_service_pb2.RESTART_CAUSE_VM_HALTED],
        what="RESTART_VM VM_HALTED",
    )


def test_native_cluster_host_crash_only_notifies(ha, fake_sync: FakeSync, clock: ManualClock) -> None:
    fake_sync.add_pool("nat", "ch82", ha=True)
    set_global(ha, True)
    h1, h2 = fake_sync.add_host("nat", "h1"), fake_sync.add_host("nat", "h2")
    for name in ("i-2-1-VM", "i-2-2-VM"):
        decide(ha, "nat", name)
        fake_sync.add_vm("nat", name, running_on=h1)
    # The controller applies the decided priority once the VM appears (decided before it existed).
    wait_for(
        lambda: all(
            managed(ha, "nat", n).protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED
            for n in ("i-2-1-VM", "i-2-2-VM")
        ),
        what="protected",
    )
    assert fake_sync.vm_by_name("i-2-1-VM").ha_restart_priority == "restart"
    watcher = Watcher(ha)
    fake_sync.crash_host_native(h1, restart_on=h2)
    kind = ha_service_pb2.HA_NOTIFICATION_KIND_VM_RESTARTED_BY_HYPERVISOR
    wait_for(lambda: len(watcher.notifications(kind)) == 2, what="VM_RESTARTED_BY_HYPERVISOR x2")
    assert {(n.old_host_uuid, n.new_host_uuid) for n in watcher.notifications(kind)} == {(h1, h2)}
    assert all(n.HasField("downtime") for n in watcher.notifications(kind))
    assert actions(ha) == []
    watcher.close()


def test_native_restart_overdue_after_grace(ha, fake_sync: FakeSync, clock: ManualClock) -> None:
    fake_sync.add_pool("nat", "ch82", ha=True)
    set_global(ha, True)
    h1 = fake_sync.add_host("nat", "h1")
    decide(ha, "nat", "i-3-1-VM")
    vm = fake_sync.add_vm("nat", "i-3-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "nat", "i-3-1-VM").protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED)
    fake_sync.set_host_live(h1, False)
    fake_sync.set_vm(vm, running_on="")  # reset to Halted, never restarted (no capacity)
    # The change reaches the controller over its watch stream: wait until it is applied (the VM is down from now),
    # not just until the work queued so far is done, or the clock below could move before the VM went down.
    wait_for(lambda: managed(ha, "nat", "i-3-1-VM").observed_power_state == common_pb2.XAPI_POWER_STATE_HALTED)
    ha.controller.wait_processed()
    watcher = Watcher(ha)
    kind = ha_service_pb2.HA_NOTIFICATION_KIND_HA_RESTART_OVERDUE
    ha.controller.tick_now()
    ha.controller.wait_processed()
    assert watcher.notifications(kind) == []
    clock.advance(121)
    ha.controller.tick_now()
    wait_for(lambda: watcher.notifications(kind), what="HA_RESTART_OVERDUE")
    assert actions(ha) == []
    watcher.close()


def test_system_vms_restart_recreate_replace(ha, fake_sync: FakeSync, clock: ManualClock) -> None:
    fake_sync.add_pool("c", "ch82", ha=True)
    h1 = fake_sync.add_host("c", "h1")
    decide(ha, "c", "v-1-VM", vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY, ha_enabled=False)
    decide(ha, "c", "s-2-VM", vm_type=common_pb2.VM_TYPE_SECONDARY_STORAGE_VM, ha_enabled=False)
    decide(ha, "c", "v-3-VM", vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY, ha_enabled=False)
    cpvm = fake_sync.add_vm("c", "v-1-VM", running_on=h1)
    ssvm = fake_sync.add_vm("c", "s-2-VM", running_on=h1)
    fake_sync.add_vm("c", "v-3-VM", running_on=h1)
    wait_for(lambda: managed(ha, "c", "v-3-VM").present_on_hypervisor)
    fake_sync.set_vm(cpvm, running_on="")
    wait_for(lambda: [a for a in actions(ha) if a.kind == ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM])
    fake_sync.remove_vm(ssvm)
    wait_for(lambda: [a for a in actions(ha) if a.kind == ha_service_pb2.HA_ACTION_KIND_RECREATE_SYSTEM_VM])
    report = ha_service_pb2.ReportAgentStateRequest(
        cluster_id="c", instance_name="v-3-VM", status=common_pb2.AGENT_STATUS_DISCONNECTED
    )
    ha.stub().ReportAgentState(report)
    ha.controller.tick_now()
    ha.controller.wait_processed()
    assert not [a for a in actions(ha) if a.kind == ha_service_pb2.HA_ACTION_KIND_REPLACE_SYSTEM_VM]
    clock.advance(121)
    ha.controller.tick_now()
    replace = wait_for(lambda: [a for a in actions(ha) if a.kind == ha_service_pb2.HA_ACTION_KIND_REPLACE_SYSTEM_VM])
    assert replace[0].instance_name == "v-3-VM"
    kinds = sorted((a.instance_name, a.kind) for a in actions(ha))
    assert kinds == [
        ("s-2-VM", ha_service_pb2.HA_ACTION_KIND_RECREATE_SYSTEM_VM),
        ("v-1-VM", ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM),
        ("v-3-VM", ha_service_pb2.HA_ACTION_KIND_REPLACE_SYSTEM_VM),
    ]


def test_drift_repaired_and_report_only(ha, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("nat", "ch82", ha=True)
    set_global(ha, True)
    h1 = fake_sync.add_host("nat", "h1")
    decide(ha, "nat", "i-4-1-VM")
    vm = fake_sync.add_vm("nat", "i-4-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "nat", "i-4-1-VM").protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED)
    watcher = Watcher(ha)
    fake_sync.set_vm(vm, priority="")  # cleared in XenCenter
    repaired = ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_REPAIRED
    wait_for(lambda: watcher.notifications(repaired), what="HA_CONFIG_DRIFT_REPAIRED")
    assert fake_sync.vms[vm].ha_restart_priority == "restart"
    request = ha_service_pb2.UpdateSettingsRequest()
    getattr(request, "global").drift_repair_mode = ha_service_pb2.DRIFT_REPAIR_MODE_REPORT_ONLY
    ha.stub().UpdateSettings(request)
    fake_sync.set_vm(vm, priority="best-effort")
    detected = ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_DETECTED
    wait_for(lambda: watcher.notifications(detected), what="HA_CONFIG_DRIFT_DETECTED")
    assert fake_sync.vms[vm].ha_restart_priority == "best-effort"
    watcher.close()


def test_unprotected_vm_is_retried(ha, fake_sync: FakeSync, clock: ManualClock) -> None:
    fake_sync.add_pool("nat", "ch82", ha=True)
    set_global(ha, True)
    h1 = fake_sync.add_host("nat", "h1")
    decide(ha, "nat", "i-5-1-VM")
    watcher = Watcher(ha)
    fake_sync.refuse_restart.add("i-5-1-VM")
    fake_sync.add_vm("nat", "i-5-1-VM", running_on=h1)
    state = wait_for(
        lambda: (
            (m := managed(ha, "nat", "i-5-1-VM")).protection_state == ha_service_pb2.PROTECTION_STATE_UNPROTECTED and m
        )
    )
    assert "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN" in state.unprotected_reason
    wait_for(lambda: watcher.notifications(ha_service_pb2.HA_NOTIFICATION_KIND_VM_UNPROTECTED))
    fake_sync.refuse_restart.clear()
    clock.advance(61)
    ha.controller.tick_now()
    wait_for(lambda: managed(ha, "nat", "i-5-1-VM").protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED)
    watcher.close()


def test_pool_unfenced_notified_once(ha, fake_sync: FakeSync) -> None:
    set_global(ha, True)
    fake_sync.add_pool("unf", "ch82", ha=False)
    watcher = Watcher(ha)
    kind = ha_service_pb2.HA_NOTIFICATION_KIND_POOL_UNFENCED
    wait_for(lambda: watcher.notifications(kind), what="POOL_UNFENCED")
    ha.controller.tick_now()
    ha.controller.wait_processed()
    assert len(watcher.notifications(kind)) == 1
    watcher.close()


def test_an_idle_tick_writes_nothing_however_many_pools(
    ha, fake_sync: FakeSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fencing check reads every pool at once and writes only for a pool whose state changes; it is the same
    check (the unfenced pool is still told once, and told again after being fenced and unfenced)."""
    set_global(ha, True)
    for n in range(5):
        fake_sync.add_pool(f"fenced-{n}", "ch82", ha=True)
    fake_sync.add_pool("unf", "ch82", ha=False)
    watcher = Watcher(ha)
    kind = ha_service_pb2.HA_NOTIFICATION_KIND_POOL_UNFENCED
    wait_for(lambda: watcher.notifications(kind), what="POOL_UNFENCED")
    ha.controller.tick_now()
    assert ha.controller.wait_processed()

    writes = TransactionCounter(monkeypatch)
    for _ in range(3):
        ha.controller.tick_now()
        assert ha.controller.wait_processed()
    assert writes.count == 0

    fake_sync.set_pool_ha("unf", ha_enabled=True)
    fake_sync.set_pool_ha("unf", ha_enabled=False)
    wait_for(lambda: len(watcher.notifications(kind)) == 2, what="POOL_UNFENCED again after a fenced spell")
    assert [n.cluster_id for n in watcher.notifications(kind)] == ["unf", "unf"]
    watcher.close()


def test_actions_survive_restart_and_controller_resumes(
    sqlite_url: str, fake_sync: FakeSync, clock: ManualClock
) -> None:
    fake_sync.add_pool("cs", "xs65", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    with running_ha_service(sqlite_url, fake_sync.server.address, clock=clock) as ha:
        decide(ha, "cs", "i-6-1-VM")
        vm = fake_sync.add_vm("cs", "i-6-1-VM", running_on=h1)
        wait_for(lambda: managed(ha, "cs", "i-6-1-VM").present_on_hypervisor)
        fake_sync.set_vm(vm, running_on="")
        first = wait_for(lambda: actions(ha, PENDING))
        ha.controller.wait_processed()
    # While ha_service is down the VM runs again and halts again: replayed from the persisted revision.
    fake_sync.set_vm(vm, running_on=h1)
    with running_ha_service(sqlite_url, fake_sync.server.address, clock=clock) as ha:
        assert [a.action_id for a in actions(ha, PENDING)] == [first[0].action_id]
        watcher = Watcher(ha, since=0)
        wait_for(lambda: watcher.actions(), what="pending action delivered")
        ha.stub().AckHaAction(
            ha_service_pb2.AckHaActionRequest(
                action_id=first[0].action_id, outcome=ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
            )
        )
        fake_sync.set_vm(vm, running_on="")
        wait_for(lambda: actions(ha, PENDING), what="new outage action")
        assert ha.controller.snapshots_taken == 1
        watcher.close()


def test_a_host_death_replayed_on_resume_restarts_its_vms(
    sqlite_url: str, fake_sync: FakeSync, clock: ManualClock
) -> None:
    """A controller resumes from its persisted revision: the listing already shows the host dead, so the replayed
    death is no liveness change against the listed state; it must still restart the host's VMs."""
    fake_sync.add_pool("cs", "xs65", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    with running_ha_service(sqlite_url, fake_sync.server.address, clock=clock) as ha:
        decide(ha, "cs", "i-8-1-VM")
        fake_sync.add_vm("cs", "i-8-1-VM", running_on=h1)
        wait_for(lambda: managed(ha, "cs", "i-8-1-VM").present_on_hypervisor)
        wait_for(
            lambda: stored_revision(ha.controller.sessions) >= fake_sync.revision,
            what="the controller's revision persisted",
        )
    fake_sync.set_host_live(h1, False)
    with running_ha_service(sqlite_url, fake_sync.server.address, clock=clock) as ha:
        found = wait_for(lambda: actions(ha, PENDING), what="RESTART_VM for the replayed host death")
        assert [(a.instance_name, a.kind, a.cause) for a in found] == [
            ("i-8-1-VM", ha_service_pb2.HA_ACTION_KIND_RESTART_VM, ha_service_pb2.RESTART_CAUSE_HOST_DEAD)
        ]
        assert ha.controller.snapshots_taken == 1


def test_a_host_that_died_unwatched_restarts_its_vms_after_a_fresh_listing(ha, fake_sync: FakeSync) -> None:
    """The watch lost its place (OUT_OF_RANGE) while a host died and its VMs did not change: the fresh listing
    shows the host dead and the VMs as already observed; the death must still restart them."""
    fake_sync.add_pool("cs", "xs65", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    decide(ha, "cs", "i-8-2-VM")
    fake_sync.add_vm("cs", "i-8-2-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-8-2-VM").present_on_hypervisor)
    fake_sync.down = True
    wait_for(lambda: not ha.controller.connected.is_set(), what="watch dropped")
    fake_sync.set_host_live(h1, False)
    fake_sync.forget_history()
    fake_sync.down = False
    found = wait_for(lambda: actions(ha, PENDING), what="RESTART_VM after the re-list")
    assert [(a.instance_name, a.kind) for a in found] == [("i-8-2-VM", ha_service_pb2.HA_ACTION_KIND_RESTART_VM)]
    assert ha.controller.snapshots_taken >= 2


def test_out_of_range_relists(ha, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("cs", "xs65", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    decide(ha, "cs", "i-7-1-VM")
    vm = fake_sync.add_vm("cs", "i-7-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "cs", "i-7-1-VM").present_on_hypervisor)
    fake_sync.down = True
    wait_for(lambda: not ha.controller.connected.is_set(), what="watch dropped")
    fake_sync.set_vm(vm, running_on="")
    fake_sync.forget_history()
    fake_sync.down = False
    wait_for(lambda: actions(ha, PENDING), what="action after re-list")
    assert ha.controller.snapshots_taken >= 2


def test_work_arriving_while_the_lease_is_unproven_is_held_then_done(ha, fake_sync: FakeSync) -> None:
    """A late lease renewal makes the controller unsure it still holds the lease: it must act on nothing then,
    and lose nothing either (a host death seen meanwhile still gets its actions once the lease is proven)."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    host = fake_sync.add_host("cs", "h1")
    names = ["i-1-1-VM", "i-1-2-VM"]
    for name in names:
        decide(ha, "cs", name, ha_enabled=True)
        fake_sync.add_vm("cs", name, running_on=host)
    wait_for(lambda: all(managed(ha, "cs", n).present_on_hypervisor for n in names), what="VMs bound")
    ha.controller.wait_processed()

    proven = threading.Event()
    ha.controller.is_active_replica = proven.is_set
    fake_sync.set_host_live(host, False)
    wait_for(lambda: ha.controller._queue.empty(), what="the host's death taken off the queue")
    assert not ha.controller.wait_processed(timeout=0.5), "work is held while the lease is unproven"
    assert actions(ha) == []

    proven.set()
    found = wait_for(lambda: len(actions(ha)) >= 2 and actions(ha), what="two RESTART_VM once the lease is proven")
    assert sorted(a.instance_name for a in found) == names
    assert {a.cause for a in found} == {ha_service_pb2.RESTART_CAUSE_HOST_DEAD}


def test_an_acknowledged_action_lets_the_next_tick_issue_the_follow_up(
    ha, fake_sync: FakeSync, clock: ManualClock
) -> None:
    """A console proxy halts (RESTART_SYSTEM_VM) and, while that action is pending, disappears: nothing more is
    asked then. Once CloudStack acknowledges the restart as failed, the next tick (a narrow one, well inside the
    full-resync interval) asks for RECREATE_SYSTEM_VM; only the ack can have made it due."""
    fake_sync.add_pool("c", "ch82", ha=True)
    h1 = fake_sync.add_host("c", "h1")
    decide(ha, "c", "v-1-VM", vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY, ha_enabled=False)
    cpvm = fake_sync.add_vm("c", "v-1-VM", running_on=h1)
    wait_for(lambda: managed(ha, "c", "v-1-VM").present_on_hypervisor)
    ha.controller.tick_now()  # the first tick is a full resync; the ones below are not
    ha.controller.wait_processed()
    fake_sync.set_vm(cpvm, running_on="")
    restart = wait_for(lambda: actions(ha, PENDING), what="RESTART_SYSTEM_VM")
    assert [a.kind for a in restart] == [ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM]
    fake_sync.remove_vm(cpvm)
    ha.controller.wait_processed()
    clock.advance(1)
    ha.controller.tick_now()
    ha.controller.wait_processed()
    assert [a.kind for a in actions(ha)] == [ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM]

    ha.stub().AckHaAction(
        ha_service_pb2.AckHaActionRequest(action_id=restart[0].action_id, outcome=ha_service_pb2.HA_ACTION_STATE_FAILED)
    )
    clock.advance(1)
    ha.controller.tick_now()
    recreate = wait_for(lambda: actions(ha, PENDING), what="RECREATE_SYSTEM_VM after the ack")
    assert [(a.instance_name, a.kind) for a in recreate] == [
        ("v-1-VM", ha_service_pb2.HA_ACTION_KIND_RECREATE_SYSTEM_VM)
    ]


def test_a_tick_selects_only_the_down_vms_time_or_an_ack_may_change(
    ha, fake_sync: FakeSync, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between full resyncs a tick reconciles only the down VMs a time rule, an agent report or an ack can change;
    a full resync (every `full_resync_interval`) reconciles every down VM."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    names = ["i-1-1-VM", "i-1-2-VM", "i-1-3-VM"]
    for name in names:
        decide(ha, "cs", name, ha_enabled=True)
    vms = [fake_sync.add_vm("cs", name, running_on=h1) for name in names]
    wait_for(lambda: all(managed(ha, "cs", n).present_on_hypervisor for n in names), what="VMs bound")
    for vm in vms:
        fake_sync.set_vm(vm, running_on="")  # halted: a RESTART_VM each, then nothing time-dependent
    pending = wait_for(lambda: len(actions(ha, PENDING)) == 3 and actions(ha, PENDING), what="three RESTART_VM")
    ha.controller.tick_now()
    ha.controller.wait_processed()

    reconciled: list[int] = []
    original = ha.controller._reconcile_again

    def spy(session, row_id):  # type: ignore[no-untyped-def]
        reconciled.append(row_id)
        return original(session, row_id)

    monkeypatch.setattr(ha.controller, "_reconcile_again", spy)

    def one_tick(advance: float = 1) -> set[str]:
        # A background tick between the clear and ours selects for the same clock, so it adds nothing ours lacks.
        reconciled.clear()
        clock.advance(advance)
        ha.controller.tick_now()
        assert ha.controller.wait_processed()
        return {managed_name(ha, row_id) for row_id in reconciled}

    assert one_tick() == set()
    first = next(a for a in pending if a.instance_name == "i-1-2-VM")
    ha.stub().AckHaAction(
        ha_service_pb2.AckHaActionRequest(action_id=first.action_id, outcome=ha_service_pb2.HA_ACTION_STATE_FAILED)
    )
    assert one_tick() == {"i-1-2-VM"}
    assert one_tick(ha.controller.config.full_resync_interval) == set(names)
    assert one_tick() == {"i-1-2-VM"}
    assert one_tick(61) == set(names)  # the clock passed the resync interval again
    assert one_tick() == set()  # the ack is no longer recent


def managed_name(ha: RunningHaService, row_id: int) -> str:
    with ha.controller.sessions() as session:
        row = session.get(ManagedVmRow, row_id)
        assert row is not None
        return row.instance_name
