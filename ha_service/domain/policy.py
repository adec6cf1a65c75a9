"""ha_service's rules as pure functions: R1 mode, R2 pins, R4/R5 deployment, R5 protection, R9 fencing, R11 drift."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from ha_service.domain.model import (
    NO_PRIORITY,
    RESTART_PRIORITY,
    DeploymentDecision,
    DeploymentRequest,
    DriftIntent,
    DriftResponse,
    Fencer,
    FencingPolicy,
    FencingSettings,
    HaConfig,
    HaConfigDrift,
    HaMode,
    HaWarning,
    ModeReason,
    ModeResolution,
    ModeSettings,
    Notification,
    NotificationKind,
    PinConflict,
    PoolHaFacts,
    PowerState,
    Protection,
    ProtectionStatus,
    Restarter,
    RetryBackoff,
    RetryDecision,
    SettingsUpdateCheck,
    UnprotectedReason,
    VersionVerdict,
    VmType,
    WarningCode,
    XapiPowerState,
)

HA_MODE_PINNED = "HA_MODE_PINNED"  # ErrorInfo reason of a refused settings update (R2)

# --- CloudStack power state -------------------------------------------------------------------------------------


def cloudstack_power_state(xapi_power_state: str | XapiPowerState | None) -> PowerState:
    """CitrixResourceBase's mapping: Running -> PowerOn; Halted/Paused/Suspended -> PowerOff; else PowerUnknown.

    PowerReportMissing is not a mapping of a reported value (it means "absent from reports for two ping intervals")
    and is never returned here.
    """
    state = xapi_power_state if isinstance(xapi_power_state, XapiPowerState) else XapiPowerState.parse(xapi_power_state)
    if state is None:
        return PowerState.PowerUnknown
    return PowerState.PowerOn if state is XapiPowerState.Running else PowerState.PowerOff


# --- R1 effective mode ------------------------------------------------------------------------------------------


def effective_mode(
    version: VersionVerdict,
    pinned: HaMode | None,
    override: HaMode | None,
    native_ha_enabled: bool,
) -> ModeResolution:
    """A cluster's effective mode, first match wins: version gate, pin, cluster override, global setting.

    An unknown version only matters when the answer would be NATIVE (then mode None, reason VERSION_UNKNOWN: the
    caller answers FAILED_PRECONDITION). When the pin or settings say CLOUDSTACK the answer is CLOUDSTACK whatever
    the version, because the version gate can only ever turn a cluster into CLOUDSTACK.
    """
    if not version.unknown and not version.supported:
        return ModeResolution(HaMode.CLOUDSTACK, ModeReason.VERSION_GATE, version.reason)
    if pinned is not None:
        mode, reason, detail = pinned, ModeReason.PINNED, f"The cluster is pinned to {pinned} (R2)."
    elif override is not None:
        mode, reason, detail = override, ModeReason.CLUSTER_OVERRIDE, f"The cluster's override says {override}."
    else:
        mode = HaMode.NATIVE if native_ha_enabled else HaMode.CLOUDSTACK
        reason = ModeReason.GLOBAL_SETTING
        detail = f"xenserver.native.ha.enabled is {'true' if native_ha_enabled else 'false'}."
    if version.unknown:
        if mode is HaMode.NATIVE:
            return ModeResolution(
                None,
                ModeReason.VERSION_UNKNOWN,
                f"{detail} NATIVE needs XenServer 6.2 or later, but {version.reason}",
            )
        detail = f"{detail} (The pool's version is unknown; CLOUDSTACK does not depend on it.)"
    return ModeResolution(mode, reason, detail)


def effective_mode_for_cluster(
    cluster_id: str,
    version: VersionVerdict,
    pins: Mapping[str, HaMode],
    settings: ModeSettings,
) -> ModeResolution:
    return effective_mode(
        version,
        pins.get(cluster_id),
        settings.cluster_overrides.get(cluster_id),
        settings.native_ha_enabled,
    )


# --- R2 pinning -------------------------------------------------------------------------------------------------


def deployment_pins_cluster(vm_type: VmType, offering_ha: bool, cluster_pinned: bool) -> bool:
    """The first HA-enabled user VM deployed in a cluster pins the cluster's effective mode."""
    return vm_type is VmType.User and offering_ha and not cluster_pinned


