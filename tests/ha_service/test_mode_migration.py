"""R8 migrations between HA modes through the RPCs, against the sync_service test double.

The double counts every SetVmHaConfig it receives (`set_calls`), so "applied once" and "not applied" are asserted
on the calls that reached the hypervisor side, not on ha_service's own records.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from ha_service import testing as ha_testing
from ha_service.mode_migration import MigrationConfig
from ha_service.store.models import ManagedVmRow, MigrationLeaseRow
from ha_service.testing import ManualClock, RunningHaService, running_ha_service, wait_for
from tests.ha_service.fake_sync import FakeSync
from tests.ha_service.test_settings_decisions import decide, rpc_error
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.db import create_engine_for
from xsha_common.errors import not_found

NATIVE = common_pb2.HA_MODE_NATIVE
CLOUDSTACK = common_pb2.HA_MODE_CLOUDSTACK
M = ha_service_pb2
VM_STEP = M.MIGRATION_STEP_KIND_SET_VM_HA_PRIORITY
LEASE_SECONDS = 30.0


class MigrationFakeSync(FakeSync):
    """The test double plus GetVm, ListVms filtered by cluster, and a write that can hang after it took effect
    (the worst moment for ha_service to die: XAPI changed, ha_service has not recorded it)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang_after_write: set[str] = set()
        self.hanging = threading.Event()
        self.release = threading.Event()

    def GetVm(self, request: Any, context: Any) -> sync_service_pb2.GetVmResponse:  # noqa: N802
        self._check_up()
        with self.lock:
            vm = self.vms.get(request.uuid)
            if vm is None:
                raise not_found("VM", request.uuid, reason="VM_NOT_FOUND")
            return sync_service_pb2.GetVmResponse(vm=vm)

    def ListVms(self, request: Any, context: Any) -> sync_service_pb2.ListVmsResponse:  # noqa: N802
        response = super().ListVms(request, context)
        if request.cluster_id:
            kept = [vm for vm in response.vms if vm.cluster_id == request.cluster_id]
            del response.vms[:]
            response.vms.extend(kept)
        return response

    def SetVmHaConfig(self, request: Any, context: Any) -> sync_service_pb2.SetVmHaConfigResponse:  # noqa: N802
        response = super().SetVmHaConfig(request, context)
        if request.vm_uuid in self.hang_after_write:
            self.hang_after_write.discard(request.vm_uuid)
            self.hanging.set()
            self.release.wait(30)
        return response

    def calls(self, vm_uuid: str) -> list[str]:
        with self.lock:
            return [priority for uuid, priority in self.set_calls if uuid == vm_uuid]

    def calls_per_vm(self) -> Counter[str]:
        with self.lock:
            return Counter(uuid for uuid, _ in self.set_calls)

    def priority(self, name: str) -> str:
        return self.vm_by_name(name).ha_restart_priority


@pytest.fixture
def fake() -> Iterator[MigrationFakeSync]:
    sync = MigrationFakeSync()
    sync.start()
    yield sync
    sync.release.set()
    sync.stop()


def start_ha(db_url: str, fake: MigrationFakeSync, clock: ManualClock, *, controller: bool = False) -> Any:
    options = ha_testing.test_options(db_url, fake.server.address, controller_enabled=controller)
    options.migration = MigrationConfig(lease_seconds=LEASE_SECONDS)
    return running_ha_service(db_url, fake.server.address, clock=clock, options=options)


@pytest.fixture
def ha_db(db_url: str, fake: MigrationFakeSync, clock: ManualClock) -> Iterator[RunningHaService]:
    """ha_service without its controller (the plan/apply engine does not need it) on every backend."""
    with start_ha(db_url, fake, clock) as running:
        yield running


@pytest.fixture
def ha(sqlite_url: str, fake: MigrationFakeSync, clock: ManualClock) -> Iterator[RunningHaService]:
    with start_ha(sqlite_url, fake, clock) as running:
        yield running


# --- scenario ---------------------------------------------------------------------------------------------------

HA_VMS = ("i-2-1-VM", "i-2-2-VM", "i-2-3-VM")


