"""Scale-out (SPEC section 7): two ha_service replicas, one active controller; the standby takes over when the
active one dies and emits each pending action once."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from ha_service.store.models import CONTROLLER_NAME, ControllerStateRow
from tests.e2e.conftest import WAIT, StartStack, pool_spec
from tests.e2e.conftest import start_stack as start_stack  # the fixture
from tests.e2e.test_cloudstack import WANTED_HA, _cluster_vms, _deploy
from xsha_api.v1 import ha_service_pb2, ha_service_pb2_grpc
from xsha_common.db import create_engine_for
from xsha_common.leases import db_now
from xsha_common.procs import ChildProcess
from xsha_common.testing import free_port, wait_until

RESTART_VM = ha_service_pb2.HA_ACTION_KIND_RESTART_VM


def _replica(db_url: str, sync_address: str, tmp_path: Path, name: str) -> tuple[ChildProcess, str]:
    port = free_port()
    args = [
        "--listen-address", f"127.0.0.1:{port}", "--metrics-address", "", "--auth-disabled",
        "--database-url", db_url, "--sync-address", sync_address, "--controller-tick-interval", "0.2",
        "--controller-lease-seconds", "2", "--replica-id", name, "--log-format", "text",
    ]  # fmt: skip
    child = ChildProcess.python_module("ha_service", "ha_service", args, log_path=tmp_path / f"{name}.log")
    child.start()
    child.wait_until_serving(f"127.0.0.1:{port}", timeout=60)
    return child, f"127.0.0.1:{port}"


def test_standby_controller_takes_over_and_emits_each_action_once(
    db_url: str, start_stack: StartStack, tmp_path: Path
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite means one replica")
    stack = start_stack([pool_spec("xs61", "xenserver-6.1", vms=_cluster_vms())], {"cs61": "xs61"})
    stack.set_native(True)
    _deploy(stack, "cs61")
    stack.stop_ha()
    engine = create_engine_for(stack.db_url)

    def active_holder() -> str | None:
        with engine.connect() as connection:
            now = db_now(connection)
            row = connection.execute(
                select(ControllerStateRow.holder, ControllerStateRow.lease_expire_time).where(
                    ControllerStateRow.name == CONTROLLER_NAME
                )
            ).first()
        if row is None or not row[0] or float(row[1] or 0) <= now:
            return None
        return str(row[0]).split("#")[0]

    replicas = {name: _replica(stack.db_url, stack.sync.address, tmp_path, name) for name in ("ha-a", "ha-b")}
    try:
        wait_until(lambda: active_holder() is not None, WAIT, what="one active controller")
        active = active_holder() or ""
        standby = "ha-b" if active == "ha-a" else "ha-a"
        channel = grpc.insecure_channel(replicas[standby][1])
        stub = ha_service_pb2_grpc.HaPolicyServiceStub(channel)
        replicas[active][0].kill()  # SIGKILL: the lease is not released
        wait_until(lambda: active_holder() == standby, WAIT, what="the standby to take the controller lease")
        stack.control("cs61").crash_host(1)

        def actions() -> list[ha_service_pb2.HaAction]:
            request = ha_service_pb2.ListHaActionsRequest(page_size=1000)
            return list(stub.ListHaActions(request, timeout=10).actions)

        wait_until(lambda: len(actions()) >= len(WANTED_HA), WAIT, what="a RESTART_VM per wanted HA VM")
        time.sleep(2.0)  # more ticks: grace periods and re-reconciles must not repeat an action
        found = sorted((a.instance_name, a.kind) for a in actions())
        assert found == sorted((name, RESTART_VM) for name in WANTED_HA)
        channel.close()
    finally:
        for child, _address in replicas.values():
            child.kill()
        engine.dispose()