def check_settings_update(
    current: ModeSettings,
    proposed: ModeSettings,
    pins: Mapping[str, HaMode],
    apply_to_unpinned_only: bool = False,
    version_gated_clusters: frozenset[str] = frozenset(),
) -> SettingsUpdateCheck:
    """Would the update flip a pinned cluster (R2)?

    It would when it changes the mode the settings give a pinned cluster (its override, or the global value when
    it has none) to something other than its pin. A cluster already configured differently from its pin (left as
    it was by an earlier apply-to-unpinned-only) is not flipped by an update that leaves that value alone.
    Clusters whose pool fails the version gate are CLOUDSTACK whatever the settings, so no update flips them.
    Pins outrank settings (R1), so "apply to unpinned clusters only" needs no extra writes: the conflicting
    clusters keep their pinned mode and are reported as left as they were.
    """
    conflicts = tuple(
        PinConflict(cluster_id, pinned_mode, after)
        for cluster_id, pinned_mode in sorted(pins.items())
        if cluster_id not in version_gated_clusters
        and (after := proposed.configured_mode(cluster_id)) != current.configured_mode(cluster_id)
        and after is not pinned_mode
    )
    if not conflicts:
        return SettingsUpdateCheck(True, (), "The update flips no pinned cluster.")
    named = ", ".join(f"{c.cluster_id} (pinned {c.pinned_mode})" for c in conflicts)
    if apply_to_unpinned_only:
        return SettingsUpdateCheck(True, conflicts, f"Applied to unpinned clusters only; left as they were: {named}.")
    return SettingsUpdateCheck(
        False,
        conflicts,
        f"The update would change the HA mode of pinned clusters: {named}. A pinned cluster changes mode only "
        "through a migration; migrate them first, or ask to apply the update to unpinned clusters only.",
    )


# --- R4/R5 deployment decision ----------------------------------------------------------------------------------


def pool_ha_warnings(pool_ha: PoolHaFacts | None) -> tuple[HaWarning, ...]:
    """Why XenServer might not restart a protected VM of this pool (R5): reported, never a failure."""
    if pool_ha is None:
        return (
            HaWarning(
                WarningCode.POOL_NOT_SYNCED,
                "The pool's HA state is not known yet (pool not synced); the VM may be unprotected.",
            ),
        )
    if not pool_ha.ha_enabled:
        return (
            HaWarning(
                WarningCode.POOL_HA_DISABLED,
                "Pool HA is disabled: XenServer will not restart this VM. Enable HA on the pool "
                "(xe pool-ha-enable heartbeat-sr-uuids=<shared SR>).",
            ),
        )
    warnings: list[HaWarning] = []
    if pool_ha.ha_overcommitted:
        warnings.append(
            HaWarning(
                WarningCode.POOL_HA_OVERCOMMITTED,
                "The pool is HA-overcommitted: not every protected VM can be restarted after a host failure. "
                "Add capacity or lower ha-host-failures-to-tolerate.",
            )
        )
    plan, tolerate = pool_ha.ha_plan_exists_for, pool_ha.ha_host_failures_to_tolerate
    if plan is not None and tolerate is not None and plan < tolerate:
        warnings.append(
            HaWarning(
                WarningCode.NO_FAILOVER_PLAN,
                f"The pool's failover plan covers {plan} host failure(s) but {tolerate} should be tolerated. "
                "Add capacity or lower ha-host-failures-to-tolerate.",
            )
        )
    return tuple(warnings)


def restarter_for(mode: HaMode, vm_type: VmType, ha_enabled: bool) -> Restarter:
    """Who restarts the VM: system VMs keep CloudStack's application HA; user VMs follow the mode if HA-enabled."""
    if vm_type.is_system:
        return Restarter.CLOUDSTACK
    if not ha_enabled:
        return Restarter.NONE
    return Restarter.HYPERVISOR if mode is HaMode.NATIVE else Restarter.CLOUDSTACK


def decide_deployment(request: DeploymentRequest) -> DeploymentDecision:
    """R4: the HA config of a VM about to be deployed. Never fails for pool HA problems; warns instead (R5)."""
    restarter = restarter_for(request.mode, request.vm_type, request.offering_ha)
    warnings: tuple[HaWarning, ...] = ()
    if restarter is Restarter.HYPERVISOR:
        config = HaConfig(RESTART_PRIORITY, request.order, request.start_delay)
        warnings = pool_ha_warnings(request.pool_ha)
    else:
        # XAPI's defaults: nothing for the hypervisor to act on, and nothing to drift from.
        config = HaConfig(NO_PRIORITY, 0, 0)
    if request.vm_type is VmType.DomainRouter and request.mode is HaMode.NATIVE and not request.redundant_router:
        warnings += (
            HaWarning(
                WarningCode.REDUNDANT_VR_RECOMMENDED,
                "Virtual routers keep CloudStack's application HA in a NATIVE cluster; use a redundant VR pair "
                "for router high availability.",
            ),
        )
    return DeploymentDecision(
        mode=request.mode,
        ha_config=config,
        restarter=restarter,
        warnings=warnings,
        pins_cluster=deployment_pins_cluster(request.vm_type, request.offering_ha, request.cluster_pinned),
    )