def cloudstack_cluster(ha: RunningHaService, fake: MigrationFakeSync, cluster: str = "c1") -> dict[str, str]:
    """A CLOUDSTACK cluster (pinned by its first HA VM) whose pool has HA on, with every kind of VM; name -> uuid."""
    fake.add_pool(cluster, "ch82", ha=True)
    host = fake.add_host(cluster, f"{cluster}-h1")
    uuids: dict[str, str] = {}
    for name in HA_VMS:
        decide(ha, cluster, name)  # CLOUDSTACK: ""
        uuids[name] = fake.add_vm(cluster, name, running_on=host)
    decide(ha, cluster, "i-2-4-VM", ha_enabled=False)
    uuids["i-2-4-VM"] = fake.add_vm(cluster, "i-2-4-VM", running_on=host, priority="best-effort")  # stray
    decide(ha, cluster, "i-2-5-VM", ha_enabled=False)
    uuids["i-2-5-VM"] = fake.add_vm(cluster, "i-2-5-VM", running_on=host)  # nothing to do
    decide(ha, cluster, "r-6-VM", vm_type=common_pb2.VM_TYPE_DOMAIN_ROUTER, ha_enabled=True)
    uuids["r-6-VM"] = fake.add_vm(cluster, "r-6-VM", running_on=host, priority="restart")  # stray on a system VM
    uuids["unmanaged"] = fake.add_vm(cluster, "unmanaged", running_on=host, priority="restart")  # not ha_service's
    uuids["plain"] = fake.add_vm(cluster, "plain", running_on=host)
    return uuids


def plan(ha: RunningHaService, cluster: str, target: int, request_id: str = "") -> M.Migration:
    request = M.PlanMigrationRequest(cluster_id=cluster, target_mode=target, request_id=request_id)  # type: ignore[arg-type]
    return ha.stub().PlanMigration(request).migration


def apply(ha: RunningHaService, migration_id: str) -> list[M.ApplyMigrationResponse]:
    return list(ha.stub().ApplyMigration(M.ApplyMigrationRequest(migration_id=migration_id)))


def get(ha: RunningHaService, migration_id: str) -> M.Migration:
    return ha.stub().GetMigration(M.GetMigrationRequest(migration_id=migration_id)).migration


def status(ha: RunningHaService, cluster: str) -> M.ClusterHaStatus:
    return ha.stub().GetClusterHaStatus(M.GetClusterHaStatusRequest(cluster_id=cluster)).status


def fencing(ha: RunningHaService, cluster: str) -> M.HostFencingPolicy:
    return ha.stub().GetHostFencingPolicy(M.GetHostFencingPolicyRequest(cluster_id=cluster)).policy


def vm_steps(migration: M.Migration) -> dict[str, M.MigrationStep]:
    return {s.instance_name: s for s in migration.steps if s.kind == VM_STEP}


def managed(ha: RunningHaService, cluster: str, name: str) -> M.ManagedVm:
    return ha.stub().GetManagedVm(M.GetManagedVmRequest(cluster_id=cluster, instance_name=name)).vm


class Applier:
    """ApplyMigration on a thread (for applies that hang or are interrupted)."""

    def __init__(self, ha: RunningHaService, migration_id: str) -> None:
        self.responses: list[M.ApplyMigrationResponse] = []
        self.error: grpc.RpcError | None = None
        self.call = ha.stub().ApplyMigration(M.ApplyMigrationRequest(migration_id=migration_id))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for response in self.call:
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()


# --- plan -------------------------------------------------------------------------------------------------------


