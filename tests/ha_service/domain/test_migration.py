"""R8: the migration planner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_service.domain.migration import (
    MigrationProblemCode,
    MigrationStepKind,
    MigrationVm,
    migration_target_config,
    plan_migration,
    vm_step_needed,
)
from ha_service.domain.model import (
    NO_PRIORITY,
    RESTART_PRIORITY,
    HaConfig,
    HaMode,
    PoolHaFacts,
    VersionFacts,
    VmType,
    WarningCode,
)
from ha_service.domain.versions import native_ha_supported

NATIVE, CS = HaMode.NATIVE, HaMode.CLOUDSTACK
OK = native_ha_supported(VersionFacts("2", "6", "XenServer", "7.1.0"))
OLD = native_ha_supported(VersionFacts("1", "10", "XenServer", "6.1.0"))
UNKNOWN = native_ha_supported(None)
HA_ON = PoolHaFacts(True, False, 1, 1)
RESTART, NOPRIO = HaConfig(RESTART_PRIORITY), HaConfig()

CLUSTER = [
    MigrationVm("a-ha", VmType.User, True, NOPRIO),
    MigrationVm("b-ha-done", VmType.User, True, RESTART),
    MigrationVm("c-plain", VmType.User, False, NOPRIO),
    MigrationVm("d-plain-prio", VmType.User, False, RESTART),
    MigrationVm("e-router-prio", VmType.DomainRouter, False, HaConfig("best-effort")),
    MigrationVm("f-cpvm", VmType.ConsoleProxy, False, NOPRIO),
    MigrationVm("g-unknown", VmType.User, True, None),
]


def test_plan_to_native():
    plan = plan_migration("c1", NATIVE, CLUSTER, OK, HA_ON)
    assert plan.ready and plan.problems == ()
    vm_steps = [(s.vm_uuid, s.to_config) for s in plan.steps if s.kind is MigrationStepKind.SET_VM_HA_CONFIG]
    assert vm_steps == [
        ("a-ha", RESTART),
        ("d-plain-prio", NOPRIO),
        ("e-router-prio", NOPRIO),
        ("g-unknown", RESTART),
    ]
    assert [s.kind for s in plan.steps[-2:]] == [MigrationStepKind.SET_HOST_FENCING, MigrationStepKind.PIN_CLUSTER]
    fencing = plan.steps[-2].fencing
    assert fencing is not None and not fencing.storage_heartbeat_enabled
    assert plan.steps[-1].pin_mode is NATIVE


def test_plan_to_cloudstack():
    plan = plan_migration("c1", CS, CLUSTER, UNKNOWN, None)
    assert plan.ready  # CLOUDSTACK needs nothing of the pool
    vm_steps = [(s.vm_uuid, s.to_config) for s in plan.steps if s.kind is MigrationStepKind.SET_VM_HA_CONFIG]
    assert vm_steps == [
        ("b-ha-done", NOPRIO),
        ("d-plain-prio", NOPRIO),
        ("e-router-prio", NOPRIO),
        ("g-unknown", NOPRIO),
    ]
    fencing = plan.steps[-2].fencing
    assert fencing is not None and fencing.storage_heartbeat_enabled
    assert plan.steps[-1].pin_mode is CS


@pytest.mark.parametrize(
    ("version", "pool", "codes"),
    [
        (OK, HA_ON, []),
        (OLD, HA_ON, [MigrationProblemCode.VERSION_TOO_OLD]),
        (UNKNOWN, HA_ON, [MigrationProblemCode.VERSION_UNKNOWN]),
        (OK, PoolHaFacts(False), [MigrationProblemCode.POOL_HA_DISABLED]),
        (OK, None, [MigrationProblemCode.POOL_NOT_SYNCED]),
        (OLD, PoolHaFacts(False), [MigrationProblemCode.VERSION_TOO_OLD, MigrationProblemCode.POOL_HA_DISABLED]),
    ],
)
def test_native_preconditions(version, pool, codes):
    plan = plan_migration("c1", NATIVE, CLUSTER, version, pool)
    assert [p.code for p in plan.problems] == codes
    assert plan.ready is (not codes)
    assert all(p.message and p.fix for p in plan.problems)
    if MigrationProblemCode.POOL_HA_DISABLED in codes:
        assert "pool-ha-enable" in next(p.fix for p in plan.problems if p.code is MigrationProblemCode.POOL_HA_DISABLED)


def test_native_plan_carries_pool_warnings():
    plan = plan_migration("c1", NATIVE, [], OK, PoolHaFacts(True, True, 2, 1))
    assert {w.code for w in plan.warnings} == {WarningCode.POOL_HA_OVERCOMMITTED, WarningCode.NO_FAILOVER_PLAN}


def test_empty_cluster_still_fences_and_pins():
    plan = plan_migration("c1", NATIVE, [], OK, HA_ON)
    assert [s.kind for s in plan.steps] == [MigrationStepKind.SET_HOST_FENCING, MigrationStepKind.PIN_CLUSTER]


def test_order_and_start_delay_reach_the_steps():
    plan = plan_migration(
        "c1", NATIVE, [MigrationVm("x", VmType.User, True, RESTART)], OK, HA_ON, order=2, start_delay=30
    )
    assert plan.steps[0].to_config == HaConfig(RESTART_PRIORITY, 2, 30)


configs = st.one_of(
    st.none(),
    st.builds(
        HaConfig, st.sampled_from([NO_PRIORITY, RESTART_PRIORITY, "best-effort"]), st.integers(0, 3), st.integers(0, 3)
    ),
)


@given(st.sampled_from(list(VmType)), st.booleans(), st.sampled_from(list(HaMode)), configs)
def test_applying_a_step_makes_it_unneeded(vm_type, ha, target, observed):
    vm = MigrationVm("v", vm_type, ha, observed)
    wanted = vm_step_needed(vm, target)
    if wanted is not None:
        assert vm_step_needed(MigrationVm("v", vm_type, ha, wanted), target) is None
    final = wanted if wanted is not None else observed
    assert final is not None
    is_protected_target = target is NATIVE and vm_type is VmType.User and ha
    assert (final.ha_restart_priority == RESTART_PRIORITY) is is_protected_target
    assert migration_target_config(vm_type, ha, target).ha_restart_priority == (
        RESTART_PRIORITY if is_protected_target else NO_PRIORITY
    )
