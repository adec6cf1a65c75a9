"""Malformed XAPI answers (sim.serve_malformed through the simulator's control interface) are skipped: the watcher
keeps running and the mirror keeps following the other VMs while the broken record is still being served; an
unparseable response ("garbage") is reported in the sync status and the mirror catches up once XAPI answers again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_service import testing as sync_testing
from tests.reliability.stack import CREDENTIALS, XSHA_PASSWORD, XSHA_USER
from xapi_sim import Simulator
from xapi_sim.testing import SimControl
from xsha_api.v1 import sync_service_pb2
from xsha_common.testing import wait_until

CLUSTER = "malformed-1"
SCENARIO = {
    "time_scale": 0.01,
    "pools": [
        {
            "name": "xs82",
            "version": "citrix-hypervisor-8.2",
            "credentials": dict(CREDENTIALS),
            "hosts": {"count": 2, "memory_gib": 64},
            "vms": [{"count": 6, "name_pattern": "i-2-{n}-VM", "memory_gib": 1}],
        }
    ],
}


@pytest.mark.parametrize("jsonrpc", [True, False], ids=["json", "xml"])
@pytest.mark.parametrize("kind", ["missing_fields", "unknown_power_state", "wrong_types", "garbage"])
def test_a_malformed_record_is_skipped_and_the_mirror_follows_the_others(
    kind: str, jsonrpc: bool, tmp_path: Path
) -> None:
    scenario = {**SCENARIO, "pools": [{**SCENARIO["pools"][0], "jsonrpc": jsonrpc}]}  # type: ignore[index]
    with (
        Simulator.from_scenario(scenario) as sim,
        sync_testing.start_sync_service(f"sqlite:///{tmp_path / 'sync.sqlite'}", event_timeout=0.5) as sync,
    ):
        pool = sim.pool("xs82")
        control = SimControl(sim.master_url("xs82"))
        sync.register_pool(CLUSTER, sim.master_url("xs82"), XSHA_USER, XSHA_PASSWORD)
        sync.wait_watching(CLUSTER)
        control.serve_malformed("i-2-1-VM", kind)
        other = pool.vm_by_name("i-2-2-VM")
        pool.change_vm(other, "start_delay", 77)

        def other_followed() -> bool:
            vm = sync.stub.GetVm(sync_service_pb2.GetVmRequest(uuid=other.uuid), timeout=10).vm
            return vm.start_delay_seconds == 77

        if kind == "garbage":
            # The whole response is unparseable: reported, then followed again once XAPI answers properly.
            wait_until(lambda: bool(sync.pool(CLUSTER).sync_status.last_error), 30, what="the parse error reported")
            control.serve_malformed("i-2-1-VM", "none")
            wait_until(other_followed, 30, what="the mirror to catch up")
        else:
            wait_until(other_followed, 30, what="the other VM followed while the broken record is served")
            pool.change_vm(pool.vm_by_name("i-2-3-VM"), "order", 5)
            wait_until(
                lambda: (
                    sync.stub.GetVm(sync_service_pb2.GetVmRequest(uuid=pool.vm_by_name("i-2-3-VM").uuid)).vm.order == 5
                ),
                30,
                what="later changes followed too",
            )
            status = sync.pool(CLUSTER).sync_status
            assert status.state == sync_service_pb2.SYNC_STATE_WATCHING and status.connected
            control.serve_malformed("i-2-1-VM", "none")
        sync_testing.wait_converged(sync, pool, CLUSTER, timeout=30)
