"""Change payloads: what WatchChanges streams is every field of the VM or host as it was written, whether the
payload is built alone or with the timestamp memo its batch shares."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import timestamp_pb2

from sync_service import converters
from sync_service.domain import (
    HostFacts,
    MirrorHost,
    MirrorVm,
    PowerState,
    VersionFacts,
    VmFacts,
    XapiPowerState,
)
from xsha_api.v1 import common_pb2, sync_service_pb2

COMMIT = dt.datetime(2026, 11, 27, 11, 0, 0, 123456)
EARLIER = dt.datetime(2026, 11, 27, 10, 59, 58, 5)


def _ts(value: dt.datetime) -> timestamp_pb2.Timestamp:
    since = value.replace(tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return timestamp_pb2.Timestamp(seconds=int(since.total_seconds() // 1), nanos=value.microsecond * 1000)


def _vm(*, power_state_update_time: dt.datetime | None, update_time: dt.datetime | None, n: int = 1) -> MirrorVm:
    facts = VmFacts(
        uuid=f"vm-{n}",
        name=f"it's vm {n}",
        xapi_power_state=XapiPowerState.RUNNING,
        resident_host_uuid="host-1",
        ha_restart_priority="restart",
        order=n,
        start_delay=30,
        ha_always_run=True,
        memory_static_max=4 << 30,
    )
    return MirrorVm(
        cluster_id="c1",
        pool_uuid="pool-1",
        facts=facts,
        power_state=PowerState.POWER_ON,
        power_state_update_time=power_state_update_time,
        power_state_update_count=n + 2,
        removed=False,
        revision=100 + n,
        update_time=update_time,
    )


def _host(version: VersionFacts, update_time: dt.datetime | None) -> MirrorHost:
    facts = HostFacts(
        uuid="host-1",
        name="h1",
        address="10.0.0.1",
        live=True,
        enabled=False,
        is_master=True,
        memory_total=64 << 30,
        memory_free=17 << 30,
        version=version,
    )
    return MirrorHost(
        cluster_id="c1", pool_uuid="pool-1", facts=facts, removed=True, revision=7, update_time=update_time
    )


def _expected_vm(vm: MirrorVm) -> sync_service_pb2.Vm:
    expected = sync_service_pb2.Vm(
        uuid=vm.facts.uuid,
        name=vm.facts.name,
        cluster_id="c1",
        pool_uuid="pool-1",
        xapi_power_state=common_pb2.XAPI_POWER_STATE_RUNNING,
        power_state=common_pb2.POWER_STATE_POWER_ON,
        resident_host_uuid="host-1",
        ha_restart_priority="restart",
        order=vm.facts.order,
        start_delay_seconds=30,
        ha_always_run=True,
        memory_static_max_bytes=4 << 30,
        power_state_update_count=vm.power_state_update_count,
        removed=False,
        revision=vm.revision,
    )
    if vm.power_state_update_time is not None:
        expected.power_state_update_time.CopyFrom(_ts(vm.power_state_update_time))
    if vm.update_time is not None:
        expected.update_time.CopyFrom(_ts(vm.update_time))
    return expected


@pytest.mark.parametrize("with_memo", [False, True], ids=["alone", "memo"])
@pytest.mark.parametrize(
    ("power_state_update_time", "update_time"),
    [(EARLIER, COMMIT), (COMMIT, COMMIT), (None, COMMIT), (None, None)],
    ids=["earlier-power-change", "same-times", "no-power-report", "no-times"],
)
def test_a_vm_payload_carries_every_field(
    with_memo: bool, power_state_update_time: dt.datetime | None, update_time: dt.datetime | None
) -> None:
    vm = _vm(power_state_update_time=power_state_update_time, update_time=update_time)
    memo: converters.TimestampMemo | None = {} if with_memo else None
    change = sync_service_pb2.Change.FromString(converters.change_payload(101, "MODIFIED", COMMIT, "c1", vm, memo))
    assert change.revision == 101
    assert change.type == sync_service_pb2.CHANGE_TYPE_MODIFIED
    assert change.kind == sync_service_pb2.RESOURCE_KIND_VM
    assert change.cluster_id == "c1"
    assert change.commit_time == _ts(COMMIT)
    assert change.WhichOneof("object") == "vm"
    assert change.vm == _expected_vm(vm)
    assert change.vm.HasField("power_state_update_time") == (power_state_update_time is not None)
    assert change.vm.HasField("update_time") == (update_time is not None)
    assert converters.vm_to_proto(vm) == _expected_vm(vm)


def test_a_shared_memo_gives_each_change_its_own_times() -> None:
    memo: converters.TimestampMemo = {}
    later = COMMIT + dt.timedelta(microseconds=1)
    vms = [
        _vm(power_state_update_time=EARLIER, update_time=COMMIT, n=1),
        _vm(power_state_update_time=COMMIT, update_time=later, n=2),
        _vm(power_state_update_time=None, update_time=EARLIER, n=3),
    ]
    for commit_time, vm in zip([COMMIT, later, COMMIT], vms, strict=True):
        shared = converters.change_payload(vm.revision, "MODIFIED", commit_time, "c1", vm, memo)
        alone = converters.change_payload(vm.revision, "MODIFIED", commit_time, "c1", vm)
        assert shared == alone
        change = sync_service_pb2.Change.FromString(shared)
        assert change.commit_time == _ts(commit_time)
        assert change.vm == _expected_vm(vm)
    assert set(memo) == {COMMIT, later, EARLIER}


def test_an_aware_datetime_converts_to_the_same_instant() -> None:
    aware = dt.datetime(2026, 11, 27, 16, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    vm = _vm(power_state_update_time=aware, update_time=aware)
    change = sync_service_pb2.Change.FromString(converters.change_payload(1, "ADDED", aware, "c1", vm, {}))
    assert change.vm.update_time == _ts(dt.datetime(2026, 11, 27, 11, 0, 0, 250000))
    assert change.commit_time == change.vm.power_state_update_time == change.vm.update_time


@pytest.mark.parametrize("with_memo", [False, True], ids=["alone", "memo"])
@pytest.mark.parametrize("version", [VersionFacts(), VersionFacts(2, 21, "XenServer", "8.2.1", "3.2.1", "r1")])
def test_a_host_payload_carries_every_field(with_memo: bool, version: VersionFacts) -> None:
    host = _host(version, COMMIT)
    memo: converters.TimestampMemo | None = {} if with_memo else None
    change = sync_service_pb2.Change.FromString(converters.change_payload(9, "REMOVED", COMMIT, "c1", host, memo))
    expected = sync_service_pb2.Host(
        uuid="host-1",
        cluster_id="c1",
        pool_uuid="pool-1",
        name="h1",
        address="10.0.0.1",
        live=True,
        enabled=False,
        is_master=True,
        memory_total_bytes=64 << 30,
        memory_free_bytes=17 << 30,
        version=common_pb2.HypervisorVersion(
            api_version_major=version.api_version_major,
            api_version_minor=version.api_version_minor,
            product_brand=version.product_brand,
            product_version=version.product_version,
            platform_version=version.platform_version,
            build_number=version.build_number,
        ),
        removed=True,
        revision=7,
        update_time=_ts(COMMIT),
    )
    assert change.kind == sync_service_pb2.RESOURCE_KIND_HOST
    assert change.type == sync_service_pb2.CHANGE_TYPE_REMOVED
    assert change.host == expected
    assert change.host.HasField("version")  # present even when every version field is empty, as before
    assert converters.host_to_proto(host) == expected
    assert not converters.host_to_proto(_host(version, None)).HasField("update_time")
