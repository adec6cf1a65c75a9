"""R8 end to end: migrating clusters between CLOUDSTACK and NATIVE against xapi_sim, through the real sync_service.

"No step applied twice" is proved on the simulator's call log: every VM the migration changes needs exactly one
`VM.set_ha_restart_priority`, and every VM ends at its target, so the number of those calls from xsha's sessions
equals the number of VMs changed exactly when no VM got two. (The log records methods, not arguments.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc

from ha_service.testing import RunningHaService
from sync_service.xapi.allowed import canonical_method
from tests.e2e.conftest import WAIT, Stack, StartStack, pool_spec, sqlite_only
from xsha_api.v1 import common_pb2, ha_service_pb2, ha_service_pb2_grpc
from xsha_common.procs import ChildProcess
from xsha_common.testing import free_port, wait_until

M = ha_service_pb2
NATIVE = common_pb2.HA_MODE_NATIVE
CLOUDSTACK = common_pb2.HA_MODE_CLOUDSTACK
SET_PRIORITY = "VM.set_ha_restart_priority"
VM_STEP = M.MIGRATION_STEP_KIND_SET_VM_HA_PRIORITY


def priority_writes(stack: Stack, mark: dict[str, int]) -> int:
    return sum(1 for c in stack.xsha_calls(mark) if canonical_method(c["method"]) == SET_PRIORITY)


def sim_vms(stack: Stack, cluster: str) -> dict[str, dict[str, Any]]:
    pool = stack.pool(cluster)
    with pool.store.lock:
        return {str(vm.rec["name_label"]): dict(vm.rec) for vm in pool.user_vms()}


def plan(stub: Any, cluster: str, target: int) -> M.Migration:
    request = M.PlanMigrationRequest(cluster_id=cluster, target_mode=target)  # type: ignore[arg-type]
    migration: M.Migration = stub.PlanMigration(request).migration
    return migration


def apply(stub: Any, migration_id: str) -> list[M.ApplyMigrationResponse]:
    return list(stub.ApplyMigration(M.ApplyMigrationRequest(migration_id=migration_id), timeout=300))


class Applier:
    """ApplyMigration on a thread: the stream ends with an error when ha_service dies under it."""

    def __init__(self, stub: Any, migration_id: str) -> None:
        self.responses: list[M.ApplyMigrationResponse] = []
        self.error: grpc.RpcError | None = None
        self._call = stub.ApplyMigration(M.ApplyMigrationRequest(migration_id=migration_id), timeout=300)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the apply did not end"


@sqlite_only
def test_500_vm_cluster_migrates_to_native_and_back(start_stack: StartStack) -> None:
    ha_vms, plain_vms, stray_vms = 400, 80, 20
    vms = [
        {"count": ha_vms, "name_pattern": "i-2-{n}-VM", "memory_mib": 256},
        {"count": plain_vms, "name_pattern": "i-3-{n}-VM", "memory_mib": 256},
        # Not CloudStack's (ha_service does not manage them), with a stray priority someone set in XenCenter.
        {"count": stray_vms, "name_pattern": "x-{n}", "memory_mib": 256, "ha_restart_priority": "best-effort"},
    ]
    stack = start_stack(
        [pool_spec("xs82", ha_enabled=True, hosts={"count": 4, "memory_gib": 64}, vms=vms)], {"big": "xs82"}
    )
    names = sorted(sim_vms(stack, "big"))
    ha_names = [n for n in names if n.startswith("i-2-")]
    plain_names = [n for n in names if n.startswith("i-3-")]
    for name in ha_names:
        stack.decide("big", name)  # CLOUDSTACK (the global default): ""; pins the cluster to CLOUDSTACK
    for name in plain_names:
        stack.decide("big", name, ha=False)
    stack.settle()
    assert stack.status("big").pinned_mode == CLOUDSTACK
    assert stack.fencing("big").mechanism == M.FENCING_MECHANISM_STORAGE_HEARTBEAT
    stub = stack.stub()

    mark = stack.call_log_mark()
    started = time.monotonic()
    forward = plan(stub, "big", NATIVE)
    plan_seconds = time.monotonic() - started
    assert forward.state == M.MIGRATION_STATE_PLANNED and forward.mirror_revision > 0
    steps = {s.instance_name: s.to_ha_restart_priority for s in forward.steps if s.kind == VM_STEP}
    assert steps == {n: "restart" for n in ha_names} | {n: "" for n in names if n.startswith("x-")}
    assert forward.steps_total == ha_vms + stray_vms + 2
    started = time.monotonic()
    responses = apply(stub, forward.migration_id)
    apply_seconds = time.monotonic() - started
    assert responses[-1].state == M.MIGRATION_STATE_SUCCEEDED, stub.GetMigration(
        M.GetMigrationRequest(migration_id=forward.migration_id)
    )
    assert len(responses) == forward.steps_total + 2  # first, one per step, last
    after = sim_vms(stack, "big")
    assert all(after[n]["ha_restart_priority"] == "restart" for n in ha_names)
    assert all(after[n]["ha_restart_priority"] == "" for n in names if not n.startswith("i-2-"))
    stack.settle()  # the controller has nothing to repair afterwards
    assert priority_writes(stack, mark) == ha_vms + stray_vms, "one write per VM changed, none twice, no other"
    status = stack.status("big")
    assert (status.pinned_mode, status.effective_mode) == (NATIVE, NATIVE)
    assert forward.migration_id in status.mode_explanation
    policy = stack.fencing("big")
    assert policy.mechanism == M.FENCING_MECHANISM_XENSERVER_HA and not policy.storage_heartbeat_enabled
    assert stack.managed("big", ha_names[0]).protection_state == M.PROTECTION_STATE_PROTECTED

    mark = stack.call_log_mark()
    started = time.monotonic()
    back = plan(stub, "big", CLOUDSTACK)
    back_plan_seconds = time.monotonic() - started
    assert {s.instance_name for s in back.steps if s.kind == VM_STEP} == set(ha_names)
    started = time.monotonic()
    assert apply(stub, back.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    back_apply_seconds = time.monotonic() - started
    after = sim_vms(stack, "big")
    assert all(rec["ha_restart_priority"] == "" for rec in after.values())
    stack.settle()
    assert priority_writes(stack, mark) == ha_vms
    assert stack.status("big").pinned_mode == CLOUDSTACK
    assert stack.fencing("big").storage_heartbeat_enabled
    print(  # the measured figures (not asserted: no wall-clock assertions)
        f"\nmigration of 500 VMs: plan {plan_seconds:.2f} s, apply {apply_seconds:.2f} s to NATIVE; "
        f"plan {back_plan_seconds:.2f} s, apply {back_apply_seconds:.2f} s back to CLOUDSTACK"
    )


def _child_ha(stack: Stack, tmp_path: Path, port: int, run: int) -> ChildProcess:
    args = [
        "--listen-address", f"127.0.0.1:{port}",
        "--metrics-address", "",
        "--auth-disabled",
        "--database-url", stack.db_url,
        "--sync-address", stack.sync.address,
        "--migration-lease-seconds", "2",
        "--controller-tick-interval", "0.2",
        "--log-format", "text",
    ]  # fmt: skip
    child = ChildProcess.python_module("ha_service", "ha_service", args, log_path=tmp_path / f"ha-{run}.log")
    child.start()
    child.wait_until_serving(f"127.0.0.1:{port}", timeout=60)
    return child


@sqlite_only
def test_killing_ha_service_mid_apply_then_restarting_finishes_without_a_second_write(
    start_stack: StartStack, tmp_path: Path
) -> None:
    count = 60
    vms = [{"count": count, "name_pattern": "i-2-{n}-VM", "memory_mib": 512}]
    stack = start_stack([pool_spec("xs82", ha_enabled=True, hosts={"count": 3}, vms=vms)], {"kill": "xs82"})
    names = sorted(sim_vms(stack, "kill"))
    for name in names:
        stack.decide("kill", name)
    stack.settle()
    stack.stop_ha()  # from here on ha_service runs as a child process, so it can die like one
    port = free_port()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = ha_service_pb2_grpc.HaPolicyServiceStub(channel)
    child = _child_ha(stack, tmp_path, port, 1)
    try:
        migration = plan(stub, "kill", NATIVE)
        assert migration.steps_total == count + 2
        mark = stack.call_log_mark()
        stack.pool("kill").set_latency(0.01)  # each step takes a few XAPI calls: time to die in the middle
        interrupted = Applier(stub, migration.migration_id)
        wait_until(lambda: priority_writes(stack, mark) >= count // 4, WAIT, what="a quarter of the writes")
        child.kill()  # SIGKILL: no shutdown code runs
        interrupted.join()
        assert interrupted.error is not None
        done_before = priority_writes(stack, mark)
        assert 0 < done_before < count
        stack.pool("kill").set_latency(0)

        child = _child_ha(stack, tmp_path, port, 2)
        state = stub.GetMigration(M.GetMigrationRequest(migration_id=migration.migration_id, omit_steps=True))
        assert state.migration.state == M.MIGRATION_STATE_APPLYING

        responses: list[M.ApplyMigrationResponse] = []

        def finished() -> bool:
            try:
                responses.extend(apply(stub, migration.migration_id))
            except grpc.RpcError as error:  # the dead apply's lease (2 s) has not run out yet
                assert error.code() == grpc.StatusCode.ABORTED, error  # type: ignore[attr-defined]
                return False
            return True

        wait_until(finished, WAIT, what="the lease of the killed apply to expire")
        assert responses[-1].state == M.MIGRATION_STATE_SUCCEEDED
        assert all(rec["ha_restart_priority"] == "restart" for rec in sim_vms(stack, "kill").values())
        assert priority_writes(stack, mark) == count, "a VM's priority was written twice"
        status = stub.GetClusterHaStatus(M.GetClusterHaStatusRequest(cluster_id="kill")).status
        assert status.pinned_mode == NATIVE and not status.active_migration_id
    finally:
        channel.close()
        child.stop()


@sqlite_only
def test_host_crash_mid_migration_every_ha_vm_restarted_exactly_once(start_stack: StartStack) -> None:
    """While the cluster migrates, a host dies: XenServer restarts the VMs that were "restart" then, the
    orchestrator (RESTART_VM) the others; never both, never neither. The migration then finishes."""
    count = 24
    vms = [{"count": count, "name_pattern": "i-2-{n}-VM", "memory_mib": 1024}]
    stack = start_stack([pool_spec("xs82", ha_enabled=True, hosts={"count": 3}, vms=vms)], {"mig": "xs82"})
    names = sorted(sim_vms(stack, "mig"))
    for name in names:
        stack.decide("mig", name)
    stack.wait_bound("mig", *names)
    stack.settle()
    ha: RunningHaService = stack.ha
    stub = ha.stub()
    migration = plan(stub, "mig", NATIVE)
    dead_host = stack.host_uuid("mig", 1)
    victims = [n for n in names if stack.vm_host_uuid("mig", n) == dead_host]
    assert victims
    stack.pool("mig").set_latency(0.01)
    applier = Applier(stub, migration.migration_id)
    wait_until(
        lambda: sum(r["ha_restart_priority"] == "restart" for r in sim_vms(stack, "mig").values()) >= count // 3,
        WAIT,
        what="a third of the VMs protected",
    )
    stack.control("mig").crash_host(1)
    stack.pool("mig").set_latency(0)

    def actions_by_vm() -> dict[str, int]:
        found: dict[str, int] = {}
        for action in stack.actions(cluster_id="mig"):
            if action.kind == M.HA_ACTION_KIND_RESTART_VM:
                found[action.instance_name] = found.get(action.instance_name, 0) + 1
        return found

    def running_elsewhere(name: str) -> bool:
        return stack.vm_rec("mig", name)["power_state"] == "Running" and stack.vm_host_uuid("mig", name) != dead_host

    wait_until(
        lambda: all(running_elsewhere(n) or n in actions_by_vm() for n in victims),
        WAIT,
        what="every victim restarted by XenServer or asked of the orchestrator",
    )
    applier.join()
    stack.settle()
    stack.settle()
    asked = actions_by_vm()
    assert set(asked) <= set(victims), "no action for a VM that did not go down"
    for name in victims:
        by_xenserver = running_elsewhere(name)  # the orchestrator has not started anything yet
        assert by_xenserver != (name in asked), f"{name}: XenServer {by_xenserver}, RESTART_VM {name in asked}"
        assert asked.get(name, 0) <= 1

    # The orchestrator carries out the actions; the migration, applied again if a down VM held it, finishes.
    admin = stack.xapi_session("mig", "cloudstack-orchestrator")
    for action in stack.actions(M.HA_ACTION_STATE_PENDING, cluster_id="mig"):
        ref = admin.xenapi.VM.get_by_uuid(action.vm_uuid)
        admin.xenapi.VM.start(ref, False, False)
        stub.AckHaAction(M.AckHaActionRequest(action_id=action.action_id, outcome=M.HA_ACTION_STATE_SUCCEEDED))
    wait_until(lambda: all(stack.vm_rec("mig", n)["power_state"] == "Running" for n in names), WAIT, what="all up")
    stack.settle()
    if applier.responses[-1].state != M.MIGRATION_STATE_SUCCEEDED:
        failed = stub.GetMigration(M.GetMigrationRequest(migration_id=migration.migration_id)).migration
        assert {s.instance_name for s in failed.steps if s.state == M.MIGRATION_STEP_STATE_FAILED} <= set(victims)
        assert apply(stub, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    assert all(r["ha_restart_priority"] == "restart" for r in sim_vms(stack, "mig").values())
    assert stack.status("mig").pinned_mode == NATIVE
