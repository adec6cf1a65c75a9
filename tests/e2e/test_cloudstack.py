"""CLOUDSTACK clusters end to end: ha_service asks the orchestrator to restart, durably and exactly once (R7)."""

from __future__ import annotations

from tests.e2e.conftest import WAIT, Stack, StartStack, pool_spec, sqlite_only
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.testing import wait_until

RESTART_VM = ha_service_pb2.HA_ACTION_KIND_RESTART_VM
PENDING = ha_service_pb2.HA_ACTION_STATE_PENDING
SUCCEEDED = ha_service_pb2.HA_ACTION_STATE_SUCCEEDED
STOPPED = ha_service_pb2.WANTED_STATE_STOPPED

WANTED_HA = ["i-5-1-VM", "i-5-2-VM"]  # HA offering, wanted running, on the host that dies
NON_HA = "i-5-3-VM"  # no HA offering, on the host that dies
STOPPED_BEFORE = "i-5-4-VM"  # HA, stopped on purpose by the orchestrator before the crash
STOPPING = "i-5-5-VM"  # HA, the orchestrator is stopping it when the host dies
SURVIVOR = "i-5-6-VM"  # HA, on the surviving host


def _cluster_vms() -> list[dict[str, object]]:
    on_dead = [*WANTED_HA, NON_HA, STOPPED_BEFORE, STOPPING]
    return [{"name": n, "memory_gib": 2, "host": 1} for n in on_dead] + [{"name": SURVIVOR, "memory_gib": 2, "host": 0}]


def _deploy(stack: Stack, cluster: str) -> None:
    for name in [*WANTED_HA, STOPPED_BEFORE, STOPPING, SURVIVOR]:
        decision = stack.decide(cluster, name)
        assert (decision.mode, decision.ha_restart_priority, decision.restarter) == (
            common_pb2.HA_MODE_CLOUDSTACK,
            "",
            ha_service_pb2.RESTARTER_CLOUDSTACK,
        ), name
    assert stack.decide(cluster, NON_HA, ha=False).restarter == ha_service_pb2.RESTARTER_NONE
    stack.wait_bound(cluster, *WANTED_HA, NON_HA, STOPPED_BEFORE, STOPPING, SURVIVOR)

    # The orchestrator stops one VM on purpose (it says so first, then stops it through XAPI) and is about to stop
    # another one when the host dies.
    orchestrator = stack.xapi_session(cluster, "cloudstack-orchestrator")
    stack.set_wanted(cluster, STOPPED_BEFORE, STOPPED)
    orchestrator.xenapi.VM.clean_shutdown(orchestrator.xenapi.VM.get_by_name_label(STOPPED_BEFORE)[0])
    stack.set_wanted(cluster, STOPPING, STOPPED)
    wait_until(
        lambda: stack.managed(cluster, STOPPED_BEFORE).observed_power_state == common_pb2.XAPI_POWER_STATE_HALTED,
        WAIT,
        what="the stop on purpose to be mirrored",
    )
    stack.settle()
    assert stack.actions() == [], "a stop on purpose is never a reason to restart"


def _restart_actions_by_vm(stack: Stack) -> dict[str, list[ha_service_pb2.HaAction]]:
    found: dict[str, list[ha_service_pb2.HaAction]] = {}
    for action in stack.actions():
        found.setdefault(action.instance_name, []).append(action)
    return found