def validate_ha_order(order: int, start_delay: int) -> list[str]:
    """Problems with a configured order/start_delay (XAPI answers INVALID_VALUE for negatives)."""
    problems = []
    if order < 0:
        problems.append(f"order must be 0 or more, got {order}")
    if start_delay < 0:
        problems.append(f"start_delay must be 0 or more seconds, got {start_delay}")
    return problems


# --- R5 protection ----------------------------------------------------------------------------------------------

XAPI_FAILOVER_PLAN_ERROR = "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"


def unprotected_reason_for_error(xapi_error_code: str) -> UnprotectedReason:
    if xapi_error_code == XAPI_FAILOVER_PLAN_ERROR:
        return UnprotectedReason.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN
    return UnprotectedReason.XAPI_REFUSED


def protection_status(
    decided: HaConfig,
    observed: HaConfig | None,
    pool_ha: PoolHaFacts | None,
    refusal: str | None = None,
) -> Protection:
    """Is a managed VM protected by XenServer HA?

    Only VMs decided "restart" can be. A refusal (the XAPI error code of the last SetVmHaConfig) explains why the
    priority is missing. With the priority set, the pool must have HA enabled for it to mean anything.
    """
    if decided.ha_restart_priority != RESTART_PRIORITY:
        return Protection(ProtectionStatus.NOT_APPLICABLE)
    observed_priority = observed.ha_restart_priority if observed is not None else None
    if observed_priority != RESTART_PRIORITY:
        if refusal is not None:
            return Protection(
                ProtectionStatus.UNPROTECTED,
                unprotected_reason_for_error(refusal),
                f"XAPI refused ha_restart_priority=restart: {refusal}.",
            )
        return Protection(
            ProtectionStatus.UNPROTECTED,
            UnprotectedReason.HA_CONFIG_NOT_APPLIED,
            f"The hypervisor reports ha_restart_priority={observed_priority!r}, decided 'restart'.",
        )
    if pool_ha is None:
        return Protection(ProtectionStatus.UNPROTECTED, UnprotectedReason.POOL_NOT_SYNCED, "Pool HA state unknown.")
    if not pool_ha.ha_enabled:
        return Protection(
            ProtectionStatus.UNPROTECTED, UnprotectedReason.POOL_HA_DISABLED, "The priority is set but pool HA is off."
        )
    return Protection(ProtectionStatus.PROTECTED)


def unprotected_notification(vm_uuid: str, cluster_id: str, protection: Protection) -> Notification | None:
    if protection.status is not ProtectionStatus.UNPROTECTED:
        return None
    return Notification(
        NotificationKind.VM_UNPROTECTED,
        f"VM {vm_uuid} is not protected by XenServer HA ({protection.reason}): {protection.detail}",
        vm_uuid=vm_uuid,
        cluster_id=cluster_id,
    )


# Reasons a retry of SetVmHaConfig can fix; POOL_HA_DISABLED / POOL_NOT_SYNCED are fixed on the pool, not the VM.
RETRYABLE_UNPROTECTED_REASONS = frozenset(
    {
        UnprotectedReason.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN,
        UnprotectedReason.XAPI_REFUSED,
        UnprotectedReason.HA_CONFIG_NOT_APPLIED,
    }
)


DEFAULT_RETRY_BACKOFF = RetryBackoff()


def backoff_delay(attempts: int, backoff: RetryBackoff = DEFAULT_RETRY_BACKOFF) -> float:
    """Delay after `attempts` failed attempts (1 -> initial), capped; deterministic (no jitter: pure)."""
    if attempts <= 0:
        return 0.0
    delay = backoff.initial_seconds * backoff.factor ** min(attempts - 1, 64)
    return min(delay, backoff.max_seconds)


def protection_retry(
    protection: Protection,
    attempts: int,
    last_attempt_at: float | None,
    now: float,
    backoff: RetryBackoff = DEFAULT_RETRY_BACKOFF,
) -> RetryDecision:
    """Should the controller try SetVmHaConfig again for an unprotected VM (R5)?"""
    if protection.status is not ProtectionStatus.UNPROTECTED or protection.reason not in RETRYABLE_UNPROTECTED_REASONS:
        return RetryDecision(False, None)
    if last_attempt_at is None:
        return RetryDecision(True, now)
    due = last_attempt_at + backoff_delay(attempts, backoff)
    return RetryDecision(now >= due, due)


