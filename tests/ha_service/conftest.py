"""Fixtures of ha_service's tests: the sync_service test double and ha_service in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ha_service.testing import ManualClock, RunningHaService, running_ha_service
from tests.ha_service.fake_sync import FakeSync


@pytest.fixture
def fake_sync() -> Iterator[FakeSync]:
    sync = FakeSync()
    sync.start()
    yield sync
    sync.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ha(db_url: str, fake_sync: FakeSync, clock: ManualClock) -> Iterator[RunningHaService]:
    with running_ha_service(db_url, fake_sync.server.address, clock=clock) as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path / 'ha.sqlite'}"


@pytest.fixture
def ha_sqlite(sqlite_url: str, fake_sync: FakeSync, clock: ManualClock) -> Iterator[RunningHaService]:
    with running_ha_service(sqlite_url, fake_sync.server.address, clock=clock) as running:
        yield running
