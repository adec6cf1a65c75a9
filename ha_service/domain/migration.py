"""R8 migration planning: the steps that move a cluster between HA modes, and their preconditions.

Order of steps: every VM's HA config, then host fencing, then the pin. The pin goes last because the applier pins
only when every earlier step has succeeded; until then each VM is owned by whatever its hypervisor config says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ha_service.domain.model import (
    NO_PRIORITY,
    RESTART_PRIORITY,
    FencingPolicy,
    FencingSettings,
    HaConfig,
    HaMode,
    HaWarning,
    PoolHaFacts,
    Restarter,
    VersionVerdict,
    VmType,
)
from ha_service.domain.policy import (
    DEFAULT_FENCING_SETTINGS,
    fencing_policy,
    ha_config_drift,
    pool_ha_warnings,
    restarter_for,
)


class MigrationStepKind(StrEnum):
    SET_VM_HA_CONFIG = "SET_VM_HA_CONFIG"
    SET_HOST_FENCING = "SET_HOST_FENCING"
    PIN_CLUSTER = "PIN_CLUSTER"


class MigrationProblemCode(StrEnum):
    VERSION_UNKNOWN = "VERSION_UNKNOWN"
    VERSION_TOO_OLD = "VERSION_TOO_OLD"
    POOL_NOT_SYNCED = "POOL_NOT_SYNCED"
    POOL_HA_DISABLED = "POOL_HA_DISABLED"


@dataclass(frozen=True)
class MigrationVm:
    vm_uuid: str
    vm_type: VmType
    ha_enabled: bool
    observed: HaConfig | None  # None: the mirror does not know it (the step is planned anyway; it is idempotent)


@dataclass(frozen=True)
class MigrationStep:
    kind: MigrationStepKind
    description: str
    vm_uuid: str | None = None
    from_config: HaConfig | None = None
    to_config: HaConfig | None = None
    fencing: FencingPolicy | None = None
    pin_mode: HaMode | None = None


@dataclass(frozen=True)
class MigrationProblem:
    code: MigrationProblemCode
    message: str
    fix: str


@dataclass(frozen=True)
class MigrationPlan:
    cluster_id: str
    target_mode: HaMode
    steps: tuple[MigrationStep, ...]
    problems: tuple[MigrationProblem, ...]  # any problem -> the plan cannot be applied (FAILED_PRECONDITION)
    warnings: tuple[HaWarning, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.problems


def migration_target_config(
    vm_type: VmType, ha_enabled: bool, target: HaMode, order: int = 0, start_delay: int = 0
) -> HaConfig:
    """The HA config a VM must carry in the target mode (the same as a deployment decision there would give)."""
    if restarter_for(target, vm_type, ha_enabled) is Restarter.HYPERVISOR:
        return HaConfig(RESTART_PRIORITY, order, start_delay)
    return HaConfig(NO_PRIORITY, 0, 0)


def vm_step_needed(vm: MigrationVm, target: HaMode, order: int = 0, start_delay: int = 0) -> HaConfig | None:
    """The config to set on this VM, or None when it already has it. The applier calls it again at apply time."""
    wanted = migration_target_config(vm.vm_type, vm.ha_enabled, target, order, start_delay)
    if vm.observed is not None and ha_config_drift(wanted, vm.observed) is None:
        return None
    return wanted


def migration_problems(
    target: HaMode, version: VersionVerdict, pool_ha: PoolHaFacts | None
) -> tuple[MigrationProblem, ...]:
    """Preconditions. Moving to CLOUDSTACK has none: CloudStack's own HA works on every version and pool."""
    if target is HaMode.CLOUDSTACK:
        return ()
    problems: list[MigrationProblem] = []
    if version.unknown:
        problems.append(
            MigrationProblem(
                MigrationProblemCode.VERSION_UNKNOWN,
                f"The pool's version is unknown: {version.reason}",
                "Wait until sync_service has synced the pool (check its sync status), then plan again.",
            )
        )
    elif not version.supported:
        problems.append(
            MigrationProblem(
                MigrationProblemCode.VERSION_TOO_OLD,
                version.reason,
                "Upgrade the pool to XenServer 6.2 or later (or XCP-ng 8.x) before moving it to NATIVE.",
            )
        )
    if pool_ha is None:
        problems.append(
            MigrationProblem(
                MigrationProblemCode.POOL_NOT_SYNCED,
                "The pool's HA state is unknown (pool not synced).",
                "Wait until sync_service has synced the pool, then plan again.",
            )
        )
    elif not pool_ha.ha_enabled:
        problems.append(
            MigrationProblem(
                MigrationProblemCode.POOL_HA_DISABLED,
                "Pool HA is disabled: XenServer would neither restart the VMs nor fence failed hosts.",
                "Enable HA on the pool first (xe pool-ha-enable heartbeat-sr-uuids=<shared SR uuid>, or XenCenter "
                "> Pool > High Availability), then plan again.",
            )
        )
    return tuple(problems)


def plan_migration(
    cluster_id: str,
    target: HaMode,
    vms: Iterable[MigrationVm],
    version: VersionVerdict,
    pool_ha: PoolHaFacts | None,
    order: int = 0,
    start_delay: int = 0,
    fencing_settings: FencingSettings = DEFAULT_FENCING_SETTINGS,
) -> MigrationPlan:
    """Every step of moving `cluster_id` to `target`, in order, with the preconditions that block it.

    VMs already carrying their target config get no step. Fencing and pin steps are always listed (idempotent).
    """
    steps: list[MigrationStep] = []
    for vm in sorted(vms, key=lambda v: v.vm_uuid):
        wanted = vm_step_needed(vm, target, order, start_delay)
        if wanted is None:
            continue
        shown = repr(vm.observed.ha_restart_priority) if vm.observed is not None else "unknown"
        steps.append(
            MigrationStep(
                MigrationStepKind.SET_VM_HA_CONFIG,
                f"Set {vm.vm_type} {vm.vm_uuid}'s ha_restart_priority from {shown} to "
                f"{wanted.ha_restart_priority!r} (order {wanted.order}, start_delay {wanted.start_delay}).",
                vm_uuid=vm.vm_uuid,
                from_config=vm.observed,
                to_config=wanted,
            )
        )
    fencing = fencing_policy(target, pool_ha, fencing_settings, cluster_id)
    steps.append(
        MigrationStep(
            MigrationStepKind.SET_HOST_FENCING,
            "Enable the storage heartbeat host reboot."
            if fencing.storage_heartbeat_enabled
            else "Retire the storage heartbeat host reboot (XenServer HA fences hosts).",
            fencing=fencing,
        )
    )
    steps.append(
        MigrationStep(MigrationStepKind.PIN_CLUSTER, f"Pin cluster {cluster_id} to {target}.", pin_mode=target)
    )
    warnings = pool_ha_warnings(pool_ha) if target is HaMode.NATIVE and pool_ha is not None else ()
    return MigrationPlan(
        cluster_id,
        target,
        tuple(steps),
        migration_problems(target, version, pool_ha),
        warnings,
    )
