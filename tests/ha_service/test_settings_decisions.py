"""Settings, deployment decisions (R1-R5), fencing (R9) and cluster status through the RPCs (sync test double)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from ha_service.testing import RunningHaService
from tests.ha_service.fake_sync import VERSIONS, FakeSync
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.errors import error_details

NATIVE, CLOUDSTACK = common_pb2.HA_MODE_NATIVE, common_pb2.HA_MODE_CLOUDSTACK


def set_global(ha: RunningHaService, native: bool, **kwargs: object) -> ha_service_pb2.UpdateSettingsResponse:
    request = ha_service_pb2.UpdateSettingsRequest(**kwargs)  # type: ignore[arg-type]
    getattr(request, "global").native_ha_enabled = native
    return ha.stub().UpdateSettings(request)


def decide(
    ha: RunningHaService,
    cluster: str,
    name: str,
    *,
    vm_type: int = common_pb2.VM_TYPE_USER,
    ha_enabled: bool = True,
    version: common_pb2.HypervisorVersion | None = None,
    request_id: str = "",
    redundant: bool = False,
) -> ha_service_pb2.VmDeploymentDecision:
    request = ha_service_pb2.DecideVmDeploymentRequest(
        cluster_id=cluster,
        instance_name=name,
        vm_type=vm_type,  # type: ignore[arg-type]
        offering_ha_enabled=ha_enabled,
        request_id=request_id,
        redundant_router=redundant,
    )
    if version is not None:
        request.hypervisor_version.CopyFrom(version)
    return ha.stub().DecideVmDeployment(request).decision


def rpc_error(call: Any, *args: Any) -> tuple[grpc.StatusCode, Any, Any]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    info, bad = error_details(caught.value)
    return caught.value.code(), info, bad


def version(major: int, minor: int, brand: str = "XenServer", product: str = "") -> common_pb2.HypervisorVersion:
    return common_pb2.HypervisorVersion(
        api_version_major=major, api_version_minor=minor, product_brand=brand, product_version=product
    )


# (label, version, expected mode with native_ha_enabled=true)
VERSION_TABLE = [
    ("XenServer 6.1", VERSIONS["xs61"], CLOUDSTACK),
    ("XenServer 6.2.0", VERSIONS["xs62"], NATIVE),
    ("XenServer 6.5", VERSIONS["xs65"], NATIVE),
    ("XenServer 7.1", VERSIONS["xs71"], NATIVE),
    ("Citrix Hypervisor 8.2", VERSIONS["ch82"], NATIVE),
    ("XCP-ng 8.2.1", VERSIONS["xcp821"], NATIVE),
    ("XCP-ng 8.3.0", VERSIONS["xcp830"], NATIVE),
    ("missing product_version, API 2.0", version(2, 0, "XenServer", ""), NATIVE),
    ("product 6.10 with API 1.10 (string trap)", version(1, 10, "XenServer", "6.10.0"), CLOUDSTACK),
    ("product 6.1.99 vs 6.2 (integer compare)", version(2, 0, "XenServer", "6.1.99"), CLOUDSTACK),
    ("product 6.10 with API 2.0 (6.10 > 6.2)", version(2, 0, "XenServer", "6.10"), NATIVE),
]


@pytest.mark.parametrize(("label", "pool_version", "expected"), VERSION_TABLE, ids=[r[0] for r in VERSION_TABLE])
def test_version_gate_from_synced_pool(ha_sqlite, fake_sync: FakeSync, label, pool_version, expected) -> None:
    fake_sync.add_pool("c1", pool_version)
    set_global(ha_sqlite, True)
    decision = decide(ha_sqlite, "c1", "i-2-10-VM")
    assert decision.mode == expected, label
    if expected == NATIVE:
        assert decision.ha_restart_priority == "restart"
        assert decision.restarter == ha_service_pb2.RESTARTER_HYPERVISOR
    else:
        assert decision.ha_restart_priority == ""
        assert decision.restarter == ha_service_pb2.RESTARTER_CLOUDSTACK
    status = ha_sqlite.stub().GetClusterHaStatus(ha_service_pb2.GetClusterHaStatusRequest(cluster_id="c1")).status
    assert status.effective_mode == expected
    assert status.pinned and status.pinned_mode == expected


@pytest.mark.parametrize(("label", "request_version", "expected"), VERSION_TABLE, ids=[r[0] for r in VERSION_TABLE])
def test_version_gate_from_request_when_pool_not_synced(ha_sqlite, label, request_version, expected) -> None:
    set_global(ha_sqlite, True)
    assert decide(ha_sqlite, "c9", "i-1-1-VM", version=request_version).mode == expected, label


def test_unknown_version_native_is_refused_but_cloudstack_is_not(ha_sqlite) -> None:
    # Global false: CLOUDSTACK needs no version.
    assert decide(ha_sqlite, "c1", "i-1-1-VM").mode == CLOUDSTACK
    set_global(ha_sqlite, True, apply_to_unpinned_only=True)
    code, info, _ = rpc_error(decide, ha_sqlite, "c2", "i-1-2-VM")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "HYPERVISOR_VERSION_UNKNOWN"


def test_decision_kinds_and_warnings(ha_sqlite, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("c1", "ch82", ha=False)
    set_global(ha_sqlite, True)
    user = decide(ha_sqlite, "c1", "i-1-1-VM")
    assert (user.mode, user.ha_restart_priority, user.pinned_cluster) == (NATIVE, "restart", True)
    assert "POOL_HA_DISABLED" in [w.code for w in user.warnings]  # R5: succeeds, with a warning
    non_ha = decide(ha_sqlite, "c1", "i-1-2-VM", ha_enabled=False)
    assert (non_ha.ha_restart_priority, non_ha.restarter, non_ha.pinned_cluster) == (
        "",
        ha_service_pb2.RESTARTER_NONE,
        False,
    )
    router = decide(ha_sqlite, "c1", "r-3-VM", vm_type=common_pb2.VM_TYPE_DOMAIN_ROUTER, ha_enabled=True)
    assert (router.ha_restart_priority, router.restarter) == ("", ha_service_pb2.RESTARTER_CLOUDSTACK)
    assert "REDUNDANT_VR_RECOMMENDED" in [w.code for w in router.warnings]
    pair = decide(ha_sqlite, "c1", "r-4-VM", vm_type=common_pb2.VM_TYPE_DOMAIN_ROUTER, redundant=True)
    assert "REDUNDANT_VR_RECOMMENDED" not in [w.code for w in pair.warnings]
    for vm_type in (common_pb2.VM_TYPE_CONSOLE_PROXY, common_pb2.VM_TYPE_SECONDARY_STORAGE_VM):
        system = decide(ha_sqlite, "c1", f"s-{vm_type}-VM", vm_type=vm_type)
        assert (system.ha_restart_priority, system.restarter) == ("", ha_service_pb2.RESTARTER_CLOUDSTACK)


def test_pool_overcommitted_and_no_plan_warnings(ha_sqlite, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("c1", "ch82", ha=True)
    fake_sync.set_pool_ha("c1", ha_overcommitted=True, ha_plan_exists_for=0)
    set_global(ha_sqlite, True)
    codes = [w.code for w in decide(ha_sqlite, "c1", "i-1-1-VM").warnings]
    assert "POOL_HA_OVERCOMMITTED" in codes and "NO_FAILOVER_PLAN" in codes


def test_decisions_are_idempotent_per_request_and_per_vm(ha_sqlite, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("c1", "ch82")
    set_global(ha_sqlite, True)
    first = decide(ha_sqlite, "c1", "i-1-1-VM", request_id="r1")
    assert decide(ha_sqlite, "c1", "i-1-1-VM", request_id="r1") == first
    # Same VM, new request id, even after the settings changed: the same answer.
    set_global(ha_sqlite, False, apply_to_unpinned_only=True)
    assert decide(ha_sqlite, "c1", "i-1-1-VM", request_id="r2") == first


def test_sync_down_unavailable_unless_version_given(ha_sqlite, fake_sync: FakeSync) -> None:
    set_global(ha_sqlite, True)
    fake_sync.down = True
    code, info, _ = rpc_error(decide, ha_sqlite, "c1", "i-1-1-VM")
    assert (code, info.reason) == (grpc.StatusCode.UNAVAILABLE, "SYNC_SERVICE_UNAVAILABLE")
    decision = decide(ha_sqlite, "c1", "i-1-2-VM", version=VERSIONS["xs65"])
    assert decision.mode == NATIVE
    assert "SYNC_SERVICE_UNAVAILABLE" in [w.code for w in decision.warnings]
    # Asked again, the answer is read back from its row: the same, warnings included, as the one built on deciding.
    assert decide(ha_sqlite, "c1", "i-1-2-VM", version=VERSIONS["xs65"]) == decision


def test_settings_update_refused_when_it_would_flip_a_pinned_cluster(ha_sqlite, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("c1", "ch82")
    fake_sync.add_pool("c2", "ch82")
    fake_sync.add_pool("old", "xs61")
    set_global(ha_sqlite, True)
    decide(ha_sqlite, "c1", "i-1-1-VM")  # pins c1 NATIVE
    decide(ha_sqlite, "old", "i-1-2-VM")  # pins old CLOUDSTACK (version gate): never affected
    code, info, _ = rpc_error(set_global, ha_sqlite, False)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "HA_MODE_PINNED"
    assert info.metadata["clusters"] == "c1"
    # Unpinned only: applied; c1 is listed as left as it was and stays NATIVE.
    response = set_global(ha_sqlite, False, apply_to_unpinned_only=True)
    assert list(response.clusters_left_unchanged) == ["c1"]
    assert not getattr(response.settings, "global").native_ha_enabled
    stub = ha_sqlite.stub()
    assert (
        stub.GetClusterHaStatus(ha_service_pb2.GetClusterHaStatusRequest(cluster_id="c1")).status.effective_mode
        == NATIVE
    )
    assert (
        stub.GetClusterHaStatus(ha_service_pb2.GetClusterHaStatusRequest(cluster_id="c2")).status.effective_mode
        == CLOUDSTACK
    )
    # A cluster override that would flip a pin is refused too: c2 is pinned CLOUDSTACK by its first HA VM.
    assert decide(ha_sqlite, "c2", "i-1-3-VM").mode == CLOUDSTACK
    request = ha_service_pb2.UpdateSettingsRequest(
        set_cluster_overrides=[ha_service_pb2.ClusterOverride(cluster_id="c2", native_ha_enabled=True)]
    )
    code, info, _ = rpc_error(stub.UpdateSettings, request)
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HA_MODE_PINNED")


def test_expected_version_and_request_id(ha_sqlite) -> None:
    stub = ha_sqlite.stub()
    settings = stub.GetSettings(ha_service_pb2.GetSettingsRequest()).settings
    assert not getattr(settings, "global").native_ha_enabled  # default false
    assert getattr(settings, "global").heartbeat_interval.seconds == 60
    assert getattr(settings, "global").heartbeat_timeout.seconds == 120
    updated = set_global(ha_sqlite, True, expected_version=settings.version, request_id="u1")
    assert updated.settings.version == settings.version + 1
    # Retry with the same request id: the same answer, not ABORTED.
    assert set_global(ha_sqlite, True, expected_version=settings.version, request_id="u1") == updated
    code, info, _ = rpc_error(lambda: set_global(ha_sqlite, False, expected_version=settings.version))
    assert (code, info.reason) == (grpc.StatusCode.ABORTED, "SETTINGS_VERSION_MISMATCH")


def test_fencing_policy(ha_sqlite, fake_sync: FakeSync) -> None:
    fake_sync.add_pool("cs", "ch82")
    fake_sync.add_pool("nat", "ch82", ha=True)
    fake_sync.add_pool("unf", "ch82", ha=False)
    request = ha_service_pb2.UpdateSettingsRequest(
        set_cluster_overrides=[
            ha_service_pb2.ClusterOverride(cluster_id="nat", native_ha_enabled=True),
            ha_service_pb2.ClusterOverride(cluster_id="unf", native_ha_enabled=True),
        ]
    )
    stub = ha_sqlite.stub()
    stub.UpdateSettings(request)

    def policy(cluster: str) -> ha_service_pb2.HostFencingPolicy:
        policy: ha_service_pb2.HostFencingPolicy = stub.GetHostFencingPolicy(
            ha_service_pb2.GetHostFencingPolicyRequest(cluster_id=cluster)
        ).policy
        return policy

    cs = policy("cs")
    assert (cs.mode, cs.mechanism, cs.storage_heartbeat_enabled, cs.unfenced) == (
        CLOUDSTACK,
        ha_service_pb2.FENCING_MECHANISM_STORAGE_HEARTBEAT,
        True,
        False,
    )
    assert (cs.heartbeat_interval.seconds, cs.heartbeat_timeout.seconds) == (60, 120)
    nat = policy("nat")
    assert (nat.mode, nat.mechanism, nat.storage_heartbeat_enabled, nat.unfenced) == (
        NATIVE,
        ha_service_pb2.FENCING_MECHANISM_XENSERVER_HA,
        False,
        False,
    )
    unf = policy("unf")
    assert (unf.mechanism, unf.unfenced) == (ha_service_pb2.FENCING_MECHANISM_NONE, True)
    code, info, _ = rpc_error(stub.GetHostFencingPolicy, ha_service_pb2.GetHostFencingPolicyRequest(cluster_id="nope"))
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "CLUSTER_NOT_FOUND")
    statuses = stub.ListClusterHaStatuses(ha_service_pb2.ListClusterHaStatusesRequest(page_size=2))
    assert [s.cluster_id for s in statuses.statuses] == ["cs", "nat"] and statuses.next_page_token
    rest = stub.ListClusterHaStatuses(ha_service_pb2.ListClusterHaStatusesRequest(page_token=statuses.next_page_token))
    assert [s.cluster_id for s in rest.statuses] == ["unf"]
    assert "POOL_UNFENCED" in [w.code for w in rest.statuses[0].warnings]


def test_validation_errors(ha_sqlite) -> None:
    stub = ha_sqlite.stub()
    code, info, bad = rpc_error(
        stub.DecideVmDeployment,
        ha_service_pb2.DecideVmDeploymentRequest(cluster_id="bad id!", instance_name="", vm_uuid="nope"),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.field_violations} == {"cluster_id", "instance_name", "vm_uuid", "vm_type"}
    code, _, bad = rpc_error(stub.ListManagedVms, ha_service_pb2.ListManagedVmsRequest(page_size=-1, page_token="x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _, bad = rpc_error(
        stub.ListManagedVms,
        ha_service_pb2.ListManagedVmsRequest(
            protection_states=[
                ha_service_pb2.PROTECTION_STATE_PROTECTED,
                ha_service_pb2.PROTECTION_STATE_UNSPECIFIED,
                ha_service_pb2.ProtectionState.ValueType(99),
            ]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.field_violations] == ["protection_states[1]", "protection_states[2]"]
    code, _, bad = rpc_error(
        stub.ListHaActions, ha_service_pb2.ListHaActionsRequest(states=[ha_service_pb2.HA_ACTION_STATE_UNSPECIFIED])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field_violations[0].field == "states[0]"
    assert "HaActionState other than UNSPECIFIED" in bad.field_violations[0].description
    request = ha_service_pb2.UpdateSettingsRequest()
    getattr(request, "global").restart_overdue_grace.seconds = 0
    code, _, bad = rpc_error(stub.UpdateSettings, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and bad.field_violations[0].field == "global.restart_overdue_grace"
    code, info, _ = rpc_error(
        stub.GetManagedVm, ha_service_pb2.GetManagedVmRequest(cluster_id="c1", instance_name="i-9-9-VM")
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "MANAGED_VM_NOT_FOUND")
    code, info, _ = rpc_error(
        stub.AckHaAction,
        ha_service_pb2.AckHaActionRequest(action_id="x", outcome=ha_service_pb2.HA_ACTION_STATE_SUCCEEDED),
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "HA_ACTION_NOT_FOUND")
    code, _, _ = rpc_error(stub.AckHaAction, ha_service_pb2.AckHaActionRequest(action_id="x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _, bad = rpc_error(stub.PlanMigration, ha_service_pb2.PlanMigrationRequest(cluster_id="c1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and bad.field_violations[0].field == "target_mode"