# --- R11 drift --------------------------------------------------------------------------------------------------


def ha_config_drift(decided: HaConfig, observed: HaConfig) -> HaConfigDrift | None:
    """Differences between the decided and the observed HA config.

    order and start_delay only count when a priority is decided: XAPI ignores them otherwise, so a change to them
    on an unprotected VM is not worth a repair or an alert.
    """
    names = [f.name for f in fields(HaConfig)]
    if decided.ha_restart_priority == NO_PRIORITY:
        names = ["ha_restart_priority"]
    differing = tuple(n for n in names if getattr(decided, n) != getattr(observed, n))
    return HaConfigDrift(decided, observed, differing) if differing else None


def drift_intent(
    drift: HaConfigDrift,
    vm_uuid: str,
    cluster_id: str | None = None,
    repair_enabled: bool = True,
) -> DriftIntent:
    """Repair (SetVmHaConfig to the decision, then HA_CONFIG_DRIFT_REPAIRED) or report only (DETECTED)."""
    what = ", ".join(
        f"{n} {getattr(drift.observed, n)!r} (decided {getattr(drift.expected, n)!r})" for n in drift.fields
    )
    if repair_enabled:
        return DriftIntent(
            DriftResponse.REPAIR,
            drift,
            drift.expected,
            Notification(
                NotificationKind.HA_CONFIG_DRIFT_REPAIRED,
                f"VM {vm_uuid}'s HA config had drifted ({what}); restored the decided config.",
                vm_uuid=vm_uuid,
                cluster_id=cluster_id,
            ),
        )
    return DriftIntent(
        DriftResponse.REPORT_ONLY,
        drift,
        None,
        Notification(
            NotificationKind.HA_CONFIG_DRIFT_DETECTED,
            f"VM {vm_uuid}'s HA config has drifted ({what}); drift repair is off, so it was left as it is.",
            vm_uuid=vm_uuid,
            cluster_id=cluster_id,
        ),
    )


# --- R9 fencing -------------------------------------------------------------------------------------------------


DEFAULT_FENCING_SETTINGS = FencingSettings()


def fencing_policy(
    mode: HaMode,
    pool_ha: PoolHaFacts | None,
    settings: FencingSettings = DEFAULT_FENCING_SETTINGS,
    cluster_id: str | None = None,
) -> FencingPolicy:
    """Host fencing for a cluster: NATIVE relies on XenServer HA, CLOUDSTACK keeps the storage heartbeat."""
    if mode is HaMode.CLOUDSTACK:
        return FencingPolicy(
            mode,
            storage_heartbeat_enabled=True,
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
            heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
            fenced_by=Fencer.STORAGE_HEARTBEAT,
            unfenced=False,
        )
    if pool_ha is None:
        # Unknown is not reported as unfenced (no false alarm) but is visible as a warning.
        return FencingPolicy(
            mode,
            False,
            None,
            None,
            fenced_by=Fencer.XENSERVER_HA,
            unfenced=False,
            warnings=(HaWarning(WarningCode.POOL_NOT_SYNCED, "Pool HA state unknown: fencing cannot be confirmed."),),
        )
    if pool_ha.ha_enabled:
        return FencingPolicy(mode, False, None, None, fenced_by=Fencer.XENSERVER_HA, unfenced=False)
    message = (
        "NATIVE cluster whose pool HA is off: no host is fenced when it fails (the storage heartbeat is retired in "
        "NATIVE mode). Enable pool HA (xe pool-ha-enable heartbeat-sr-uuids=<shared SR>)."
    )
    return FencingPolicy(
        mode,
        False,
        None,
        None,
        fenced_by=Fencer.NONE,
        unfenced=True,
        warnings=(HaWarning(WarningCode.POOL_UNFENCED, message),),
        notification=Notification(NotificationKind.POOL_UNFENCED, message, cluster_id=cluster_id),
    )


def validate_fencing_settings(settings: FencingSettings) -> list[str]:
    problems = []
    if settings.heartbeat_interval_seconds <= 0:
        problems.append("xenserver.heartbeat.interval must be a positive number of seconds")
    if settings.heartbeat_timeout_seconds <= settings.heartbeat_interval_seconds:
        problems.append("xenserver.heartbeat.timeout must be longer than xenserver.heartbeat.interval")
    return problems