def test_xenserver_61_host_crash_asks_for_one_restart_per_wanted_ha_vm_durably(start_stack: StartStack) -> None:
    """XenServer 6.1 stays CLOUDSTACK even with native HA on; without pool HA XAPI keeps the dead host's VMs
    "Running": one RESTART_VM (host dead: fence first) per HA VM wanted running, pending until acknowledged, across
    ha_service restarts."""
    stack = start_stack([pool_spec("xs61", "xenserver-6.1", vms=_cluster_vms())], {"cs61": "xs61"})
    stack.set_native(True)  # the version gate wins (R1, R3)
    _deploy(stack, "cs61")
    assert stack.status("cs61").mode_reason == ha_service_pb2.MODE_REASON_VERSION_GATE
    events = stack.watch()
    dead_host = stack.host_uuid("cs61", 1)
    stack.control("cs61").crash_host(1)

    wait_until(lambda: len(stack.actions()) >= len(WANTED_HA), WAIT, what="a RESTART_VM per wanted HA VM")
    wait_until(lambda: len(events.actions()) >= len(WANTED_HA), WAIT, what="the actions on WatchHaEvents")
    stack.settle()
    stack.settle()  # more ticks: grace periods and re-reconciles must not repeat an action
    by_vm = _restart_actions_by_vm(stack)
    assert sorted(by_vm) == WANTED_HA, "none for the non-HA VM, the stopped ones or the survivor"
    for name in WANTED_HA:
        (action,) = by_vm[name]
        assert (action.kind, action.cause, action.state) == (
            RESTART_VM,
            ha_service_pb2.RESTART_CAUSE_HOST_DEAD,
            PENDING,
        )
        assert (action.cluster_id, action.host_uuid) == ("cs61", dead_host)
        assert action.vm_uuid == stack.vm_rec("cs61", name)["uuid"]
    assert stack.vm_rec("cs61", WANTED_HA[0])["power_state"] == "Running", "xapi still reports the dead host's VM"
    streamed = {a.action_id for a in events.actions()}
    assert streamed == {a.action_id for a in stack.actions()}
    assert not any(e.redelivered for e in events.events)
    seen_up_to = events.last_revision

    # ha_service restarts on the same database: the pending actions are still there, redelivered on reconnect,
    # and the resumed controller does not ask a second time.
    stack.restart_ha()
    stack.settle()
    again = stack.watch(since=seen_up_to)
    wait_until(lambda: len(again.actions()) >= len(WANTED_HA), WAIT, what="the pending actions to be redelivered")
    assert {a.action_id for a in again.actions()} == streamed
    assert all(e.redelivered for e in again.events if e.HasField("action"))
    assert {n: len(a) for n, a in _restart_actions_by_vm(stack).items()} == {n: 1 for n in WANTED_HA}

    # The orchestrator restarts the first VM and acknowledges; only the other one stays pending.
    first = next(a for a in again.actions() if a.instance_name == WANTED_HA[0])
    acked = stack.stub().AckHaAction(
        ha_service_pb2.AckHaActionRequest(action_id=first.action_id, outcome=SUCCEEDED, message="restarted on host 0")
    )
    assert acked.action.state == SUCCEEDED
    assert [a.instance_name for a in stack.actions(PENDING)] == [WANTED_HA[1]]
    reconnect = stack.watch(since=again.last_revision)
    wait_until(lambda: bool(reconnect.actions()), WAIT, what="the remaining pending action on reconnect")
    assert [a.instance_name for a in reconnect.actions()] == [WANTED_HA[1]]
    assert stack.actions(SUCCEEDED)[0].ack_message == "restarted on host 0"


@sqlite_only
def test_pool_ha_on_but_cloudstack_mode_asks_for_restart_of_halted_vms(start_stack: StartStack) -> None:
    """Citrix Hypervisor 8.2 with pool HA on and native HA off: XAPI halts the dead host's VMs (none protected),
    CloudStack restarts them: one RESTART_VM per HA VM wanted running, none for the others.

    Pool HA fences the host and XAPI halts its VMs itself, so the cause is VM_HALTED (no fencing, no power-state
    reset) even when ha_service sees the host die before XAPI halts its VMs (as the mirror orders one batch: host
    first); exactly one action per VM."""
    stack = start_stack([pool_spec("xs82", ha_enabled=True, vms=_cluster_vms())], {"cs82": "xs82"})
    _deploy(stack, "cs82")
    status = stack.status("cs82")  # the first HA VM pinned the mode the global setting gave
    assert (status.effective_mode, status.mode_reason) == (
        common_pb2.HA_MODE_CLOUDSTACK,
        ha_service_pb2.MODE_REASON_PINNED,
    )
    stack.control("cs82").crash_host(1)
    wait_until(lambda: len(stack.actions()) >= len(WANTED_HA), WAIT, what="a RESTART_VM per wanted HA VM")
    stack.settle()
    stack.settle()
    by_vm = _restart_actions_by_vm(stack)
    assert sorted(by_vm) == WANTED_HA
    for name in WANTED_HA:
        (action,) = by_vm[name]
        assert (action.kind, action.cause) == (RESTART_VM, ha_service_pb2.RESTART_CAUSE_VM_HALTED)
        assert action.host_uuid == stack.host_uuid("cs82", 1)
        assert stack.vm_rec("cs82", name)["power_state"] == "Halted", "pool HA restarted nothing it was not told to"
