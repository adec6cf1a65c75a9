"""Faults: after each, the mirror converges back to XAPI's truth, and a watch that resumes from its last revision
sees every change exactly once. The whole matrix (every fault x both wires) runs on SQLite; a representative
subset runs on MariaDB and PostgreSQL too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sync_service.testing import RunningSyncService, WatchRecorder, wait_converged, wait_for
from tests.sync_service.conftest import WIRES
from xapi_sim import Simulator
from xsha_api.v1 import sync_service_pb2

CLUSTER = "cluster-f"


def _fault_token_invalidated(sim: Simulator, sync: RunningSyncService) -> None:
    sim.pool().store.invalidate_tokens()


def _fault_sessions_expired(sim: Simulator, sync: RunningSyncService) -> None:
    sim.pool().expire_sessions()


def _fault_connections_dropped(sim: Simulator, sync: RunningSyncService) -> None:
    sim.pool().hooks.drop_connections()


def _fault_master_failed_over(sim: Simulator, sync: RunningSyncService) -> None:
    pool = sim.pool()
    new_master = next(host for host in pool.hosts if host.ref != pool.master_ref)
    pool.failover_master(new_master)


def _fault_master_crashed(sim: Simulator, sync: RunningSyncService) -> None:
    pool = sim.pool()
    pool.crash_host(pool.master)


def _fault_xapi_restarted(sim: Simulator, sync: RunningSyncService) -> None:
    sim.restart()


FAULTS: dict[str, Callable[[Simulator, RunningSyncService], None]] = {
    "token_invalidated": _fault_token_invalidated,
    "sessions_expired": _fault_sessions_expired,
    "connections_dropped": _fault_connections_dropped,
    "master_failed_over": _fault_master_failed_over,
    "master_crashed": _fault_master_crashed,
    "xapi_restarted": _fault_xapi_restarted,
}


def _changes_during_and_after(sim: Simulator) -> None:
    # Unprotected VMs only: protected ones may be being restarted by XAPI's HA at this very moment.
    pool = sim.pool()
    halted = pool.vm_by_name("halted-1")
    if halted.rec["power_state"] == "Halted":
        pool.start_vm(halted)
    running = next(
        vm
        for vm in pool.user_vms()
        if vm.rec["power_state"] == "Running" and not vm.rec["ha_restart_priority"] and vm.uuid != halted.uuid
    )
    pool.change_vm(running, "start_delay", 11)


def _assert_exactly_once(recorder: WatchRecorder, sync: RunningSyncService, since: int) -> None:
    final = sync.app.repository.current_revision()
    recorder.wait_position(final)
    revisions = recorder.revisions()  # later changes (e.g. XAPI still restarting VMs) may have arrived too
    assert revisions == list(range(since + 1, max(final, revisions[-1]) + 1)), "every change once, in order"
    assert recorder.errors == []


def _run_fault(fault: str, wire: str, db_url: str, make_sim: Any, make_sync: Any) -> None:
    sim = make_sim(jsonrpc=wire == "json")
    sync = make_sync(db_url)
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    wait_converged(sync, sim.pool(), CLUSTER)
    _, since = sync.list_all_vms(cluster_id=CLUSTER)
    recorder = WatchRecorder(lambda: sync, since)
    try:
        FAULTS[fault](sim, sync)
        _changes_during_and_after(sim)
        wait_converged(sync, sim.pool(), CLUSTER, timeout=40)
        # Still following the stream after recovering: one more change arrives.
        pool = sim.pool()
        vm = next(
            vm for vm in pool.user_vms() if vm.rec["power_state"] == "Running" and not vm.rec["ha_restart_priority"]
        )
        pool.change_vm(vm, "order", 42)
        wait_converged(sync, pool, CLUSTER)
        _assert_exactly_once(recorder, sync, since)
    finally:
        recorder.stop()
    status = sync.pool(CLUSTER).sync_status
    assert status.connected and status.state == sync_service_pb2.SYNC_STATE_WATCHING


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_converges_after_fault(fault: str, wire: str, db_url: str, make_sim: Any, make_sync: Any) -> None:
    _run_fault(fault, wire, db_url, make_sim, make_sync)


@pytest.mark.parametrize("fault", ["connections_dropped", "master_failed_over"])
def test_converges_after_fault_on_every_database(fault: str, db_url: str, make_sim: Any, make_sync: Any) -> None:
    _run_fault(fault, "json", db_url, make_sim, make_sync)


@pytest.mark.parametrize("wire", WIRES)
def test_sync_service_restart_resumes_from_the_persisted_token(
    wire: str, db_url: str, make_sim: Any, make_sync: Any
) -> None:
    sim = make_sim(jsonrpc=wire == "json")
    pool = sim.pool()
    current: dict[str, RunningSyncService] = {"sync": make_sync(db_url)}
    key = current["sync"].credentials_key
    current["sync"].register_pool(CLUSTER, sim.master_url(), "root", "password")
    first = current["sync"].wait_watching(CLUSTER)
    wait_converged(current["sync"], pool, CLUSTER)
    _, since = current["sync"].list_all_vms(cluster_id=CLUSTER)
    recorder = WatchRecorder(lambda: current["sync"], since)
    try:
        recorder.wait_position(since)
        current["sync"].stop()
        # Changes while sync_service is down.
        _changes_during_and_after(sim)
        pool.destroy_vm(pool.create_vm({"name_label": "short-lived"}))
        gone = pool.create_vm({"name_label": "created-while-down"})
        current["sync"] = make_sync(db_url, credentials_key=key)
        wait_converged(current["sync"], pool, CLUSTER)
        resumed = current["sync"].pool(CLUSTER)
        # Resumed from the token: no full re-list happened.
        assert resumed.sync_status.last_full_sync_time == first.sync_status.last_full_sync_time
        pool.destroy_vm(gone)
        wait_converged(current["sync"], pool, CLUSTER)
        _assert_exactly_once(recorder, current["sync"], since)
    finally:
        recorder.stop()


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_resync_pool_relists_and_diffs(db_url: str, make_sim: Any, make_sync: Any) -> None:
    sim = make_sim()
    pool = sim.pool()
    sync = make_sync(db_url)
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    before = sync.wait_watching(CLUSTER)
    response = sync.stub.ResyncPool(sync_service_pb2.ResyncPoolRequest(cluster_id=CLUSTER), timeout=30)
    assert (
        response.pool.sync_status.last_full_sync_time.ToDatetime() > before.sync_status.last_full_sync_time.ToDatetime()
    )
    wait_converged(sync, pool, CLUSTER)
    # A repeated report of the same power state counts (CloudStack's power_state_update_count, capped at 3).
    vms, _ = sync.list_all_vms(cluster_id=CLUSTER)
    assert {vm.power_state_update_count for vm in vms} == {2}
    for _ in range(3):
        sync.stub.ResyncPool(sync_service_pb2.ResyncPoolRequest(cluster_id=CLUSTER), timeout=30)
    vms, _ = sync.list_all_vms(cluster_id=CLUSTER)
    assert {vm.power_state_update_count for vm in vms} == {3}


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize("kind", ["missing_fields", "wrong_types", "unknown_power_state", "garbage"])
def test_malformed_records_do_not_stop_the_mirror(kind: str, db_url: str, make_sim: Any, make_sync: Any) -> None:
    sim = make_sim()
    pool = sim.pool()
    sync = make_sync(db_url)
    sync.register_pool(CLUSTER, sim.master_url(), "root", "password")
    sync.wait_watching(CLUSTER)
    victim = pool.vm_by_name("bulk-0")
    pool.serve_malformed(victim, kind)
    other = pool.vm_by_name("halted-1")
    pool.start_vm(other)
    if kind == "garbage":
        wait_for(lambda: sync.pool(CLUSTER).sync_status.last_error, what="the parse error to be reported")
    pool.serve_malformed(victim, "clear")
    wait_converged(sync, pool, CLUSTER, timeout=40)
