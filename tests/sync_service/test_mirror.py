"""End to end: a registered pool is mirrored from XAPI's event stream and stays equal to XAPI's truth."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sync_service.testing import RunningSyncService, WatchRecorder, mirror_diff, wait_converged
from tests.sync_service.conftest import WIRES, sync_calls
from xapi_sim import Simulator
from xsha_api.v1 import common_pb2, sync_service_pb2

CLUSTER = "cluster-1"


@pytest.mark.parametrize("wire", WIRES)
def test_mirror_follows_every_kind_of_change(
    wire: str, db_url: str, make_sim: Callable[..., Simulator], make_sync: Callable[..., RunningSyncService]
) -> None:
    sim = make_sim(jsonrpc=wire == "json")
    pool = sim.pool()
    sync = make_sync(db_url)
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    watched = sync.wait_watching(CLUSTER)
    expected_wire = sync_service_pb2.WIRE_FORMAT_JSON_RPC if wire == "json" else sync_service_pb2.WIRE_FORMAT_XML_RPC
    assert watched.sync_status.wire_format == expected_wire
    wait_converged(sync, pool, CLUSTER)

    _, list_revision = sync.list_all_vms(cluster_id=CLUSTER)
    recorder = WatchRecorder(lambda: sync, list_revision)
    try:
        # Templates, snapshots and dom0 are not VMs.
        mirrored, _ = sync.list_all_vms(cluster_id=CLUSTER)
        assert sorted(vm.name for vm in mirrored) == sorted(vm.rec["name_label"] for vm in pool.user_vms())
        assert not any("snapshot" in vm.name or vm.name.startswith("Control domain") for vm in mirrored)

        pool.start_vm(pool.vm_by_name("halted-1"))
        wait_converged(sync, pool, CLUSTER)
        assert sync.stub.GetVm(sync_service_pb2.GetVmRequest(uuid=pool.vm_by_name("halted-1").uuid)).vm.power_state == (
            common_pb2.POWER_STATE_POWER_ON
        )

        pool.shutdown_vm(pool.vm_by_name("bulk-0"), hard=False)
        wait_converged(sync, pool, CLUSTER)

        bulk1 = pool.vm_by_name("bulk-1")
        target = next(host for host in pool.hosts if host.ref != bulk1.rec["resident_on"])
        pool.migrate_vm(bulk1, target)
        wait_converged(sync, pool, CLUSTER)

        created = pool.create_vm({"name_label": "new-1", "memory_static_max": 2 * 1024**3})
        wait_converged(sync, pool, CLUSTER)
        pool.destroy_vm(created)
        wait_converged(sync, pool, CLUSTER)
        gone = sync.stub.GetVm(sync_service_pb2.GetVmRequest(uuid=created.uuid)).vm
        assert gone.removed and gone.power_state == common_pb2.POWER_STATE_POWER_REPORT_MISSING

        # Changed behind xsha's back (XenCenter).
        pool.change_vm(pool.vm_by_name("bulk-2"), "ha_restart_priority", "best-effort")
        pool.change_vm(pool.vm_by_name("bulk-2"), "order", 7)
        wait_converged(sync, pool, CLUSTER)

        # HA failover: the master dies with the protected VMs on it; XAPI restarts them elsewhere.
        web = pool.vm_by_name("web-1")
        dead = pool.resolve_host(web.rec["resident_on"])
        pool.crash_host(dead)
        wait_converged(sync, pool, CLUSTER, timeout=40)
        web_vm = sync.stub.GetVm(sync_service_pb2.GetVmRequest(uuid=web.uuid)).vm
        if web.rec["power_state"] == "Running":
            assert web_vm.resident_host_uuid != dead.uuid
        hosts = {h.uuid: h for h in sync.stub.ListHosts(sync_service_pb2.ListHostsRequest(cluster_id=CLUSTER)).hosts}
        assert hosts[dead.uuid].live is False

        # The watch that followed the list saw every change exactly once, in revision order.
        final = sync.app.repository.current_revision()
        recorder.wait_position(final)
        revisions = recorder.revisions()  # XAPI may still be restarting VMs: more may have arrived since
        assert revisions == list(range(list_revision + 1, max(final, revisions[-1]) + 1))
        assert recorder.errors == []
    finally:
        recorder.stop()
    assert mirror_diff(sync, pool, CLUSTER) == []
    assert sync_calls(sim), "sync_service's calls carry its originator"
    metrics = sync.app.metrics.registry
    assert (metrics.sample_value("xsha_sync_events_total", {"cluster_id": CLUSTER}) or 0) > 0
    assert metrics.sample_value("xsha_sync_pool_connected", {"cluster_id": CLUSTER}) == 1
    assert (metrics.sample_value("xsha_sync_db_write_seconds_count") or 0) > 0
    assert metrics.sample_value("xsha_sync_lag_seconds", {"cluster_id": CLUSTER}) is not None
