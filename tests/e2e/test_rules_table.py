"""Every policy rule through the RPCs, table-driven, against real sync_service-mirrored xapi_sim pools (R1-R5, R9, R2).

Each row is a pool of the simulator (a version preset, with `software_version` overrides for the traps), registered
with sync_service as a cluster. ha_service decides from the version sync_service mirrored, never from the request:
the requests carry no version (except the one row whose pool is not registered at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from tests.e2e.conftest import WAIT, Stack, StartStack, pool_spec
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.errors import error_details
from xsha_common.testing import wait_until

NATIVE = common_pb2.HA_MODE_NATIVE
CLOUDSTACK = common_pb2.HA_MODE_CLOUDSTACK
VERSION_GATE = ha_service_pb2.MODE_REASON_VERSION_GATE
OVERRIDE = ha_service_pb2.MODE_REASON_CLUSTER_OVERRIDE
GLOBAL = ha_service_pb2.MODE_REASON_GLOBAL_SETTING
PINNED = ha_service_pb2.MODE_REASON_PINNED
XENSERVER_HA = ha_service_pb2.FENCING_MECHANISM_XENSERVER_HA
HEARTBEAT = ha_service_pb2.FENCING_MECHANISM_STORAGE_HEARTBEAT
NO_FENCING = ha_service_pb2.FENCING_MECHANISM_NONE

HA_VM = "i-2-10-VM"  # user VM, HA offering
PLAIN_VM = "i-2-11-VM"  # user VM, no HA offering
ROUTER = "r-12-VM"  # non-redundant virtual router
PROXY = "v-13-VM"  # console proxy


@dataclass(frozen=True)
class Row:
    cluster: str
    version: str  # xapi_sim preset
    mode: int
    reason: int  # before the first HA VM pins the cluster
    fencing: int
    software_version: dict[str, Any] = field(default_factory=dict)
    pool_ha: bool = True
    native_override: bool | None = None
    # What sync_service must have mirrored (the decision's input): (API major, minor, product_version).
    mirrored: tuple[int, int, str] | None = None
    status_warnings: frozenset[str] = frozenset()
    decision_warnings: frozenset[str] = frozenset()


ROWS = [
    # XenServer 6.1: API 1.10 < 2.0 -> CLOUDSTACK whatever the settings say, even a cluster override.
    Row("xs-6.1", "xenserver-6.1", CLOUDSTACK, VERSION_GATE, HEARTBEAT, pool_ha=False, mirrored=(1, 10, "6.1.0")),
    Row("xs-6.1-override", "xenserver-6.1", CLOUDSTACK, VERSION_GATE, HEARTBEAT, pool_ha=False, native_override=True),
    Row("xs-6.2.0", "xenserver-6.2", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 0, "6.2.0")),
    Row("xs-6.5", "xenserver-6.5", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 3, "6.5.0")),
    Row("xs-7.1", "xenserver-7.1", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 6, "7.1.0")),
    Row("xs-7.1-override", "xenserver-7.1", CLOUDSTACK, OVERRIDE, HEARTBEAT, native_override=False),
    Row("ch-8.2", "citrix-hypervisor-8.2", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 15, "8.2.0")),
    Row("xcp-ng-8.2.1", "xcp-ng-8.2", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 16, "8.2.1")),
    Row("xcp-ng-8.3.0", "xcp-ng-8.3", NATIVE, GLOBAL, XENSERVER_HA, mirrored=(2, 21, "8.3.0")),
    # No product_version at all: the API version decides; the skipped cross-check is reported.
    Row(
        "no-product-version",
        "citrix-hypervisor-8.2",
        NATIVE,
        GLOBAL,
        XENSERVER_HA,
        software_version={"product_version": None},
        mirrored=(2, 15, ""),
        status_warnings=frozenset({"VERSION_CROSS_CHECK_SKIPPED"}),
        decision_warnings=frozenset({"VERSION_CROSS_CHECK_SKIPPED"}),
    ),
    # Version-string traps: compared as strings "6.10" < "6.2" and "10.0.0" < "6.2.0"; as integers both are newer.
    Row("trap-6.10", "xenserver-6.2", NATIVE, GLOBAL, XENSERVER_HA, software_version={"product_version": "6.10"}),
    Row("trap-10.0.0", "citrix-hypervisor-8.2", NATIVE, GLOBAL, XENSERVER_HA, {"product_version": "10.0.0"}),
    Row("trap-6.2", "xenserver-6.2", NATIVE, GLOBAL, XENSERVER_HA, software_version={"product_version": "6.2"}),
    # API 2.0 but a XenServer product_version below 6.2.0: the cross-check keeps it CLOUDSTACK.
    Row("trap-6.1.10", "xenserver-6.2", CLOUDSTACK, VERSION_GATE, HEARTBEAT, {"product_version": "6.1.10"}),
    # R5 + R9: NATIVE without pool HA still deploys, with a warning, and nobody fences the hosts.
    Row(
        "ch-8.2-pool-ha-off",
        "citrix-hypervisor-8.2",
        NATIVE,
        GLOBAL,
        NO_FENCING,
        pool_ha=False,
        status_warnings=frozenset({"POOL_HA_DISABLED"}),
        decision_warnings=frozenset({"POOL_HA_DISABLED"}),
    ),
]
UNPINNED = "ch-8.2-unpinned"  # only a system VM is deployed there: never pinned


def _scenario() -> list[dict[str, Any]]:
    pools = []
    for row in ROWS:
        vms = [{"name": name, "memory_gib": 1} for name in (HA_VM, PLAIN_VM, ROUTER, PROXY)]
        spec = pool_spec(row.cluster, row.version, ha_enabled=row.pool_ha, vms=vms)
        if row.software_version:
            spec["software_version"] = row.software_version
        pools.append(spec)
    pools.append(pool_spec(UNPINNED, ha_enabled=True, vms=[{"name": PROXY, "memory_gib": 1}]))
    return pools


def _codes(warnings: Any) -> set[str]:
    return {w.code for w in warnings}


def _check_row(stack: Stack, row: Row) -> None:
    where = f"[{row.cluster}]"
    status = stack.status(row.cluster)
    assert status.pool_synced, where
    assert (status.effective_mode, status.mode_reason) == (row.mode, row.reason), f"{where} {status.mode_explanation}"
    assert row.status_warnings <= _codes(status.warnings), f"{where} {status.warnings}"
    if row.mirrored is not None:
        major, minor, product = row.mirrored
        version = status.version
        assert (version.api_version_major, version.api_version_minor, version.product_version) == (
            major,
            minor,
            product,
        ), where
    expected_product = row.software_version.get("product_version", "")
    if expected_product:
        assert status.version.product_version == expected_product, where

    policy = stack.fencing(row.cluster)
    assert policy.mechanism == row.fencing, where
    assert policy.storage_heartbeat_enabled == (row.fencing == HEARTBEAT), where
    assert policy.unfenced == (row.fencing == NO_FENCING), where
    if row.fencing == HEARTBEAT:  # xenserver.heartbeat.interval / timeout defaults
        assert (policy.heartbeat_interval.seconds, policy.heartbeat_timeout.seconds) == (60, 120), where

    native = row.mode == NATIVE
    ha = stack.decide(row.cluster, HA_VM)
    assert ha.mode == row.mode, where
    assert ha.ha_restart_priority == ("restart" if native else ""), where
    assert ha.restarter == (ha_service_pb2.RESTARTER_HYPERVISOR if native else ha_service_pb2.RESTARTER_CLOUDSTACK)
    assert ha.pinned_cluster, f"{where} the first HA user VM pins the cluster (R2)"
    assert row.decision_warnings <= _codes(ha.warnings), f"{where} {ha.warnings}"
    if row.pool_ha or not native:
        assert "POOL_HA_DISABLED" not in _codes(ha.warnings), where

    plain = stack.decide(row.cluster, PLAIN_VM, ha=False)
    assert (plain.mode, plain.ha_restart_priority, plain.restarter) == (row.mode, "", ha_service_pb2.RESTARTER_NONE)
    assert not plain.pinned_cluster, where
    router = stack.decide(row.cluster, ROUTER, ha=False, vm_type=common_pb2.VM_TYPE_DOMAIN_ROUTER)
    assert (router.ha_restart_priority, router.restarter) == ("", ha_service_pb2.RESTARTER_CLOUDSTACK), where
    assert ("REDUNDANT_VR_RECOMMENDED" in _codes(router.warnings)) == native, where
    proxy = stack.decide(row.cluster, PROXY, ha=False, vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY)
    assert (proxy.ha_restart_priority, proxy.restarter) == ("", ha_service_pb2.RESTARTER_CLOUDSTACK), where
    # Idempotent per request id and per VM (R4).
    assert stack.decide(row.cluster, HA_VM) == ha, where


def _check_applied(stack: Stack, row: Row) -> None:
    """The decisions reached XAPI through sync_service (and only the HA user VM of a NATIVE cluster got one)."""
    where = f"[{row.cluster}]"
    native = row.mode == NATIVE
    vm = stack.managed(row.cluster, HA_VM)
    expected = ha_service_pb2.PROTECTION_STATE_PROTECTED if native else ha_service_pb2.PROTECTION_STATE_NOT_APPLICABLE
    assert vm.protection_state == expected, where
    assert stack.vm_rec(row.cluster, HA_VM)["ha_restart_priority"] == ("restart" if native else ""), where
    for name in (PLAIN_VM, ROUTER, PROXY):
        assert stack.vm_rec(row.cluster, name)["ha_restart_priority"] == "", f"{where} {name}"
    status = stack.status(row.cluster)
    assert (status.effective_mode, status.pinned, status.pinned_mode) == (row.mode, True, row.mode), where
    if row.reason != VERSION_GATE:
        assert status.mode_reason == PINNED, where
    assert status.managed_vm_count == 4, where
    assert status.protected_vm_count == (1 if native else 0), where


def test_rules_table(start_stack: StartStack) -> None:
    stack = start_stack(_scenario())
    overrides = {row.cluster: row.native_override for row in ROWS if row.native_override is not None}
    stack.set_native(True, **overrides)

    for row in ROWS:
        _check_row(stack, row)
    stack.decide(UNPINNED, PROXY, ha=False, vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY)
    stack.wait_bound(UNPINNED, PROXY)
    for row in ROWS:
        stack.wait_bound(row.cluster, HA_VM, PLAIN_VM, ROUTER, PROXY)
        _check_applied(stack, row)

    # R3: a pool sync_service does not know, and no version in the request -> FAILED_PRECONDITION, never a guess.
    with pytest.raises(grpc.RpcError) as refused:
        stack.decide("not-registered", HA_VM)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    info, _ = error_details(refused.value)
    assert info is not None and info.reason == "HYPERVISOR_VERSION_UNKNOWN"
    # ...the version CloudStack knows, given in the request, is used instead.
    given = common_pb2.HypervisorVersion(
        api_version_major=2, api_version_minor=15, product_brand="XenServer", product_version="8.2.0"
    )
    decided = stack.decide("not-registered", HA_VM, version=given)
    assert (decided.mode, decided.ha_restart_priority) == (NATIVE, "restart")
    old = common_pb2.HypervisorVersion(
        api_version_major=1, api_version_minor=10, product_brand="XenServer", product_version="6.1.0"
    )
    assert stack.decide("not-registered-61", HA_VM, version=old).mode == CLOUDSTACK

    # R2: turning native HA off globally would flip every pinned NATIVE cluster: refused, naming them.
    flipped = {row.cluster for row in ROWS if row.mode == NATIVE} | {"not-registered"}
    off = ha_service_pb2.GlobalSettingsPatch(native_ha_enabled=False)
    with pytest.raises(grpc.RpcError) as pinned:
        stack.update_settings(**{"global": off})
    assert pinned.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    info, _ = error_details(pinned.value)
    assert info is not None and info.reason == "HA_MODE_PINNED"
    assert set(info.metadata["clusters"].split(",")) == flipped
    # ...unless asked for unpinned clusters only: then the pinned ones are listed and left as they were.
    applied = stack.update_settings(**{"global": off}, apply_to_unpinned_only=True)
    assert set(applied.clusters_left_unchanged) == flipped
    assert not getattr(applied.settings, "global").native_ha_enabled
    unpinned = stack.status(UNPINNED)
    assert (unpinned.effective_mode, unpinned.mode_reason, unpinned.pinned) == (CLOUDSTACK, GLOBAL, False)
    for row in ROWS:
        status = stack.status(row.cluster)
        assert status.effective_mode == row.mode, f"[{row.cluster}] a settings change never flips a pinned cluster"

    # No action was ever asked for: nothing failed.
    wait_until(lambda: stack.ha.controller.connected.is_set(), WAIT, what="the controller to stay connected")
    stack.settle()
    assert stack.actions() == []