def test_plan_lists_every_step_with_the_mirror_revision(ha_db: RunningHaService, fake: MigrationFakeSync) -> None:
    uuids = cloudstack_cluster(ha_db, fake)
    revision = fake.revision
    migration = plan(ha_db, "c1", NATIVE)
    assert migration.migration_id and migration.state == M.MIGRATION_STATE_PLANNED
    assert migration.cluster_id == "c1"
    assert (migration.source_mode, migration.target_mode) == (CLOUDSTACK, NATIVE)
    assert migration.mirror_revision == revision
    assert not [p for p in migration.problems if p.blocking]
    steps = vm_steps(migration)
    wanted = {name: "restart" for name in HA_VMS} | {"i-2-4-VM": "", "r-6-VM": "", "unmanaged": ""}
    assert {name: s.to_ha_restart_priority for name, s in steps.items()} == wanted
    assert steps["i-2-4-VM"].from_ha_restart_priority == "best-effort"
    assert steps["unmanaged"].vm_uuid == uuids["unmanaged"]
    assert all(s.state == M.MIGRATION_STEP_STATE_PENDING for s in migration.steps)
    # Every VM step, then fencing, then the pin.
    assert [s.kind for s in migration.steps[-2:]] == [
        M.MIGRATION_STEP_KIND_CHANGE_HOST_FENCING,
        M.MIGRATION_STEP_KIND_PIN_MODE,
    ]
    assert [s.index for s in migration.steps] == list(range(len(migration.steps)))
    assert migration.steps_total == len(wanted) + 2
    # Stored: GetMigration answers the same plan; a retried request id answers the same plan.
    assert get(ha_db, migration.migration_id) == migration
    again = plan(ha_db, "c1", NATIVE, request_id="r-1")
    assert plan(ha_db, "c1", NATIVE, request_id="r-1").migration_id == again.migration_id != migration.migration_id
    assert fake.set_calls == []  # planning writes nothing to the hypervisor


def test_plan_blocked_when_pool_ha_is_off_or_the_pool_too_old(ha_db: RunningHaService, fake: MigrationFakeSync) -> None:
    fake.add_pool("off", "ch82", ha=False)
    fake.add_pool("old", "xs61", ha=True)
    blocked = plan(ha_db, "off", NATIVE)
    assert blocked.state == M.MIGRATION_STATE_BLOCKED
    (problem,) = [p for p in blocked.problems if p.blocking]
    assert problem.code == "POOL_HA_DISABLED" and "pool-ha-enable" in problem.how_to_fix
    code, info, _ = rpc_error(apply, ha_db, blocked.migration_id)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "MIGRATION_BLOCKED"
    assert "POOL_HA_DISABLED" in info.metadata["problems"]
    old = plan(ha_db, "old", NATIVE)
    assert old.state == M.MIGRATION_STATE_BLOCKED
    assert "VERSION_TOO_OLD" in {p.code for p in old.problems if p.blocking}
    # Moving to CLOUDSTACK has no preconditions.
    assert plan(ha_db, "off", CLOUDSTACK).state == M.MIGRATION_STATE_PLANNED


