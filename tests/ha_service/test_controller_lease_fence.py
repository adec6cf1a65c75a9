"""The controller's revision bookmark is fenced by its lease: a controller whose lease was taken over cannot move
the new holder's revision."""

from __future__ import annotations

from typing import Any

from ha_service.controller import Controller
from ha_service.store.models import CONTROLLER_NAME, ControllerStateRow
from ha_service.testing import ManualClock, running_ha_service
from tests.ha_service.fake_sync import FakeSync
from xsha_common.db import write_transaction


def stored_revision(sessions: Any) -> int:
    """The change-stream revision the controller stored."""
    with sessions() as session:
        state = session.get(ControllerStateRow, CONTROLLER_NAME)
        assert state is not None
        return int(state.sync_revision)


def test_a_deposed_controller_does_not_store_its_revision(db_url: str, fake_sync: FakeSync, clock: ManualClock) -> None:
    with running_ha_service(db_url, fake_sync.server.address, clock=clock, controller_enabled=False) as ha:
        service = ha.service
        with write_transaction(service.sessions) as session:
            session.add(
                ControllerStateRow(
                    name=CONTROLLER_NAME, sync_revision=7, holder="new#2", fencing_token=2, update_time=clock()
                )
            )
        deposed = Controller(
            service.sessions, service.sync, service.bus, clock=clock, metrics=service.metrics, lease_fence=("old#1", 1)
        )
        deposed.processed_revision = 5
        deposed._persist_revision(force=True)
        assert stored_revision(service.sessions) == 7  # the new holder's revision stands

        holder = Controller(
            service.sessions, service.sync, service.bus, clock=clock, metrics=service.metrics, lease_fence=("new#2", 2)
        )
        holder.processed_revision = 9
        holder._persist_revision(force=True)
        assert stored_revision(service.sessions) == 9
