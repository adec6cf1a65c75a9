"""The controller's shared transactions: VM changes that arrive together are reconciled in one transaction, with
the same events, deduplication and revision bookmark as one by one, and one VM's failure loses no other VM."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ha_service import controller as controller_module
from ha_service import events as events_module
from ha_service.controller import Controller
from ha_service.events import NOTIFICATION
from ha_service.store.models import HaEventRow, ManagedVmRow
from ha_service.testing import ManualClock, RunningHaService, running_ha_service
from tests.ha_service.fake_sync import FakeSync
from tests.ha_service.test_settings_decisions import decide, set_global
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.db import write_transaction

NAMES = [f"i-9-{n}-VM" for n in range(1, 6)]
EventKey = tuple[str, str, str, str, str]


class TransactionCounter:
    """Counts the controller's write transactions (wraps the function its module calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = write_transaction

        def counted(bind: Any) -> AbstractContextManager[Any]:
            self.count += 1
            return real(bind)

        monkeypatch.setattr(controller_module, "write_transaction", counted)


@contextmanager
def idle_ha(db_url: str, fake_sync: FakeSync, clock: ManualClock) -> Iterator[tuple[RunningHaService, Controller]]:
    """ha_service without its own controller, and a controller that runs only what the test hands it."""
    with running_ha_service(db_url, fake_sync.server.address, clock=clock, controller_enabled=False) as ha:
        service = ha.service
        yield ha, Controller(service.sessions, service.sync, service.bus, clock=clock, metrics=service.metrics)


def native_pool_with_vms(fake_sync: FakeSync) -> tuple[str, str]:
    fake_sync.add_pool("nat", "ch82", ha=True)
    return fake_sync.add_host("nat", "h1"), fake_sync.add_host("nat", "h2")


def decide_all(ha: RunningHaService) -> None:
    set_global(ha, True)
    for name in NAMES:
        decide(ha, "nat", name)


def events(ha: RunningHaService) -> list[EventKey]:
    with ha.service.sessions() as session:
        rows = session.execute(select(HaEventRow).order_by(HaEventRow.revision)).scalars()
        keys: list[EventKey] = []
        for row in rows:
            old = new = ""
            if row.category == NOTIFICATION:
                notice = ha_service_pb2.HaNotification.FromString(row.payload)
                old, new = notice.old_host_uuid, notice.new_host_uuid
            keys.append((row.category, row.kind, row.instance_name, old, new))
        return keys


def run_batched(controller: Controller, changes: list[sync_service_pb2.Change]) -> list[list[object]]:
    """As the worker does when `changes` are all queued: leading runs of VM changes go together."""
    backlog: deque[object] = deque(changes)
    segments: list[list[object]] = []
    while backlog:
        segment = Controller._next_segment(backlog)
        controller._handle_segment(segment)
        segments.append(segment)
    return segments


def vm_changes(changes: list[sync_service_pb2.Change], after: int) -> list[sync_service_pb2.Change]:
    return [c for c in changes if c.revision > after and c.HasField("vm")]