def test_plan_request_errors(ha_db: RunningHaService, fake: MigrationFakeSync) -> None:
    code, info, bad = rpc_error(ha_db.stub().PlanMigration, M.PlanMigrationRequest(cluster_id="c1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and bad.field_violations[0].field == "target_mode"
    code, info, _ = rpc_error(plan, ha_db, "nowhere", NATIVE)
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "CLUSTER_NOT_FOUND"
    code, info, _ = rpc_error(get, ha_db, "no-such-migration")
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "MIGRATION_NOT_FOUND"
    code, info, _ = rpc_error(apply, ha_db, "no-such-migration")
    assert code == grpc.StatusCode.NOT_FOUND


# --- apply ------------------------------------------------------------------------------------------------------


def test_apply_streams_progress_pins_changes_fencing_and_is_idempotent(
    ha_db: RunningHaService, fake: MigrationFakeSync
) -> None:
    uuids = cloudstack_cluster(ha_db, fake)
    assert fencing(ha_db, "c1").mechanism == M.FENCING_MECHANISM_STORAGE_HEARTBEAT
    migration = plan(ha_db, "c1", NATIVE)
    responses = apply(ha_db, migration.migration_id)
    assert responses[0].state == M.MIGRATION_STATE_APPLYING and not responses[0].HasField("step")
    assert responses[-1].state == M.MIGRATION_STATE_SUCCEEDED and not responses[-1].HasField("step")
    finished = [r.step for r in responses if r.HasField("step")]
    assert [s.index for s in finished] == [s.index for s in migration.steps]
    assert [r.steps_done for r in responses if r.HasField("step")] == list(range(1, len(finished) + 1))
    assert responses[-1].steps_total == migration.steps_total and responses[-1].steps_failed == 0
    # The hypervisor: every HA user VM "restart", stray priorities cleared, nothing else touched.
    for name in HA_VMS:
        assert fake.priority(name) == "restart"
    for name in ("i-2-4-VM", "r-6-VM", "unmanaged", "plain", "i-2-5-VM"):
        assert fake.priority(name) == ""
    assert fake.calls_per_vm() == Counter({uuids[n]: 1 for n in (*HA_VMS, "i-2-4-VM", "r-6-VM", "unmanaged")})
    done = get(ha_db, migration.migration_id)
    assert done.state == M.MIGRATION_STATE_SUCCEEDED and done.HasField("finish_time")
    assert done.steps_succeeded == done.steps_total
    # Pinned to NATIVE by the migration; fencing follows.
    cluster = status(ha_db, "c1")
    assert cluster.pinned and cluster.pinned_mode == NATIVE and cluster.effective_mode == NATIVE
    assert migration.migration_id in cluster.mode_explanation and not cluster.active_migration_id
    policy = fencing(ha_db, "c1")
    assert policy.mechanism == M.FENCING_MECHANISM_XENSERVER_HA and not policy.storage_heartbeat_enabled
    # Managed VMs now carry NATIVE decisions (so the controller has nothing to repair), and new VMs get NATIVE.
    vm = managed(ha_db, "c1", "i-2-1-VM")
    assert vm.decision.mode == NATIVE and vm.decision.ha_restart_priority == "restart"
    assert vm.decision.restarter == M.RESTARTER_HYPERVISOR
    assert vm.protection_state == M.PROTECTION_STATE_PROTECTED
    assert managed(ha_db, "c1", "r-6-VM").decision.restarter == M.RESTARTER_CLOUDSTACK
    assert decide(ha_db, "c1", "i-2-99-VM").ha_restart_priority == "restart"
    # Applying again changes nothing.
    again = apply(ha_db, migration.migration_id)
    assert [r.state for r in again] == [M.MIGRATION_STATE_SUCCEEDED]
    assert fake.calls_per_vm() == Counter({uuids[n]: 1 for n in (*HA_VMS, "i-2-4-VM", "r-6-VM", "unmanaged")})


def test_reverse_migration_back_to_cloudstack(ha: RunningHaService, fake: MigrationFakeSync) -> None:
    cloudstack_cluster(ha, fake)
    forward = plan(ha, "c1", NATIVE)
    assert apply(ha, forward.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    back = plan(ha, "c1", CLOUDSTACK)
    assert (back.source_mode, back.target_mode) == (NATIVE, CLOUDSTACK)
    assert {n: s.to_ha_restart_priority for n, s in vm_steps(back).items()} == {n: "" for n in HA_VMS}
    assert apply(ha, back.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    assert all(fake.priority(n) == "" for n in HA_VMS)
    assert status(ha, "c1").pinned_mode == CLOUDSTACK
    policy = fencing(ha, "c1")
    assert policy.mechanism == M.FENCING_MECHANISM_STORAGE_HEARTBEAT and policy.storage_heartbeat_enabled
    assert managed(ha, "c1", "i-2-1-VM").decision.restarter == M.RESTARTER_CLOUDSTACK
    # Applying the finished forward migration again changes nothing (it does not flip the cluster back).
    calls = len(fake.set_calls)
    assert [r.state for r in apply(ha, forward.migration_id)] == [M.MIGRATION_STATE_SUCCEEDED]
    assert len(fake.set_calls) == calls and status(ha, "c1").pinned_mode == CLOUDSTACK
    listed = ha.stub().ListMigrations(M.ListMigrationsRequest(cluster_id="c1", page_size=1))
    assert [m.migration_id for m in listed.migrations] == [back.migration_id] and listed.next_page_token
    rest = ha.stub().ListMigrations(
        M.ListMigrationsRequest(cluster_id="c1", page_size=1, page_token=listed.next_page_token)
    )
    assert [m.migration_id for m in rest.migrations] == [forward.migration_id] and not rest.next_page_token
    assert not rest.migrations[0].steps and rest.migrations[0].steps_total == forward.steps_total


def test_continues_past_a_refused_vm_and_pins_only_on_full_success(
    ha: RunningHaService, fake: MigrationFakeSync
) -> None:
    uuids = cloudstack_cluster(ha, fake)
    fake.refuse_restart.add("i-2-2-VM")
    migration = plan(ha, "c1", NATIVE)
    responses = apply(ha, migration.migration_id)
    assert responses[-1].state == M.MIGRATION_STATE_FAILED and responses[-1].steps_failed == 1
    failed = get(ha, migration.migration_id)
    steps = vm_steps(failed)
    assert steps["i-2-2-VM"].state == M.MIGRATION_STEP_STATE_FAILED
    assert steps["i-2-2-VM"].message.startswith("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN")
    assert steps["i-2-3-VM"].state == M.MIGRATION_STEP_STATE_SUCCEEDED  # after the failed one
    assert fake.priority("i-2-3-VM") == "restart"
    assert [s.state for s in failed.steps[-2:]] == [M.MIGRATION_STEP_STATE_PENDING] * 2
    cluster = status(ha, "c1")
    assert cluster.pinned_mode == CLOUDSTACK and not cluster.active_migration_id
    assert fencing(ha, "c1").mechanism == M.FENCING_MECHANISM_STORAGE_HEARTBEAT
    # The refused VM stays CloudStack's; the others are already XenServer's (one captain each).
    assert managed(ha, "c1", "i-2-2-VM").decision.restarter == M.RESTARTER_CLOUDSTACK
    assert managed(ha, "c1", "i-2-1-VM").decision.restarter == M.RESTARTER_HYPERVISOR
    # Fixed: applying again retries only the failed step.
    fake.refuse_restart.clear()
    assert apply(ha, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    assert fake.calls(uuids["i-2-2-VM"]) == ["restart", "restart"]
    assert fake.calls(uuids["i-2-1-VM"]) == ["restart"]
    assert status(ha, "c1").pinned_mode == NATIVE


def test_re_checks_each_vm_at_apply_time(ha: RunningHaService, fake: MigrationFakeSync, sqlite_url: str) -> None:
    uuids = cloudstack_cluster(ha, fake)
    migration = plan(ha, "c1", NATIVE)
    fake.remove_vm(uuids["i-2-1-VM"])  # destroyed since the plan
    fake.set_vm(uuids["i-2-2-VM"], priority="restart")  # someone already did it
    engine = create_engine_for(sqlite_url)
    try:
        with engine.begin() as connection:  # HA offering flags changed since the plan
            for name, flag in (("i-2-3-VM", False), ("i-2-4-VM", True)):
                connection.execute(
                    sa.update(ManagedVmRow).where(ManagedVmRow.instance_name == name).values(offering_ha_enabled=flag)
                )
    finally:
        engine.dispose()
    # Created since the plan: an HA VM ha_service decided, and a stray priority on a VM it does not manage.
    host = fake.vm_by_name("i-2-5-VM").resident_host_uuid
    decide(ha, "c1", "i-2-7-VM")
    uuids["i-2-7-VM"] = fake.add_vm("c1", "i-2-7-VM", running_on=host)
    uuids["late"] = fake.add_vm("c1", "late", running_on=host, priority="best-effort")
    uuids["late-plain"] = fake.add_vm("c1", "late-plain", running_on=host)

    assert apply(ha, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
    steps = vm_steps(get(ha, migration.migration_id))
    assert steps["i-2-1-VM"].state == M.MIGRATION_STEP_STATE_SKIPPED and "gone" in steps["i-2-1-VM"].message
    assert steps["i-2-2-VM"].state == M.MIGRATION_STEP_STATE_SKIPPED
    assert fake.calls(uuids["i-2-2-VM"]) == []  # already at the target: no XAPI call
    # Now non-HA: planned "restart", recomputed "" (already so): not clobbered with the plan's value.
    assert steps["i-2-3-VM"].state == M.MIGRATION_STEP_STATE_SKIPPED and fake.calls(uuids["i-2-3-VM"]) == []
    assert fake.priority("i-2-3-VM") == ""
    # Now HA: planned "" (clear the stray best-effort), recomputed "restart".
    assert steps["i-2-4-VM"].state == M.MIGRATION_STEP_STATE_SUCCEEDED
    assert steps["i-2-4-VM"].to_ha_restart_priority == "restart" and "Recomputed" in steps["i-2-4-VM"].message
    assert fake.calls(uuids["i-2-4-VM"]) == ["restart"]
    # New VMs got steps, added after the plan's, and were applied.
    for name, priority in (("i-2-7-VM", "restart"), ("late", "")):
        assert steps[name].state == M.MIGRATION_STEP_STATE_SUCCEEDED and fake.priority(name) == priority
        assert steps[name].index > max(s.index for s in migration.steps)
    assert "late-plain" not in steps and fake.calls(uuids["late-plain"]) == []


def test_second_concurrent_apply_is_refused(ha_db: RunningHaService, fake: MigrationFakeSync) -> None:
    uuids = cloudstack_cluster(ha_db, fake)
    migration = plan(ha_db, "c1", NATIVE)
    other = plan(ha_db, "c1", NATIVE)
    fake.hang_after_write.add(uuids["i-2-1-VM"])
    first = Applier(ha_db, migration.migration_id)
    assert fake.hanging.wait(15)
    assert status(ha_db, "c1").active_migration_id == migration.migration_id
    for migration_id in (migration.migration_id, other.migration_id):
        code, info, _ = rpc_error(apply, ha_db, migration_id)
        assert code == grpc.StatusCode.ABORTED and info.reason == "MIGRATION_IN_PROGRESS"
        assert info.metadata["migration_id"] == migration.migration_id
    fake.release.set()
    first.join()
    assert first.error is None and first.responses[-1].state == M.MIGRATION_STATE_SUCCEEDED
    # The other plan is stale now (the cluster moved after it was made).
    code, info, _ = rpc_error(apply, ha_db, other.migration_id)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "MIGRATION_PLAN_STALE"
    assert max(fake.calls_per_vm().values()) == 1


def test_lease_of_a_dead_apply_expires(
    ha_db: RunningHaService, fake: MigrationFakeSync, clock: ManualClock, db_url: str
) -> None:
    cloudstack_cluster(ha_db, fake)
    migration = plan(ha_db, "c1", NATIVE)
    engine = create_engine_for(db_url)
    try:
        with engine.begin() as connection:  # another replica died holding the cluster
            connection.execute(
                sa.insert(MigrationLeaseRow).values(
                    cluster_id="c1",
                    migration_id=migration.migration_id,
                    holder="apply-of-a-dead-replica",
                    token=7,
                    expire_time=clock() + LEASE_SECONDS,
                    update_time=clock(),
                )
            )
    finally:
        engine.dispose()
    code, info, _ = rpc_error(apply, ha_db, migration.migration_id)
    assert code == grpc.StatusCode.ABORTED and info.reason == "MIGRATION_IN_PROGRESS"
    clock.advance(LEASE_SECONDS + 1)
    assert apply(ha_db, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED


def test_apply_time_preconditions(ha: RunningHaService, fake: MigrationFakeSync) -> None:
    cloudstack_cluster(ha, fake)
    migration = plan(ha, "c1", NATIVE)
    fake.set_pool_ha("c1", ha_enabled=False)
    code, info, _ = rpc_error(apply, ha, migration.migration_id)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "MIGRATION_BLOCKED"
    assert get(ha, migration.migration_id).state == M.MIGRATION_STATE_PLANNED and fake.set_calls == []


def test_resume_after_a_crash_applies_no_step_twice(
    sqlite_url: str, fake: MigrationFakeSync, clock: ManualClock
) -> None:
    with start_ha(sqlite_url, fake, clock) as ha:
        uuids = cloudstack_cluster(ha, fake)
        migration = plan(ha, "c1", NATIVE)
        order = [s.vm_uuid for s in migration.steps if s.kind == VM_STEP]
        victim = order[2]
        fake.hang_after_write.add(victim)  # XAPI takes the write, ha_service dies before recording it
        interrupted = Applier(ha, migration.migration_id)
        assert fake.hanging.wait(15)
    # ha_service is gone (server stopped, sync channel closed) with step 2 committed as "about to apply".
    fake.release.set()
    interrupted.join()
    assert interrupted.error is not None
    assert fake.calls_per_vm() == Counter({u: 1 for u in order[:3]})
    clock.advance(LEASE_SECONDS + 1)  # a crashed apply's lease runs out
    with start_ha(sqlite_url, fake, clock) as ha:
        mid = get(ha, migration.migration_id)
        assert mid.state == M.MIGRATION_STATE_APPLYING
        assert status(ha, "c1").active_migration_id == migration.migration_id
        assert apply(ha, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
        steps = {s.vm_uuid: s for s in get(ha, migration.migration_id).steps if s.kind == VM_STEP}
        assert steps[victim].state == M.MIGRATION_STEP_STATE_SUCCEEDED
        assert "interruption" in steps[victim].message
        assert fake.calls_per_vm() == Counter({u: 1 for u in order})  # every step applied exactly once
        assert status(ha, "c1").pinned_mode == NATIVE
        assert fake.priority("i-2-1-VM") == "restart" and uuids


def test_controller_follows_actual_config_while_migrating(
    sqlite_url: str, fake: MigrationFakeSync, clock: ManualClock
) -> None:
    """A host crash mid-migration: VMs already "restart" are XenServer's, the others CloudStack's; none repaired."""
    with start_ha(sqlite_url, fake, clock, controller=True) as ha:
        fake.add_pool("c1", "ch82", ha=True)
        h1, h2 = fake.add_host("c1", "h1"), fake.add_host("c1", "h2")
        uuids = {}
        for name in HA_VMS:
            decide(ha, "c1", name)
            uuids[name] = fake.add_vm("c1", name, running_on=h1)
        wait_for(lambda: all(managed(ha, "c1", n).present_on_hypervisor for n in HA_VMS), what="VMs bound")
        ha.controller.wait_processed()
        migration = plan(ha, "c1", NATIVE)
        order = [s.instance_name for s in migration.steps if s.kind == VM_STEP]
        fake.hang_after_write.add(uuids[order[1]])  # first two VMs "restart", the third still ""
        applier = Applier(ha, migration.migration_id)
        assert fake.hanging.wait(15)
        before = len(fake.set_calls)
        fake.crash_host_native(h1, restart_on=h2)  # XenServer restarts the two protected VMs
        restarts = wait_for(
            lambda: ha.stub().ListHaActions(M.ListHaActionsRequest(cluster_id="c1")).actions, what="RESTART_VM"
        )
        assert [a.instance_name for a in restarts] == [order[2]]
        ha.controller.tick_now()
        ha.controller.wait_processed()
        assert len(fake.set_calls) == before  # no "repair" of the configs the migration is writing
        assert [len(ha.stub().ListHaActions(M.ListHaActionsRequest(cluster_id="c1")).actions)] == [1]
        running = {n for n in HA_VMS if fake.vm_by_name(n).resident_host_uuid == h2}
        assert running == set(order[:2])  # XenServer restarted exactly the protected ones
        fake.release.set()
        applier.join()
        # The third VM is down and CloudStack's: the migration does not hand it over mid-outage.
        assert applier.responses[-1].state == M.MIGRATION_STATE_FAILED
        step = vm_steps(get(ha, migration.migration_id))[order[2]]
        assert step.state == M.MIGRATION_STEP_STATE_FAILED and step.message.startswith("VM_IN_OUTAGE")
        assert fake.calls(uuids[order[2]]) == []
        # The orchestrator restarts it and acknowledges; applying again finishes the migration.
        fake.set_vm(uuids[order[2]], running_on=h2)
        ha.stub().AckHaAction(
            M.AckHaActionRequest(action_id=restarts[0].action_id, outcome=M.HA_ACTION_STATE_SUCCEEDED)
        )
        wait_for(lambda: managed(ha, "c1", order[2]).observed_power_state == common_pb2.XAPI_POWER_STATE_RUNNING)
        ha.controller.wait_processed()
        assert apply(ha, migration.migration_id)[-1].state == M.MIGRATION_STATE_SUCCEEDED
        assert all(fake.priority(n) == "restart" for n in HA_VMS)
        assert max(fake.calls_per_vm().values()) == 1
