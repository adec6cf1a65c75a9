"""Schema migrations and race-free pinning on every backend."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ha_service.events import counter_value
from ha_service.store.models import EVENT_REVISION_COUNTER, VERSION_TABLE, Base
from ha_service.testing import RunningHaService
from tests.ha_service.fake_sync import FakeSync
from tests.ha_service.test_settings_decisions import decide, set_global
from xsha_api.v1 import ha_service_pb2
from xsha_common.db import create_engine_for, current_revision, downgrade_to_base, head_revision, upgrade_to_head
from xsha_common.testing import SqliteInstructions, schema_drift


def test_upgrade_and_downgrade(db_url: str) -> None:
    upgrade_to_head("ha_service", db_url, VERSION_TABLE)
    assert current_revision(db_url, VERSION_TABLE) == head_revision("ha_service")
    engine = create_engine_for(db_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert {"ha_settings", "ha_cluster_pins", "ha_managed_vms", "ha_events", "ha_counters"} <= tables
        downgrade_to_base("ha_service", db_url, VERSION_TABLE)
        engine.dispose()
        left = {t for t in sa.inspect(engine).get_table_names() if t.startswith("ha_")}
        assert left == set()
    finally:
        engine.dispose()


def test_the_migrations_build_the_schema_the_models_declare(db_url: str) -> None:
    upgrade_to_head("ha_service", db_url, VERSION_TABLE)
    assert schema_drift(db_url, Base.metadata, "ha_") == []


def test_concurrent_decisions_never_pin_two_modes(ha: RunningHaService, fake_sync: FakeSync) -> None:
    """Many first HA VMs of one cluster decided at once while the global setting flips: one mode wins for all."""
    fake_sync.add_pool("race", "ch82")
    set_global(ha, True)
    results: list[ha_service_pb2.VmDeploymentDecision] = []
    errors: list[BaseException] = []
    start = threading.Barrier(13)

    def deployer(index: int) -> None:
        start.wait()
        try:
            results.append(decide(ha, "race", f"i-9-{index}-VM"))
        except BaseException as error:
            errors.append(error)

    def flipper() -> None:
        start.wait()
        try:
            set_global(ha, False, apply_to_unpinned_only=True)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=deployer, args=(i,)) for i in range(12)] + [threading.Thread(target=flipper)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 12
    modes = {r.mode for r in results}
    assert len(modes) == 1
    assert sum(r.pinned_cluster for r in results) == 1
    status = ha.stub().GetClusterHaStatus(ha_service_pb2.GetClusterHaStatusRequest(cluster_id="race")).status
    assert status.pinned and status.pinned_mode in modes


def test_concurrent_repeats_of_one_decision_get_one_answer(ha: RunningHaService, fake_sync: FakeSync) -> None:
    """Concurrent decisions share transactions: repeats of a VM (by name, or by request id) in flight together,
    possibly in one group, all get the single decision that was stored, and each VM is decided once."""
    fake_sync.add_pool("repeat", "ch82")
    set_global(ha, True)
    results: dict[str, list[ha_service_pb2.VmDeploymentDecision]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def deployer(index: int) -> None:
        name = f"i-7-{index % 6}-VM"
        start.wait()
        try:
            # Odd callers retry under one request id per VM; even ones repeat without one.
            decision = decide(ha, "repeat", name, request_id=f"req-{index % 6}" if index % 2 else "")
            with lock:
                results.setdefault(name, []).append(decision)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=deployer, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(results) == [f"i-7-{i}-VM" for i in range(6)]
    for decisions in results.values():
        assert len(decisions) == 4
        assert all(d == decisions[0] for d in decisions)  # the same stored answer, decide_time included
    assert sum(d.pinned_cluster for ds in results.values() for d in ds[:1]) == 1
    listed = ha.stub().ListManagedVms(ha_service_pb2.ListManagedVmsRequest(cluster_id="repeat")).vms
    assert sorted(vm.decision.instance_name for vm in listed) == sorted(results)


def _add_events(sessions: sessionmaker[Session], count: int) -> None:
    """`count` HA events written straight into the table: every fourth an action, one in a thousand of them still
    pending, the rest notifications; the revision counter moves past them."""
    with sessions.begin() as session:
        first = counter_value(session, EVENT_REVISION_COUNTER) + 1
        action = ha_service_pb2.HaAction(kind=ha_service_pb2.HA_ACTION_KIND_RESTART_VM).SerializeToString()

        def state(revision: int) -> str | None:
            if revision % 4:
                return None
            return "PENDING" if revision % 4_000 == 0 else "SUCCEEDED"

        rows = [
            {
                "revision": revision,
                "event_id": f"e{revision}",
                "category": "NOTIFICATION" if revision % 4 else "ACTION",
                "action_state": state(revision),
                "payload": b"" if revision % 4 else action,
            }
            for revision in range(first, first + count)
        ]
        session.execute(
            sa.text(
                "INSERT INTO ha_events (revision, event_id, category, kind, cluster_id, instance_name, vm_uuid, "
                "action_state, payload, create_time, ack_message) VALUES (:revision, :event_id, :category, 'K', "
                "'c1', 'i-1', 'u', :action_state, :payload, 0, '')"
            ),
            rows,
        )
        session.execute(
            sa.text("UPDATE ha_counters SET value = :last WHERE name = :name"),
            {"last": first + count - 1, "name": EVENT_REVISION_COUNTER},
        )


def test_a_page_of_actions_is_read_without_reading_every_action(ha_sqlite: RunningHaService) -> None:
    """ListHaActions reads a page of actions, all of them or the pending ones, as a range in revision order: a page
    costs as much beside 10,000 retained actions as beside 500 (SQLite once read and sorted every action, or every
    action of the state, for each page)."""
    instructions = SqliteInstructions(ha_sqlite.service.engine)
    pages: list[ha_service_pb2.ListHaActionsResponse] = []

    def first_pages() -> None:
        for states in ([], [ha_service_pb2.HA_ACTION_STATE_PENDING]):
            request = ha_service_pb2.ListHaActionsRequest(page_size=10, states=states)
            pages.append(ha_sqlite.service.handlers.list_ha_actions(request))

    _add_events(ha_sqlite.service.sessions, 2_000)
    few = instructions.of(first_pages)
    _add_events(ha_sqlite.service.sessions, 38_000)
    many = instructions.of(first_pages)
    assert many < 2 * few + 1_000, (few, many)
    assert [len(page.actions) for page in pages] == [10, 0, 10, 10]
    assert pages[0].actions == pages[2].actions
    assert {action.state for action in pages[3].actions} == {ha_service_pb2.HA_ACTION_STATE_PENDING}
