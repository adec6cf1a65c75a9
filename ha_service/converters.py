"""Conversions between the contract (protobuf) and ha_service's domain values and rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from ha_service.domain import model as dm
from ha_service.settings import DRIFT_REPAIR, DRIFT_REPORT_ONLY, HaSettings
from ha_service.store.models import ManagedVmRow
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2

# --- enums ------------------------------------------------------------------------------------------------------

VM_TYPE_TO_DOMAIN: dict[Any, dm.VmType] = {
    common_pb2.VM_TYPE_USER: dm.VmType.User,
    common_pb2.VM_TYPE_DOMAIN_ROUTER: dm.VmType.DomainRouter,
    common_pb2.VM_TYPE_CONSOLE_PROXY: dm.VmType.ConsoleProxy,
    common_pb2.VM_TYPE_SECONDARY_STORAGE_VM: dm.VmType.SecondaryStorageVm,
    common_pb2.VM_TYPE_ELASTIC_IP_VM: dm.VmType.ElasticIpVm,
    common_pb2.VM_TYPE_ELASTIC_LOAD_BALANCER_VM: dm.VmType.ElasticLoadBalancerVm,
    common_pb2.VM_TYPE_INTERNAL_LOAD_BALANCER_VM: dm.VmType.InternalLoadBalancerVm,
    common_pb2.VM_TYPE_NET_SCALER_VM: dm.VmType.NetScalerVm,
}
VM_TYPE_TO_PROTO: dict[dm.VmType, Any] = {v: k for k, v in VM_TYPE_TO_DOMAIN.items()}

MODE_TO_PROTO: dict[dm.HaMode, Any] = {
    dm.HaMode.CLOUDSTACK: common_pb2.HA_MODE_CLOUDSTACK,
    dm.HaMode.NATIVE: common_pb2.HA_MODE_NATIVE,
}
MODE_TO_DOMAIN: dict[Any, dm.HaMode] = {v: k for k, v in MODE_TO_PROTO.items()}

RESTARTER_TO_PROTO: dict[dm.Restarter, Any] = {
    dm.Restarter.HYPERVISOR: ha_service_pb2.RESTARTER_HYPERVISOR,
    dm.Restarter.CLOUDSTACK: ha_service_pb2.RESTARTER_CLOUDSTACK,
    dm.Restarter.NONE: ha_service_pb2.RESTARTER_NONE,
}

MODE_REASON_TO_PROTO: dict[dm.ModeReason, Any] = {
    dm.ModeReason.VERSION_GATE: ha_service_pb2.MODE_REASON_VERSION_GATE,
    dm.ModeReason.PINNED: ha_service_pb2.MODE_REASON_PINNED,
    dm.ModeReason.CLUSTER_OVERRIDE: ha_service_pb2.MODE_REASON_CLUSTER_OVERRIDE,
    dm.ModeReason.GLOBAL_SETTING: ha_service_pb2.MODE_REASON_GLOBAL_SETTING,
    dm.ModeReason.VERSION_UNKNOWN: ha_service_pb2.MODE_REASON_UNSPECIFIED,
}

FENCER_TO_PROTO: dict[dm.Fencer, Any] = {
    dm.Fencer.XENSERVER_HA: ha_service_pb2.FENCING_MECHANISM_XENSERVER_HA,
    dm.Fencer.STORAGE_HEARTBEAT: ha_service_pb2.FENCING_MECHANISM_STORAGE_HEARTBEAT,
    dm.Fencer.NONE: ha_service_pb2.FENCING_MECHANISM_NONE,
}

# Stored names of enums owned by this service (rows keep readable names, not proto numbers).
WANTED_TO_PROTO: dict[str, Any] = {
    "UNSPECIFIED": ha_service_pb2.WANTED_STATE_UNSPECIFIED,
    "RUNNING": ha_service_pb2.WANTED_STATE_RUNNING,
    "STOPPED": ha_service_pb2.WANTED_STATE_STOPPED,
}
WANTED_TO_NAME: dict[Any, str] = {v: k for k, v in WANTED_TO_PROTO.items()}

PROTECTION_TO_PROTO: dict[str, Any] = {
    "NOT_APPLICABLE": ha_service_pb2.PROTECTION_STATE_NOT_APPLICABLE,
    "PENDING": ha_service_pb2.PROTECTION_STATE_PENDING,
    "PROTECTED": ha_service_pb2.PROTECTION_STATE_PROTECTED,
    "UNPROTECTED": ha_service_pb2.PROTECTION_STATE_UNPROTECTED,
}
PROTECTION_TO_NAME: dict[Any, str] = {v: k for k, v in PROTECTION_TO_PROTO.items()}

AGENT_TO_PROTO: dict[str, Any] = {
    dm.AgentStatus.Up: common_pb2.AGENT_STATUS_UP,
    dm.AgentStatus.Down: common_pb2.AGENT_STATUS_DOWN,
    dm.AgentStatus.Disconnected: common_pb2.AGENT_STATUS_DISCONNECTED,
    dm.AgentStatus.Alert: common_pb2.AGENT_STATUS_ALERT,
    dm.AgentStatus.Connecting: common_pb2.AGENT_STATUS_CONNECTING,
}
AGENT_TO_NAME: dict[Any, str] = {v: str(k) for k, v in AGENT_TO_PROTO.items()}

XAPI_POWER_TO_NAME: dict[Any, str] = {
    common_pb2.XAPI_POWER_STATE_HALTED: "Halted",
    common_pb2.XAPI_POWER_STATE_PAUSED: "Paused",
    common_pb2.XAPI_POWER_STATE_RUNNING: "Running",
    common_pb2.XAPI_POWER_STATE_SUSPENDED: "Suspended",
}
XAPI_POWER_TO_PROTO: dict[str, Any] = {v: k for k, v in XAPI_POWER_TO_NAME.items()}

ACTION_STATE_TO_PROTO: dict[str, Any] = {
    "PENDING": ha_service_pb2.HA_ACTION_STATE_PENDING,
    "SUCCEEDED": ha_service_pb2.HA_ACTION_STATE_SUCCEEDED,
    "FAILED": ha_service_pb2.HA_ACTION_STATE_FAILED,
    "SKIPPED": ha_service_pb2.HA_ACTION_STATE_SKIPPED,
}
ACTION_STATE_TO_NAME: dict[Any, str] = {v: k for k, v in ACTION_STATE_TO_PROTO.items()}

ACTION_KIND_TO_PROTO: dict[str, Any] = {
    "RESTART_VM": ha_service_pb2.HA_ACTION_KIND_RESTART_VM,
    "RESTART_SYSTEM_VM": ha_service_pb2.HA_ACTION_KIND_RESTART_SYSTEM_VM,
    "RECREATE_SYSTEM_VM": ha_service_pb2.HA_ACTION_KIND_RECREATE_SYSTEM_VM,
    "REPLACE_SYSTEM_VM": ha_service_pb2.HA_ACTION_KIND_REPLACE_SYSTEM_VM,
}
NOTIFICATION_KIND_TO_PROTO: dict[str, Any] = {
    "VM_RESTARTED_BY_HYPERVISOR": ha_service_pb2.HA_NOTIFICATION_KIND_VM_RESTARTED_BY_HYPERVISOR,
    "HA_RESTART_OVERDUE": ha_service_pb2.HA_NOTIFICATION_KIND_HA_RESTART_OVERDUE,
    "POOL_UNFENCED": ha_service_pb2.HA_NOTIFICATION_KIND_POOL_UNFENCED,
    "HA_CONFIG_DRIFT_REPAIRED": ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_REPAIRED,
    "HA_CONFIG_DRIFT_DETECTED": ha_service_pb2.HA_NOTIFICATION_KIND_HA_CONFIG_DRIFT_DETECTED,
    "VM_UNPROTECTED": ha_service_pb2.HA_NOTIFICATION_KIND_VM_UNPROTECTED,
}

DRIFT_TO_PROTO: dict[str, Any] = {
    DRIFT_REPAIR: ha_service_pb2.DRIFT_REPAIR_MODE_REPAIR,
    DRIFT_REPORT_ONLY: ha_service_pb2.DRIFT_REPAIR_MODE_REPORT_ONLY,
}
DRIFT_TO_NAME: dict[Any, str] = {v: k for k, v in DRIFT_TO_PROTO.items()}

# --- time -------------------------------------------------------------------------------------------------------


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def timestamp_seconds(value: timestamp_pb2.Timestamp) -> float:
    return float(value.seconds) + value.nanos / 1e9


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def duration_seconds(value: duration_pb2.Duration) -> float:
    return float(value.seconds) + value.nanos / 1e9


# --- settings ---------------------------------------------------------------------------------------------------


def settings_to_proto(settings: HaSettings, overrides: Mapping[str, bool], version: int) -> ha_service_pb2.Settings:
    message = ha_service_pb2.Settings(version=version)
    glob = getattr(message, "global")
    glob.native_ha_enabled = settings.native_ha_enabled
    glob.drift_repair_mode = DRIFT_TO_PROTO[settings.drift_repair_mode]
    glob.restart_overdue_grace.CopyFrom(duration(settings.restart_overdue_grace))
    glob.agent_disconnected_grace.CopyFrom(duration(settings.agent_disconnected_grace))
    glob.heartbeat_interval.CopyFrom(duration(settings.heartbeat_interval))
    glob.heartbeat_timeout.CopyFrom(duration(settings.heartbeat_timeout))
    glob.unprotected_retry_interval.CopyFrom(duration(settings.unprotected_retry_interval))
    message.cluster_overrides.extend(
        ha_service_pb2.ClusterOverride(cluster_id=cluster, native_ha_enabled=native)
        for cluster, native in sorted(overrides.items())
    )
    return message


# --- versions and pool facts ------------------------------------------------------------------------------------


def version_known(version: common_pb2.HypervisorVersion) -> bool:
    return version.api_version_major > 0 or version.api_version_minor > 0


def version_facts(version: common_pb2.HypervisorVersion) -> dm.VersionFacts:
    return dm.VersionFacts(
        api_version_major=version.api_version_major,
        api_version_minor=version.api_version_minor,
        product_brand=version.product_brand or None,
        product_version=version.product_version or None,
    )


def pool_ha_facts(pool: sync_service_pb2.Pool) -> dm.PoolHaFacts:
    return dm.PoolHaFacts(
        ha_enabled=pool.ha.ha_enabled,
        ha_overcommitted=pool.ha.ha_overcommitted,
        ha_host_failures_to_tolerate=pool.ha.ha_host_failures_to_tolerate,
        ha_plan_exists_for=pool.ha.ha_plan_exists_for,
    )


def pool_synced(pool: sync_service_pb2.Pool | None) -> bool:
    return pool is not None and version_known(pool.version)


# --- warnings ---------------------------------------------------------------------------------------------------


def warnings_to_json(warnings: Iterable[dm.HaWarning | tuple[str, str]]) -> str:
    items = []
    for warning in warnings:
        if isinstance(warning, dm.HaWarning):
            items.append({"code": str(warning.code), "message": warning.message})
        else:
            items.append({"code": warning[0], "message": warning[1]})
    return json.dumps(items)


def warnings_from_json(text: str) -> list[common_pb2.Warning]:
    return [common_pb2.Warning(code=item["code"], message=item["message"]) for item in json.loads(text or "[]")]


def warning_protos(warnings: Iterable[dm.HaWarning]) -> list[common_pb2.Warning]:
    return [common_pb2.Warning(code=str(w.code), message=w.message) for w in warnings]


# --- managed VMs ------------------------------------------------------------------------------------------------


def decision_to_proto(row: ManagedVmRow) -> ha_service_pb2.VmDeploymentDecision:
    return ha_service_pb2.VmDeploymentDecision(
        cluster_id=row.cluster_id,
        instance_name=row.instance_name,
        vm_uuid=row.vm_uuid or "",
        vm_type=VM_TYPE_TO_PROTO[dm.VmType(row.vm_type)],
        mode=MODE_TO_PROTO[dm.HaMode(row.mode)],
        ha_restart_priority=row.ha_restart_priority,
        order=row.ha_order,
        start_delay_seconds=row.start_delay_s,
        restarter=RESTARTER_TO_PROTO[dm.Restarter(row.restarter)],
        warnings=warnings_from_json(row.warnings_json),
        pinned_cluster=row.pinned_cluster,
        decide_time=timestamp(row.decide_time),
    )


def new_decision_to_proto(
    values: Mapping[str, Any], vm_type: dm.VmType, decision: dm.DeploymentDecision, warnings: Iterable[dm.HaWarning]
) -> ha_service_pb2.VmDeploymentDecision:
    """`decision_to_proto` of a decision about to be stored as `values` (its row's columns), built from the domain
    objects instead of the row: no JSON or enum round trip on the decision path."""
    return ha_service_pb2.VmDeploymentDecision(
        cluster_id=values["cluster_id"],
        instance_name=values["instance_name"],
        vm_uuid=values["vm_uuid"] or "",
        vm_type=VM_TYPE_TO_PROTO[vm_type],
        mode=MODE_TO_PROTO[decision.mode],
        ha_restart_priority=decision.ha_restart_priority,
        order=decision.order,
        start_delay_seconds=decision.start_delay,
        restarter=RESTARTER_TO_PROTO[decision.restarter],
        warnings=warning_protos(warnings),
        pinned_cluster=values["pinned_cluster"],
        decide_time=timestamp(values["decide_time"]),
    )


def managed_vm_to_proto(row: ManagedVmRow) -> ha_service_pb2.ManagedVm:
    message = ha_service_pb2.ManagedVm(
        decision=decision_to_proto(row),
        wanted_state=WANTED_TO_PROTO.get(row.wanted_state, ha_service_pb2.WANTED_STATE_UNSPECIFIED),
        protection_state=PROTECTION_TO_PROTO.get(row.protection_state, ha_service_pb2.PROTECTION_STATE_UNSPECIFIED),
        unprotected_reason=row.unprotected_reason if row.protection_state == "UNPROTECTED" else "",
        agent_status=AGENT_TO_PROTO.get(row.agent_status or "", common_pb2.AGENT_STATUS_UNSPECIFIED),
        observed_power_state=XAPI_POWER_TO_PROTO.get(row.observed_power_state, common_pb2.XAPI_POWER_STATE_UNSPECIFIED),
        observed_host_uuid=row.observed_host_uuid,
        observed_ha_restart_priority=row.observed_priority,
        present_on_hypervisor=row.present,
    )
    if row.agent_status_time is not None:
        message.agent_status_time.CopyFrom(stamp(row.agent_status_time))
    return message
