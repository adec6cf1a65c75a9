"""Domain objects <-> protobuf messages. No I/O, no validation (the servicer validates first)."""

from __future__ import annotations

import datetime as dt
from typing import Final

from google.protobuf import duration_pb2, timestamp_pb2

from sync_service.domain import (
    HaFacts,
    MirrorHost,
    MirrorVm,
    PoolInfo,
    PowerState,
    SyncStatusInfo,
    VersionFacts,
    XapiPowerState,
)
from xsha_api.v1 import common_pb2, sync_service_pb2

XAPI_POWER_STATE_TO_PROTO: Final = {
    XapiPowerState.HALTED: common_pb2.XAPI_POWER_STATE_HALTED,
    XapiPowerState.PAUSED: common_pb2.XAPI_POWER_STATE_PAUSED,
    XapiPowerState.RUNNING: common_pb2.XAPI_POWER_STATE_RUNNING,
    XapiPowerState.SUSPENDED: common_pb2.XAPI_POWER_STATE_SUSPENDED,
    XapiPowerState.UNKNOWN: common_pb2.XAPI_POWER_STATE_UNSPECIFIED,
}
XAPI_POWER_STATE_FROM_PROTO: Final = {value: key for key, value in XAPI_POWER_STATE_TO_PROTO.items()}
POWER_STATE_TO_PROTO: Final = {
    PowerState.POWER_ON: common_pb2.POWER_STATE_POWER_ON,
    PowerState.POWER_OFF: common_pb2.POWER_STATE_POWER_OFF,
    PowerState.POWER_UNKNOWN: common_pb2.POWER_STATE_POWER_UNKNOWN,
    PowerState.POWER_REPORT_MISSING: common_pb2.POWER_STATE_POWER_REPORT_MISSING,
}
POWER_STATE_FROM_PROTO: Final = {value: key for key, value in POWER_STATE_TO_PROTO.items()}
SYNC_STATE_TO_PROTO: Final = {
    "CONNECTING": sync_service_pb2.SYNC_STATE_CONNECTING,
    "LISTING": sync_service_pb2.SYNC_STATE_LISTING,
    "WATCHING": sync_service_pb2.SYNC_STATE_WATCHING,
    "BACKING_OFF": sync_service_pb2.SYNC_STATE_BACKING_OFF,
    "IDLE": sync_service_pb2.SYNC_STATE_IDLE,
}
WIRE_FORMAT_TO_PROTO: Final = {
    "json": sync_service_pb2.WIRE_FORMAT_JSON_RPC,
    "xml": sync_service_pb2.WIRE_FORMAT_XML_RPC,
}
KIND_TO_PROTO: Final = {
    "pool": sync_service_pb2.RESOURCE_KIND_POOL,
    "host": sync_service_pb2.RESOURCE_KIND_HOST,
    "vm": sync_service_pb2.RESOURCE_KIND_VM,
}
KIND_FROM_PROTO: Final = {value: key for key, value in KIND_TO_PROTO.items()}
CHANGE_TYPE_TO_PROTO: Final = {
    "ADDED": sync_service_pb2.CHANGE_TYPE_ADDED,
    "MODIFIED": sync_service_pb2.CHANGE_TYPE_MODIFIED,
    "REMOVED": sync_service_pb2.CHANGE_TYPE_REMOVED,
}


_EPOCH: Final = dt.datetime(1970, 1, 1)
_EPOCH_UTC: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A naive datetime is UTC."""
    return None if value is None else _timestamp_of(value)


def _timestamp_of(value: dt.datetime) -> timestamp_pb2.Timestamp:
    # Plain timedelta arithmetic: Timestamp.FromDatetime's calendar.timegm path was a large share of every GetPool
    # and change payload.
    delta = value - (_EPOCH if value.tzinfo is None else _EPOCH_UTC)
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def version_to_proto(version: VersionFacts) -> common_pb2.HypervisorVersion:
    return common_pb2.HypervisorVersion(
        api_version_major=version.api_version_major,
        api_version_minor=version.api_version_minor,
        product_brand=version.product_brand,
        product_version=version.product_version,
        platform_version=version.platform_version,
        build_number=version.build_number,
    )


def ha_to_proto(ha: HaFacts) -> common_pb2.PoolHaFacts:
    return common_pb2.PoolHaFacts(
        ha_enabled=ha.ha_enabled,
        ha_host_failures_to_tolerate=ha.ha_host_failures_to_tolerate,
        ha_plan_exists_for=ha.ha_plan_exists_for,
        ha_allow_overcommit=ha.ha_allow_overcommit,
        ha_overcommitted=ha.ha_overcommitted,
    )


TimestampMemo = dict[dt.datetime, timestamp_pb2.Timestamp]
"""Timestamps already converted, by datetime: the rows of one batch mostly share their commit time."""


def _set_timestamp(field: timestamp_pb2.Timestamp, value: dt.datetime | None, memo: TimestampMemo | None) -> None:
    if value is None:
        return
    if memo is None:
        field.CopyFrom(_timestamp_of(value))
        return
    converted = memo.get(value)
    if converted is None:
        converted = memo[value] = _timestamp_of(value)
    field.CopyFrom(converted)


def fill_vm(message: sync_service_pb2.Vm, vm: MirrorVm, memo: TimestampMemo | None = None) -> None:
    """Sets `message`'s fields from `vm` in place: a change payload fills its own Vm rather than copy one in."""
    facts = vm.facts
    message.uuid = facts.uuid
    message.name = facts.name
    message.cluster_id = vm.cluster_id
    message.pool_uuid = vm.pool_uuid
    message.xapi_power_state = XAPI_POWER_STATE_TO_PROTO[facts.xapi_power_state]
    message.power_state = POWER_STATE_TO_PROTO[vm.power_state]
    message.resident_host_uuid = facts.resident_host_uuid
    message.ha_restart_priority = facts.ha_restart_priority
    message.order = facts.order
    message.start_delay_seconds = facts.start_delay
    message.ha_always_run = facts.ha_always_run
    message.memory_static_max_bytes = facts.memory_static_max
    _set_timestamp(message.power_state_update_time, vm.power_state_update_time, memo)
    message.power_state_update_count = vm.power_state_update_count
    message.removed = vm.removed
    message.revision = vm.revision
    _set_timestamp(message.update_time, vm.update_time, memo)