def test_changes_delivered_together_share_one_transaction_with_the_same_events(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h1, h2 = native_pool_with_vms(fake_sync)
    with (
        idle_ha(db_url, fake_sync, clock) as (batched_ha, batched),
        idle_ha(f"sqlite:///{tmp_path / 'one-by-one.sqlite'}", fake_sync, clock) as (single_ha, single),
    ):
        decide_all(batched_ha)
        decide_all(single_ha)
        for name in NAMES:
            fake_sync.add_vm("nat", name, running_on=h1, priority="restart")
        before_crash = fake_sync.revision
        fake_sync.crash_host_native(h1, restart_on=h2)
        changes = list(fake_sync.changes)
        counter = TransactionCounter(monkeypatch)

        for change in changes:
            single._handle_segment([change])
        one_by_one = counter.count
        counter.count = 0
        segments = run_batched(batched, changes)

        # Each VM change alone is at least a transaction; together, a run of them is one (the host change between
        # the VMs' arrival and their restarts splits the stream, and its own reconciles share one too).
        assert one_by_one >= len(vm_changes(changes, 0))
        restarts = [s for s in segments if all(isinstance(i, sync_service_pb2.Change) and i.HasField("vm") for i in s)]
        assert [len(s) for s in restarts][-1] == 2 * len(NAMES)  # Halted then Running, for each VM
        assert counter.count < one_by_one
        counter.count = 0
        batched._handle_segment(list(vm_changes(changes, before_crash)))  # the same run again: already observed
        assert counter.count == 1

        restarted = [e for e in events(batched_ha) if e[1] == "VM_RESTARTED_BY_HYPERVISOR"]
        assert sorted(e[2] for e in restarted) == NAMES
        assert {(e[3], e[4]) for e in restarted} == {(h1, h2)}
        assert events(batched_ha) == events(single_ha)
        assert batched.processed_revision == single.processed_revision == changes[-1].revision
        assert fake_sync.set_calls == []  # the VMs carried their decided config: no writes interleaved


def test_actions_deduplicated_within_one_batch(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    with idle_ha(db_url, fake_sync, clock) as (ha, controller):
        decide(ha, "cs", "i-1-1-VM")
        vm = fake_sync.add_vm("cs", "i-1-1-VM", running_on=h1)
        run_batched(controller, list(fake_sync.changes))
        start = fake_sync.revision
        # Halted, seen running elsewhere by nobody, halted again: one outage, one RESTART_VM, in one batch.
        fake_sync.set_vm(vm, running_on="")
        fake_sync.set_vm(vm, priority="")
        fake_sync.set_vm(vm, running_on="")
        counter = TransactionCounter(monkeypatch)
        controller._handle_segment(list(vm_changes(list(fake_sync.changes), start)))
        assert counter.count == 1
        assert [(e[1], e[2]) for e in events(ha) if e[0] == "ACTION"] == [("RESTART_VM", "i-1-1-VM")]


def test_one_vm_failing_loses_no_other_vm(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    h1, h2 = native_pool_with_vms(fake_sync)
    with idle_ha(db_url, fake_sync, clock) as (ha, controller):
        decide_all(ha)
        uuids = {name: fake_sync.add_vm("nat", name, running_on=h1, priority="restart") for name in NAMES}
        run_batched(controller, list(fake_sync.changes))
        before_crash = fake_sync.revision
        fake_sync.crash_host_native(h1, restart_on=h2)
        broken = uuids[NAMES[2]]
        real: Callable[[Session, sync_service_pb2.Vm, bool], Any] = controller._observe_in

        def observe(session: Session, vm: sync_service_pb2.Vm, removed: bool) -> Any:
            if vm.uuid == broken:
                raise RuntimeError("a bug in one VM's handling")
            return real(session, vm, removed)

        monkeypatch.setattr(controller, "_observe_in", observe)
        run_batched(controller, [c for c in fake_sync.changes if c.revision > before_crash])

        restarted = sorted(e[2] for e in events(ha) if e[1] == "VM_RESTARTED_BY_HYPERVISOR")
        assert restarted == [n for n in NAMES if n != NAMES[2]]
        assert controller.processed_revision == fake_sync.revision


def managed_rows(ha: RunningHaService) -> dict[str, tuple[object, ...]]:
    """What the controller persisted of each managed VM, by name (the uuid as bound, or None)."""
    with ha.service.sessions() as session:
        return {
            row.instance_name: (
                row.vm_uuid,
                row.present,
                row.ever_present,
                row.observed_power_state,
                row.observed_host_uuid,
                row.observed_revision,
                row.last_running_host_uuid,
                row.was_running,
                row.actions_requested,
            )
            for row in session.execute(select(ManagedVmRow)).scalars()
        }


def test_vms_bound_and_rebound_within_one_batch_are_reconciled_as_one_by_one(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decided VM's first appearance binds its row to the VM's uuid; the changes after it in the same batch must
    find that row by the new uuid before the binding is written. Likewise a name whose VM is removed and created
    again: the row moves to the new uuid, and the old uuid no longer finds it."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1, h2 = fake_sync.add_host("cs", "h1"), fake_sync.add_host("cs", "h2")
    with (
        idle_ha(db_url, fake_sync, clock) as (batched_ha, batched),
        idle_ha(f"sqlite:///{tmp_path / 'one-by-one.sqlite'}", fake_sync, clock) as (single_ha, single),
    ):
        for ha in (batched_ha, single_ha):
            set_global(ha, False)
            for name in NAMES:
                decide(ha, "cs", name)
        start = fake_sync.revision
        uuids = [fake_sync.add_vm("cs", name, running_on=h1) for name in NAMES]
        fake_sync.set_vm(uuids[0], running_on="")  # bound, then halted: an outage, one RESTART_VM
        fake_sync.set_vm(uuids[1], running_on=h2)  # bound, then moved
        fake_sync.remove_vm(uuids[2])  # bound, removed, created again under the same name, then halted
        again = fake_sync.add_vm("cs", NAMES[2], running_on=h2)
        fake_sync.set_vm(again, running_on="")
        changes = vm_changes(list(fake_sync.changes), start)
        counter = TransactionCounter(monkeypatch)

        batched._handle_segment(list[object](changes))
        assert counter.count == 1
        for change in changes:
            single._handle_segment([change])

        rows = managed_rows(batched_ha)
        assert rows == managed_rows(single_ha)
        assert rows[NAMES[0]][:5] == (uuids[0], True, True, "Halted", "")
        assert rows[NAMES[1]][:5] == (uuids[1], True, True, "Running", h2)
        assert rows[NAMES[2]][:5] == (again, True, True, "Halted", "")
        assert events(batched_ha) == events(single_ha)
        actions = [(e[1], e[2]) for e in events(batched_ha) if e[0] == "ACTION"]
        assert ("RESTART_VM", NAMES[0]) in actions


def test_a_failed_shared_write_runs_the_vms_one_at_a_time_and_loses_only_the_one_at_fault(
    db_url: str,
    fake_sync: FakeSync,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transaction's events are written together at its end, so a database error there names no VM: the
    controller runs the same VMs again one at a time, which finds the VM whose write fails, and keeps the others."""
    h1, h2 = native_pool_with_vms(fake_sync)
    with idle_ha(db_url, fake_sync, clock) as (ha, controller):
        decide_all(ha)
        for name in NAMES:
            fake_sync.add_vm("nat", name, running_on=h1, priority="restart")
        run_batched(controller, list(fake_sync.changes))
        before_crash = fake_sync.revision
        fake_sync.crash_host_native(h1, restart_on=h2)
        real_append = events_module.append_events
        writes: list[list[str]] = []

        def append(session: Session, items: Any, now: float) -> Any:
            names = [item.instance_name for item in items]
            writes.append(names)
            if NAMES[2] in names:  # as a database refusing that VM's event row would
                raise IntegrityError("INSERT INTO ha_event ...", {}, Exception("refused"))
            return real_append(session, items, now)

        monkeypatch.setattr(controller_module, "append_events", append)
        with caplog.at_level(logging.WARNING, logger=controller_module.__name__):
            run_batched(controller, [c for c in fake_sync.changes if c.revision > before_crash])

        restarted = sorted(e[2] for e in events(ha) if e[1] == "VM_RESTARTED_BY_HYPERVISOR")
        assert restarted == [n for n in NAMES if n != NAMES[2]]
        assert controller.processed_revision == fake_sync.revision
        # The shared write was tried, then each VM's events alone.
        assert any(len(names) > 1 and NAMES[2] in names for names in writes)
        assert [NAMES[2]] in writes
        assert "one at a time" in caplog.text
        assert "failed to reconcile one VM" in caplog.text


@pytest.mark.parametrize("halt_alone", [False, True], ids=["one-batch", "halt-then-batch"])
def test_a_pending_action_holds_back_the_next_as_one_by_one(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, tmp_path: Path, halt_alone: bool
) -> None:
    """A console proxy halted (RESTART_SYSTEM_VM), up again, then gone gets no RECREATE_SYSTEM_VM while its restart
    is still pending, exactly as when each change is its own transaction. In one batch, the restart is requested by
    an earlier change of the same transaction, whose events are written only at its end; after a batch of its own,
    it is a committed pending action, which the next batch reads with its VMs' rows before its first reconcile."""
    fake_sync.add_pool("cs", "xs71", ha=False)
    h1 = fake_sync.add_host("cs", "h1")
    name = "v-7-VM"
    with (
        idle_ha(db_url, fake_sync, clock) as (batched_ha, batched),
        idle_ha(f"sqlite:///{tmp_path / 'one-by-one.sqlite'}", fake_sync, clock) as (single_ha, single),
    ):
        for ha in (batched_ha, single_ha):
            decide(ha, "cs", name, vm_type=common_pb2.VM_TYPE_CONSOLE_PROXY)
        proxy = fake_sync.add_vm("cs", name, running_on=h1)
        for controller in (batched, single):
            run_batched(controller, list(fake_sync.changes))
        start = fake_sync.revision
        fake_sync.set_vm(proxy, running_on="")
        fake_sync.set_vm(proxy, running_on=h1)
        fake_sync.remove_vm(proxy)
        changes = vm_changes(list(fake_sync.changes), start)

        for segment in [changes[:1], changes[1:]] if halt_alone else [changes]:
            batched._handle_segment(list[object](segment))
        for change in changes:
            single._handle_segment([change])

        actions = [(e[1], e[2]) for e in events(batched_ha) if e[0] == "ACTION"]
        assert actions == [("RESTART_SYSTEM_VM", name)]
        assert events(batched_ha) == events(single_ha)


class StatementLog:
    """The SQL statements the controller's engine runs (a cursor-execute listener), for counting reads."""

    def __init__(self, ha: RunningHaService) -> None:
        self.statements: list[str] = []
        self.engine = ha.service.engine
        event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    def reads_of(self, table: str) -> int:
        return sum(1 for s in self.statements if s.startswith("SELECT") and f"FROM {table}" in s)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


@pytest.mark.parametrize("vms", [4, 12])
def test_a_host_failure_reads_its_vms_in_a_fixed_number_of_statements(
    db_url: str, fake_sync: FakeSync, clock: ManualClock, vms: int
) -> None:
    """A host's death and its VMs' restarts: the rows and pending actions are read per shared transaction, not per
    VM, so the reads do not grow with the number of VMs (both the host's death, which reconciles its VMs by row id,
    and the restarts that follow, by uuid)."""
    fake_sync.add_pool("nat", "ch82", ha=True)
    h1, h2 = fake_sync.add_host("nat", "h1"), fake_sync.add_host("nat", "h2")
    names = [f"i-5-{n}-VM" for n in range(vms)]
    with idle_ha(db_url, fake_sync, clock) as (ha, controller):
        set_global(ha, True)
        for name in names:
            decide(ha, "nat", name)
            fake_sync.add_vm("nat", name, running_on=h1, priority="restart")
        run_batched(controller, list(fake_sync.changes))
        before_crash = fake_sync.revision
        fake_sync.crash_host_native(h1, restart_on=h2)
        log = StatementLog(ha)
        try:
            segments = run_batched(controller, [c for c in fake_sync.changes if c.revision > before_crash])
        finally:
            log.close()

        assert len(segments) == 2  # the host's death, then its VMs' changes
        restarted = sorted(e[2] for e in events(ha) if e[1] == "VM_RESTARTED_BY_HYPERVISOR")
        assert restarted == sorted(names)
        # One read of the rows for the host's death (which ids), one per shared transaction after it.
        assert log.reads_of("ha_managed_vms") <= 3
        assert log.reads_of("ha_events") <= 2
