"""The gRPC contract of HypervisorSyncService: validation, registry, queries, watch, SetVmHaConfig, secrecy."""

from __future__ import annotations

import io
import logging
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import create_engine, text

from sync_service.testing import RunningSyncService, wait_converged, wait_for
from tests.sync_service.conftest import small_pool
from xsha_api.v1 import common_pb2, sync_service_pb2
from xsha_common.errors import error_details
from xsha_common.logging import setup_logging

CLUSTER = "cluster-a"
SECRET_PASSWORD = "s3cr3t-Pa55w0rd-for-grep"


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    assert isinstance(error, grpc.Call)
    return error.code()


def _fails(call: Any, code: grpc.StatusCode) -> tuple[Any, Any]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert _code(info.value) == code, info.value
    return error_details(info.value)


@pytest.fixture
def sync(db_url: str, make_sync: Any) -> RunningSyncService:
    sync: RunningSyncService = make_sync(db_url)
    return sync


pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"])


def test_register_validates_every_field(sync: RunningSyncService) -> None:
    stub = sync.stub
    info, bad = _fails(
        lambda: stub.RegisterPool(
            sync_service_pb2.RegisterPoolRequest(
                cluster_id="has spaces/" + "x" * 80,
                master_url="ftp://host",
                tls=sync_service_pb2.XapiTlsOptions(certificate_sha256_fingerprint="abc"),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert info.reason == "INVALID_ARGUMENT"
    fields = {violation.field for violation in bad.field_violations}
    assert {"cluster_id", "master_url", "credentials", "tls.certificate_sha256_fingerprint"} <= fields
    for url in ("http://", "https://user:pw@host", "http://host/path", "not a url"):
        _fails(
            lambda url=url: stub.RegisterPool(
                sync_service_pb2.RegisterPoolRequest(
                    cluster_id="c", master_url=url, credentials=sync_service_pb2.XapiCredentials(username="root")
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )


def test_queries_validate_their_inputs(sync: RunningSyncService) -> None:
    stub = sync.stub
    _fails(lambda: stub.ListVms(sync_service_pb2.ListVmsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT)
    _fails(lambda: stub.ListVms(sync_service_pb2.ListVmsRequest(page_size=10**6)), grpc.StatusCode.INVALID_ARGUMENT)
    _fails(
        lambda: stub.ListVms(sync_service_pb2.ListVmsRequest(page_token="garbage")), grpc.StatusCode.INVALID_ARGUMENT
    )
    _fails(
        lambda: stub.ListVms(sync_service_pb2.ListVmsRequest(ha_restart_priorities=["always"])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _fails(lambda: stub.GetVm(sync_service_pb2.GetVmRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    _fails(lambda: stub.GetVm(sync_service_pb2.GetVmRequest(uuid="nope")), grpc.StatusCode.INVALID_ARGUMENT)
    _fails(
        lambda: stub.GetVm(sync_service_pb2.GetVmRequest(uuid="00000000-0000-0000-0000-000000000000")),
        grpc.StatusCode.NOT_FOUND,
    )
    _fails(lambda: stub.GetPool(sync_service_pb2.GetPoolRequest(cluster_id="nope")), grpc.StatusCode.NOT_FOUND)
    _, bad = _fails(
        lambda: stub.SetVmHaConfig(
            sync_service_pb2.SetVmHaConfigRequest(
                vm_uuid="00000000-0000-0000-0000-000000000000", ha_restart_priority="always", order=-1,
                start_delay_seconds=-5,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )  # fmt: skip
    assert {v.field for v in bad.field_violations} == {"ha_restart_priority", "order", "start_delay_seconds"}
    interval = duration_pb2.Duration(nanos=10_000_000)
    watch = stub.WatchChanges(sync_service_pb2.WatchChangesRequest(bookmark_interval=interval))
    _fails(lambda: next(iter(watch)), grpc.StatusCode.INVALID_ARGUMENT)
    watch = stub.WatchChanges(sync_service_pb2.WatchChangesRequest(since_revision=10**9))
    _fails(lambda: next(iter(watch)), grpc.StatusCode.OUT_OF_RANGE)
    watch = stub.WatchChanges(sync_service_pb2.WatchChangesRequest(max_changes_per_response=1001))
    _, bad = _fails(lambda: next(iter(watch)), grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in bad.field_violations] == ["max_changes_per_response"]


def test_registry_lifecycle_idempotency_and_secrecy(
    db_url: str, sync: RunningSyncService, make_sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log_stream = io.StringIO()
    handler = setup_logging("DEBUG", "json", stream=log_stream)
    try:
        sim = make_sim(
            {**small_pool(), "pools": [{**small_pool()["pools"][0], "credentials": {"root": SECRET_PASSWORD}}]}
        )
        pool = sync.register_pool(CLUSTER, sim.master_url(), "root", SECRET_PASSWORD, request_id="req-1")
        assert pool.has_credentials and pool.cluster_id == CLUSTER
        # Same request again, or the same configuration again: the registered pool.
        again = sync.register_pool(CLUSTER, sim.master_url(), "root", SECRET_PASSWORD, request_id="req-1")
        assert again.create_time == pool.create_time
        assert sync.register_pool(CLUSTER, sim.master_url(), "root", SECRET_PASSWORD).create_time == pool.create_time
        info, _ = _fails(
            lambda: sync.register_pool(CLUSTER, sim.master_url(), "root", "other-password"),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        assert info.reason == "POOL_ALREADY_REGISTERED"
        watched = sync.wait_watching(CLUSTER)
        wait_converged(sync, sim.pool(), CLUSTER)
        assert watched.pool_uuid == sim.pool().pool_obj.uuid
        assert watched.version.api_version_major == 2 and watched.ha.ha_enabled

        # Bad credentials: reported in the sync status, never silently ignored.
        updated = sync.stub.UpdatePool(
            sync_service_pb2.UpdatePoolRequest(
                cluster_id=CLUSTER,
                credentials=sync_service_pb2.XapiCredentials(username="root", password="wrong-pw"),
                request_id="upd-1",
            )
        ).pool
        assert updated.has_credentials
        wait_for(lambda: "SESSION_AUTHENTICATION_FAILED" in sync.pool(CLUSTER).sync_status.last_error, 20)
        sync.stub.UpdatePool(
            sync_service_pb2.UpdatePoolRequest(
                cluster_id=CLUSTER,
                credentials=sync_service_pb2.XapiCredentials(username="root", password=SECRET_PASSWORD),
            )
        )
        sync.wait_watching(CLUSTER)

        listed = sync.stub.ListPools(sync_service_pb2.ListPoolsRequest()).pools
        answers = [
            *listed,
            sync.pool(CLUSTER),
            sync.stub.ListVms(sync_service_pb2.ListVmsRequest()),
            sync.stub.ListHosts(sync_service_pb2.ListHostsRequest()),
        ]
        for answer in answers:
            assert SECRET_PASSWORD.encode() not in answer.SerializeToString()

        sync.stub.DeregisterPool(sync_service_pb2.DeregisterPoolRequest(cluster_id=CLUSTER, request_id="dereg-1"))
        # Retried with the same request id: done already, not an error.
        sync.stub.DeregisterPool(sync_service_pb2.DeregisterPoolRequest(cluster_id=CLUSTER, request_id="dereg-1"))
        _fails(
            lambda: sync.stub.DeregisterPool(sync_service_pb2.DeregisterPoolRequest(cluster_id=CLUSTER)),
            grpc.StatusCode.NOT_FOUND,
        )
        assert sync.list_all_vms(cluster_id=CLUSTER)[0] == []
    finally:
        logging.getLogger().removeHandler(handler)
    # Not in the database (any table, any column), not in the logs.
    engine = create_engine(db_url)
    with engine.connect() as connection:
        for table in ("sync_pools", "sync_changes", "sync_vms", "sync_hosts", "sync_requests"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                assert SECRET_PASSWORD not in repr(row) and SECRET_PASSWORD.encode().hex() not in repr(row)
    engine.dispose()
    logs = log_stream.getvalue() + caplog.text
    assert "pool registered" in logs
    assert SECRET_PASSWORD not in logs


def test_deregister_emits_removed_changes(sync: RunningSyncService, make_sim: Any) -> None:
    sim = make_sim()
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    wait_converged(sync, sim.pool(), CLUSTER)
    vms, revision = sync.list_all_vms(cluster_id=CLUSTER)
    sync.stub.DeregisterPool(sync_service_pb2.DeregisterPoolRequest(cluster_id=CLUSTER))
    stream = sync.stub.WatchChanges(sync_service_pb2.WatchChangesRequest(since_revision=revision), timeout=10)
    removed: dict[int, set[str]] = {}
    for item in stream:
        if item.HasField("bookmark"):
            break
        assert item.change.type == sync_service_pb2.CHANGE_TYPE_REMOVED
        key = item.change.vm.uuid or item.change.host.uuid or item.change.pool.cluster_id
        removed.setdefault(item.change.kind, set()).add(key)
    stream.cancel()  # type: ignore[no-untyped-call]
    assert removed[sync_service_pb2.RESOURCE_KIND_VM] == {vm.uuid for vm in vms}
    assert len(removed[sync_service_pb2.RESOURCE_KIND_HOST]) == 3
    assert removed[sync_service_pb2.RESOURCE_KIND_POOL] == {CLUSTER}


def _watch_until_bookmark(sync: RunningSyncService, request: sync_service_pb2.WatchChangesRequest) -> list[list[int]]:
    """The revisions of each response's changes, up to the first bookmark (the stream has caught up)."""
    responses: list[list[int]] = []
    stream = sync.stub.WatchChanges(request, timeout=10)
    for item in stream:
        if item.HasField("bookmark"):
            break
        if item.HasField("changes"):
            responses.append([change.revision for change in item.changes.changes])
        else:
            responses.append([item.change.revision])
    stream.cancel()  # type: ignore[no-untyped-call]
    return responses


def test_watch_sends_changes_in_batches_when_asked(sync: RunningSyncService, make_sim: Any) -> None:
    sim = make_sim()
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    wait_converged(sync, sim.pool(), CLUSTER)
    one_by_one = _watch_until_bookmark(sync, sync_service_pb2.WatchChangesRequest(since_revision=0))
    batched = _watch_until_bookmark(
        sync, sync_service_pb2.WatchChangesRequest(since_revision=0, max_changes_per_response=4)
    )
    revisions = [revision for response in one_by_one for revision in response]
    assert len(revisions) > 8 and all(len(response) == 1 for response in one_by_one)
    assert [revision for response in batched for revision in response] == revisions  # same changes, same order
    assert all(1 <= len(response) <= 4 for response in batched) and len(batched) < len(one_by_one)


def test_list_paging_filters_and_get_by_name(sync: RunningSyncService, make_sim: Any) -> None:
    sim = make_sim()
    pool = sim.pool()
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    wait_converged(sync, pool, CLUSTER)
    all_vms, revision = sync.list_all_vms(cluster_id=CLUSTER)
    seen: list[str] = []
    token = ""
    while True:
        page = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(cluster_id=CLUSTER, page_size=2, page_token=token))
        assert page.revision == revision  # every page reports the revision of the first
        seen.extend(vm.uuid for vm in page.vms)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(vm.uuid for vm in all_vms) and len(seen) == len(set(seen))
    first = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(cluster_id=CLUSTER, page_size=2))
    _fails(
        lambda: sync.stub.ListVms(
            sync_service_pb2.ListVmsRequest(cluster_id="other", page_size=2, page_token=first.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    protected = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(ha_restart_priorities=["restart"])).vms
    assert sorted(vm.name for vm in protected) == ["db-1", "web-1"]
    halted = sync.stub.ListVms(
        sync_service_pb2.ListVmsRequest(xapi_power_states=[common_pb2.XAPI_POWER_STATE_HALTED])
    ).vms
    assert [vm.name for vm in halted] == ["halted-1"]
    off = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(power_states=[common_pb2.POWER_STATE_POWER_OFF])).vms
    assert [vm.name for vm in off] == ["halted-1"]
    bulk = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(name_prefix="bulk-")).vms
    assert len(bulk) == 3
    master = next(host for host in pool.hosts if host.ref == pool.master_ref)
    on_master = sync.stub.ListVms(sync_service_pb2.ListVmsRequest(resident_host_uuid=master.uuid)).vms
    assert {vm.name for vm in on_master} >= {"web-1", "db-1"}
    by_name = sync.stub.GetVm(
        sync_service_pb2.GetVmRequest(name=sync_service_pb2.VmNameKey(cluster_id=CLUSTER, name="db-1"))
    ).vm
    assert by_name.order == 1 and by_name.start_delay_seconds == 2 and by_name.ha_restart_priority == "restart"
    assert by_name.power_state == common_pb2.POWER_STATE_POWER_ON and by_name.power_state_update_count == 1


def _tight_pool() -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": "tight",
                "ha_enabled": True,
                "ha_host_failures_to_tolerate": 1,
                "time_scale": 0.01,
                "hosts": {"count": 2, "memory_gib": 16},
                "vms": [
                    {"name": "a", "power_state": "Running", "memory_gib": 8, "ha_restart_priority": "restart",
                     "host": 0},
                    {"name": "b", "power_state": "Running", "memory_gib": 8, "host": 1},
                    {"name": "c", "power_state": "Halted", "memory_gib": 1},
                ],
            }
        ]
    }  # fmt: skip


@pytest.mark.parametrize("wire", ["json", "xml"])
def test_set_vm_ha_config_writes_through_xapi_and_maps_its_errors(
    wire: str, sync: RunningSyncService, make_sim: Any
) -> None:
    scenario = _tight_pool()
    scenario["pools"][0]["jsonrpc"] = wire == "json"
    sim = make_sim(scenario)
    pool = sim.pool()
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    wait_converged(sync, pool, CLUSTER)
    c = pool.vm_by_name("c")
    vm = sync.stub.SetVmHaConfig(
        sync_service_pb2.SetVmHaConfigRequest(
            vm_uuid=c.uuid, ha_restart_priority="best-effort", order=3, start_delay_seconds=9, request_id="r1"
        )
    ).vm
    assert (vm.ha_restart_priority, vm.order, vm.start_delay_seconds) == ("best-effort", 3, 9)
    assert (c.rec["ha_restart_priority"], c.rec["order"], c.rec["start_delay"]) == ("best-effort", 3, 9)
    wait_converged(sync, pool, CLUSTER)
    # The same request again changes nothing and answers the same.
    again = sync.stub.SetVmHaConfig(
        sync_service_pb2.SetVmHaConfigRequest(
            vm_uuid=c.uuid, ha_restart_priority="best-effort", order=3, start_delay_seconds=9, request_id="r1"
        )
    ).vm
    assert (again.ha_restart_priority, again.order, again.start_delay_seconds) == ("best-effort", 3, 9)

    b = pool.vm_by_name("b")
    info, _ = _fails(
        lambda: sync.stub.SetVmHaConfig(
            sync_service_pb2.SetVmHaConfigRequest(vm_uuid=b.uuid, ha_restart_priority="restart")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
    assert info.metadata["xapi_code"] == "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
    assert b.rec["ha_restart_priority"] == ""

    # A VM destroyed behind the mirror's back: XAPI says UUID_INVALID -> NOT_FOUND.
    pool.destroy_vm(c)
    info, _ = _fails(
        lambda: sync.stub.SetVmHaConfig(sync_service_pb2.SetVmHaConfigRequest(vm_uuid=c.uuid, ha_restart_priority="")),
        grpc.StatusCode.NOT_FOUND,
    )
    # The pool unreachable: UNAVAILABLE.
    a = pool.vm_by_name("a")
    sim.stop()
    info, _ = _fails(
        lambda: sync.stub.SetVmHaConfig(sync_service_pb2.SetVmHaConfigRequest(vm_uuid=a.uuid, ha_restart_priority="")),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert info.reason == "POOL_UNREACHABLE"
    sim.start()