def vm_to_proto(vm: MirrorVm) -> sync_service_pb2.Vm:
    message = sync_service_pb2.Vm()
    fill_vm(message, vm)
    return message


def fill_host(message: sync_service_pb2.Host, host: MirrorHost, memo: TimestampMemo | None = None) -> None:
    """Sets `message`'s fields from `host` in place."""
    facts = host.facts
    message.uuid = facts.uuid
    message.cluster_id = host.cluster_id
    message.pool_uuid = host.pool_uuid
    message.name = facts.name
    message.address = facts.address
    message.live = facts.live
    message.enabled = facts.enabled
    message.is_master = facts.is_master
    message.memory_total_bytes = facts.memory_total
    message.memory_free_bytes = facts.memory_free
    message.version.CopyFrom(version_to_proto(facts.version))
    message.removed = host.removed
    message.revision = host.revision
    _set_timestamp(message.update_time, host.update_time, memo)


def host_to_proto(host: MirrorHost) -> sync_service_pb2.Host:
    message = sync_service_pb2.Host()
    fill_host(message, host)
    return message


def sync_status_to_proto(status: SyncStatusInfo) -> sync_service_pb2.SyncStatus:
    lag = duration_pb2.Duration()
    lag.FromMilliseconds(max(0, status.lag_ms))
    return sync_service_pb2.SyncStatus(
        state=SYNC_STATE_TO_PROTO.get(status.state, sync_service_pb2.SYNC_STATE_UNSPECIFIED),
        connected=status.connected,
        wire_format=WIRE_FORMAT_TO_PROTO.get(status.wire_format, sync_service_pb2.WIRE_FORMAT_UNSPECIFIED),
        connected_url=status.connected_url,
        last_event_time=timestamp(status.last_event_time),
        lag=lag,
        last_full_sync_time=timestamp(status.last_full_sync_time),
        events_applied=status.events_applied,
        reconnects=status.reconnects,
        last_error=status.last_error,
        last_error_time=timestamp(status.last_error_time),
        owner=status.owner,
    )


def tls_to_proto(pool: PoolInfo) -> sync_service_pb2.XapiTlsOptions:
    if pool.tls_ca_bundle_pem:
        return sync_service_pb2.XapiTlsOptions(ca_bundle_pem=pool.tls_ca_bundle_pem)
    if pool.tls_fingerprint:
        return sync_service_pb2.XapiTlsOptions(certificate_sha256_fingerprint=pool.tls_fingerprint)
    if pool.tls_insecure:
        return sync_service_pb2.XapiTlsOptions(insecure_skip_verify=True)
    return sync_service_pb2.XapiTlsOptions()


def pool_to_proto(pool: PoolInfo) -> sync_service_pb2.Pool:
    return sync_service_pb2.Pool(
        cluster_id=pool.cluster_id,
        pool_uuid=pool.pool_uuid,
        name=pool.name,
        master_url=pool.master_url,
        tls=tls_to_proto(pool),
        has_credentials=pool.has_credentials,
        version=version_to_proto(pool.version),
        ha=ha_to_proto(pool.ha),
        master_host_uuid=pool.master_host_uuid,
        sync_status=sync_status_to_proto(pool.status),
        revision=pool.revision,
        create_time=timestamp(pool.create_time),
        update_time=timestamp(pool.update_time),
    )


def change_payload(
    revision: int,
    change_type: str,
    commit_time: dt.datetime,
    cluster_id: str,
    obj: MirrorVm | MirrorHost | PoolInfo,
    memo: TimestampMemo | None = None,
) -> bytes:
    """The serialized Change stored in the change log and streamed as it is by WatchChanges. `memo`, when given,
    is shared by the changes of one batch."""
    change = sync_service_pb2.Change(
        revision=revision,
        type=CHANGE_TYPE_TO_PROTO[change_type],
        cluster_id=cluster_id,
    )
    _set_timestamp(change.commit_time, commit_time, memo)
    if isinstance(obj, MirrorVm):
        change.kind = sync_service_pb2.RESOURCE_KIND_VM
        fill_vm(change.vm, obj, memo)
    elif isinstance(obj, MirrorHost):
        change.kind = sync_service_pb2.RESOURCE_KIND_HOST
        fill_host(change.host, obj, memo)
    else:
        change.kind = sync_service_pb2.RESOURCE_KIND_POOL
        change.pool.CopyFrom(pool_to_proto(obj))
    return change.SerializeToString()
