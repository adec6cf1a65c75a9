"""The store on every database: migrations, batched apply, ordered revisions under concurrency, retention."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc
import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import NoResultFound

from sync_service.domain import HaFacts, HostFacts, PoolFacts, PowerState, VersionFacts, VmFacts, XapiPowerState
from sync_service.store.models import VERSION_TABLE, Base
from sync_service.store.repository import (
    ANALYZE_AFTER_FULL_LIST_OF,
    Batch,
    BatchResult,
    ChangeRead,
    Compaction,
    Repository,
    StaleWatcherError,
)
from sync_service.testing import RunningSyncService
from xsha_api.v1 import sync_service_pb2
from xsha_common.db import create_engine_for, current_revision, downgrade_to_base, head_revision, upgrade_to_head
from xsha_common.testing import SqliteInstructions, schema_drift, wait_until


def test_migrations_upgrade_from_empty_and_downgrade_to_base(db_url: str) -> None:
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    assert current_revision(db_url, VERSION_TABLE) == head_revision("sync_service")
    engine = create_engine_for(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"sync_pools", "sync_hosts", "sync_vms", "sync_changes", "sync_counters", "sync_requests"} <= tables
        assert all(name.startswith(("sync_", "alembic_version_sync")) for name in tables)
    finally:
        engine.dispose()
    downgrade_to_base("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url)
    try:
        assert not {name for name in inspect(engine).get_table_names() if name.startswith("sync_")}
    finally:
        engine.dispose()
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)  # and back up again


def test_the_migrations_build_the_schema_the_models_declare(db_url: str) -> None:
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    assert schema_drift(db_url, Base.metadata, "sync_") == []


@pytest.fixture
def repository(db_url: str) -> Any:
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url, pool_size=10)
    yield Repository(engine)
    engine.dispose()


def _register(repository: Repository, cluster_id: str) -> None:
    repository.register_pool(
        cluster_id=cluster_id,
        master_url="http://127.0.0.1:1",
        credentials_encrypted=b"x",
        tls_ca_bundle_pem="",
        tls_fingerprint="",
        tls_insecure=False,
        request_id="",
    )


def _facts(uuid: str, state: XapiPowerState = XapiPowerState.RUNNING, order: int = 0) -> VmFacts:
    return VmFacts(uuid, f"vm-{uuid}", state, "", "", order, 0, False, 1024)


def _pool_facts() -> PoolFacts:
    return PoolFacts("pool-uuid", "pool", "", "", VersionFacts(2, 15), HaFacts())


def test_only_real_changes_are_logged_and_tokens_follow_batches(repository: Repository) -> None:
    _register(repository, "c1")
    full = Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True)
    result = repository.apply_batch(full)
    assert result.revisions == 3  # pool facts + two VMs
    # The same facts again (an event batch): nothing to log, but the token moves.
    same = repository.apply_batch(Batch("c1", 1, "t2", pool=_pool_facts(), vms=[_facts("a")]))
    assert same.revisions == 0
    config = repository.pool_config("c1")
    assert config is not None and config.event_token == "t2"
    changed = repository.apply_batch(Batch("c1", 1, "t3", vms=[_facts("a", XapiPowerState.HALTED)]))
    assert changed.revisions == 1
    # A full list without b: b is kept as removed.
    relist = repository.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a", XapiPowerState.HALTED)], full=True))
    assert relist.revisions == 2  # a's power state re-reported (count 2), b removed
    vm_b = repository.get_vm(uuid="b")
    assert vm_b is not None and vm_b.removed and vm_b.power_state.value == "PowerReportMissing"
    # A watcher of an older configuration writes nothing.
    repository.update_pool("c1", master_url="http://127.0.0.1:2", credentials_encrypted=None, tls=None, request_id="")
    with pytest.raises(StaleWatcherError):
        repository.apply_batch(Batch("c1", 1, "t5", vms=[_facts("c")]))


@pytest.mark.parametrize("size", [1, 15, 16, 40])  # with the new VM: 2, 16, 17 and 41 uuids
def test_an_event_batch_of_any_size_logs_exactly_its_changed_vms(repository: Repository, size: int) -> None:
    """A batch's VM rows are read as driver SQL up to 16 uuids and through SQLAlchemy beyond: either way, a VM
    whose facts are unchanged logs nothing (its stored row decodes to the same facts) and a changed one logs once;
    a uuid the pool does not have yet is added."""
    _register(repository, "c1")
    stored = [_facts(f"vm-{i:02d}", order=i) for i in range(40)]
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=stored, full=True))
    batch_vms = [
        _facts(vm.uuid, XapiPowerState.HALTED, vm.order) if i % 3 == 0 else vm for i, vm in enumerate(stored[:size])
    ]
    before = {vm.uuid: repository.get_vm(uuid=vm.uuid) for vm in batch_vms}
    result = repository.apply_batch(Batch("c1", 1, "t2", vms=[*batch_vms, _facts("vm-new")]))
    assert result.revisions == len(range(0, size, 3)) + 1
    for i, vm in enumerate(batch_vms):
        mirrored, earlier = repository.get_vm(uuid=vm.uuid), before[vm.uuid]
        assert mirrored is not None and earlier is not None and mirrored.facts == vm, i
        assert (mirrored.revision > earlier.revision) == (i % 3 == 0), i  # untouched rows keep their revision
    assert repository.get_vm(uuid="vm-new") is not None


def test_a_vm_row_update_sets_only_the_columns_that_changed(repository: Repository) -> None:
    """An update of a VM row names only the columns whose values changed: never its pool and uuid (they find the
    row), its name only when renamed, and none of the facts that kept their values. SQLite rewrites every index
    whose column an UPDATE names; MySQL's multi-row UPDATE costs less the fewer columns it carries. The stored
    rows are the same either way."""
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True))
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith(("UPDATE sync_vms", "UPDATE (SELECT", "INSERT INTO sync_vms")):
            statements.append(statement)

    event.listen(repository.engine, "before_cursor_execute", record)
    try:
        renamed = replace(_facts("b", XapiPowerState.HALTED), name="vm-b-renamed")
        repository.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a", XapiPowerState.HALTED), renamed]))
    finally:
        event.remove(repository.engine, "before_cursor_execute", record)
    vm_a, vm_b = repository.get_vm(uuid="a"), repository.get_vm(uuid="b")
    assert vm_a is not None and vm_a.facts.name == "vm-a" and vm_a.facts.xapi_power_state is XapiPowerState.HALTED
    assert vm_a.power_state is PowerState.POWER_OFF and vm_a.facts.memory_static_max == _facts("a").memory_static_max
    assert vm_b is not None and vm_b.facts.name == "vm-b-renamed" and vm_b.cluster_id == "c1"
    assert vm_b.facts.xapi_power_state is XapiPowerState.HALTED
    # `... SET a=?, b=? WHERE id = ?` elsewhere, `... SET t.`a` = v.`a`, ...` on MySQL.
    column_sets = [
        {
            part.split("=")[0].strip().removeprefix("t.").strip('`"')
            for part in statement.rsplit(" SET ", 1)[1].split(" WHERE ")[0].split(",")
        }
        for statement in statements
    ]
    assert len(column_sets) == 2, statements  # one statement for each column set
    unchanged = {"cluster_id", "uuid", "pool_uuid", "memory_static_max", "ha_order", "start_delay", "removed"}
    assert all(not columns & unchanged for columns in column_sets), column_sets
    assert all({"power_state", "xapi_power_state", "revision", "update_time"} <= columns for columns in column_sets)
    assert sorted("name_label" in columns for columns in column_sets) == [False, True]


def test_reading_the_change_log_filters_by_kind_and_pool_and_pages_by_limit(repository: Repository) -> None:
    start = repository.current_revision()
    for cluster in ("c1", "c2"):
        _register(repository, cluster)
        repository.apply_batch(
            Batch(cluster, 1, "t1", pool=_pool_facts(), vms=[_facts(f"{cluster}-a"), _facts(f"{cluster}-b")], full=True)
        )
    end = repository.current_revision()

    def read(kinds: tuple[str, ...], cluster_id: str, limit: int = 1000) -> list[tuple[str, str]]:
        changes = [
            sync_service_pb2.Change.FromString(payload)
            for payload in repository.read_changes(start, kinds=kinds, cluster_id=cluster_id, limit=limit).payloads
        ]
        return [(change.cluster_id, change.WhichOneof("object") or "") for change in changes]

    everything = read((), "")
    assert len(everything) == end - start
    assert read(("vm",), "") == [item for item in everything if item[1] == "vm"] != []
    assert read((), "c2") == [item for item in everything if item[0] == "c2"] != []
    assert read(("vm", "pool"), "c1") == [item for item in everything if item[0] == "c1" and item[1] != "host"]
    assert read(("host",), "c1") == [item for item in everything if item[0] == "c1" and item[1] == "host"]
    # A full page stops at its last row; a short one has read the log up to the latest revision.
    page = repository.read_changes(start, kinds=("vm",), cluster_id="", limit=2)
    assert len(page.payloads) == 2
    assert page.position == sync_service_pb2.Change.FromString(page.payloads[-1]).revision
    assert repository.read_changes(start, kinds=("vm",), cluster_id="c9", limit=2).position == end


def _apply_recording(
    repository: Repository, batch: Batch, wanted: Callable[[str], bool]
) -> tuple[BatchResult, list[str]]:
    """Applies `batch`; returns its result and the statements it sent that `wanted` picks."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if wanted(statement):
            statements.append(statement)

    event.listen(repository.engine, "before_cursor_execute", record)
    try:
        result = repository.apply_batch(batch)
    finally:
        event.remove(repository.engine, "before_cursor_execute", record)
    return result, statements


def _write_counting_counter_statements(repository: Repository, batch: Batch) -> list[str]:
    return _apply_recording(repository, batch, lambda statement: "sync_counters" in statement)[1]


def _logged_revisions(repository: Repository, after: int) -> list[int]:
    page = repository.read_changes(after, kinds=(), cluster_id="", limit=100)
    return [sync_service_pb2.Change.FromString(payload).revision for payload in page.payloads]


def test_a_batch_takes_its_revisions_in_one_counter_statement(repository: Repository) -> None:
    """The counter's advance reports the new value itself (RETURNING, or LAST_INSERT_ID on MySQL and MariaDB):
    no SELECT of the counter follows it, and the revisions handed out are the ones the counter moved past."""
    _register(repository, "c1")
    for round_ in range(2):
        start = repository.current_revision()
        vms = [_facts(f"vm-{i}", order=round_) for i in range(3)]

        statements = _write_counting_counter_statements(repository, Batch("c1", 1, f"t{round_}", vms=vms))

        assert len(statements) == 1 and statements[0].startswith("UPDATE"), statements
        assert repository.current_revision() == start + 3
        assert _logged_revisions(repository, start) == [start + 1, start + 2, start + 3]


def test_without_update_returning_the_counter_is_read_after_its_advance(
    repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 has no RETURNING: the advance is followed by a read of the counter, with the same
    revisions."""
    if repository.backend == "mysql":
        pytest.skip("MySQL and MariaDB take the new value from LAST_INSERT_ID, not RETURNING")
    monkeypatch.setattr(repository.engine.dialect, "update_returning", False)
    _register(repository, "c1")
    start = repository.current_revision()

    statements = _write_counting_counter_statements(repository, Batch("c1", 1, "t1", vms=[_facts("a"), _facts("b")]))

    assert [statement.split()[0] for statement in statements] == ["UPDATE", "SELECT"], statements
    assert repository.current_revision() == start + 2
    assert _logged_revisions(repository, start) == [start + 1, start + 2]


def test_a_missing_revision_counter_fails_the_batch_rather_than_restarting_revisions(repository: Repository) -> None:
    _register(repository, "c1")
    with repository.engine.begin() as connection:
        connection.execute(text("DELETE FROM sync_counters WHERE name = 'revision'"))

    with pytest.raises(NoResultFound):
        repository.apply_batch(Batch("c1", 1, "t1", vms=[_facts("a")]))

    assert repository.get_vm(uuid="a") is None


def test_revisions_are_committed_in_order_with_concurrent_writers(repository: Repository) -> None:
    clusters = [f"c{i}" for i in range(4)]
    for cluster in clusters:
        _register(repository, cluster)
    start = repository.current_revision()
    gaps: list[str] = []
    stop = threading.Event()

    def read() -> None:
        position = start
        while not stop.is_set() or position < repository.current_revision():
            result = repository.read_changes(position, kinds=(), cluster_id="", limit=1000)
            revisions = [sync_service_pb2.Change.FromString(payload).revision for payload in result.payloads]
            if revisions != list(range(position + 1, position + 1 + len(revisions))):
                gaps.append(f"after {position}: {revisions[:5]}")
            position = max(position, result.position)

    def write(cluster: str) -> None:
        for round_ in range(15):
            vms = [_facts(f"{cluster}-{i}", order=round_) for i in range(5)]
            repository.apply_batch(Batch(cluster, 1, f"t{round_}", vms=vms))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(cluster,)) for cluster in clusters]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join(30)
    assert gaps == []
    assert repository.current_revision() == start + 4 * 15 * 5


def test_batches_of_many_pools_share_a_transaction_and_a_stale_one_is_refused_alone(db_url: str) -> None:
    """While one batch is being written, the batches of other pools queue and are then written together (one
    transaction); a stale watcher's batch among them is refused on its own and the others commit."""
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url, pool_size=10)
    first_write_started = threading.Event()
    release_first_write = threading.Event()
    transactions: list[float] = []

    def clock() -> dt.datetime:  # read once at the start of each write transaction
        if not first_write_started.is_set():
            first_write_started.set()
            assert release_first_write.wait(10)
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)

    setup = Repository(engine)
    clusters = [f"g{i}" for i in range(6)]
    for cluster in clusters:
        _register(setup, cluster)
    setup.update_pool("g5", master_url="http://127.0.0.1:2", credentials_encrypted=None, tls=None, request_id="")
    repository = Repository(engine, clock=clock, on_write=transactions.append)
    outcomes: dict[str, object] = {}

    def write(cluster: str) -> None:
        try:  # g5 was reconfigured: its watcher (generation 1) is stale
            outcomes[cluster] = repository.apply_batch(Batch(cluster, 1, f"{cluster}-t", vms=[_facts(f"{cluster}-vm")]))
        except StaleWatcherError as error:
            outcomes[cluster] = error

    try:
        leader = threading.Thread(target=write, args=("g0",))
        leader.start()
        assert first_write_started.wait(10)
        followers = [threading.Thread(target=write, args=(cluster,)) for cluster in clusters[1:]]
        for follower in followers:
            follower.start()
        wait_until(lambda: repository._batch_writes.queued == 5, timeout=10)
        release_first_write.set()
        for thread in [leader, *followers]:
            thread.join(10)
        assert len(transactions) == 2  # g0 alone, then g1-g5 together
        assert isinstance(outcomes.pop("g5"), StaleWatcherError)
        assert all(getattr(result, "revisions", None) == 1 for result in outcomes.values()), outcomes
        for cluster in clusters[:5]:
            config = repository.pool_config(cluster)
            assert config is not None and config.event_token == f"{cluster}-t"
            assert repository.get_vm(uuid=f"{cluster}-vm") is not None
        stale = repository.pool_config("g5")
        assert stale is not None and stale.event_token == "" and repository.get_vm(uuid="g5-vm") is None
    finally:
        release_first_write.set()
        engine.dispose()


def test_a_group_with_two_batches_of_one_pool_writes_them_in_order(db_url: str) -> None:
    """A group's change log, revision counter and pool bookkeeping are written once, at its end: a pool with two
    batches in one group keeps its later token, adds up both batches' events, and its changes keep their order
    in gapless revisions."""
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url, pool_size=10)
    first_write_started = threading.Event()
    release_first_write = threading.Event()
    transactions: list[float] = []

    def clock() -> dt.datetime:
        if not first_write_started.is_set():
            first_write_started.set()
            assert release_first_write.wait(10)
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)

    setup = Repository(engine)
    for cluster in ("h0", "h1", "h2"):
        _register(setup, cluster)
    start = setup.current_revision()
    repository = Repository(engine, clock=clock, on_write=transactions.append)
    queued = [
        Batch("h1", 1, "h1-t1", vms=[_facts("x1")], events=2),
        Batch("h2", 1, "h2-t1", vms=[_facts("y1")], events=1),
        Batch("h1", 1, "h1-t2", vms=[_facts("x1", XapiPowerState.HALTED), _facts("x2")], events=5),
    ]
    results: list[object] = []
    try:
        threads = [threading.Thread(target=repository.apply_batch, args=(Batch("h0", 1, "h0-t", events=1),))]
        threads[0].start()
        assert first_write_started.wait(10)

        def write(batch: Batch) -> None:
            results.append(repository.apply_batch(batch))

        def queued_up_to(count: int) -> Callable[[], bool]:
            return lambda: repository._batch_writes.queued == count

        for position, batch in enumerate(queued, start=1):  # one by one, so the queue holds them in this order
            thread = threading.Thread(target=write, args=(batch,))
            thread.start()
            threads.append(thread)
            wait_until(queued_up_to(position), timeout=10)
        release_first_write.set()
        for thread in threads:
            thread.join(10)
        assert len(transactions) == 2 and len(results) == 3  # h0 alone, then the three together

        h1, h2 = repository.find_pool("h1"), repository.find_pool("h2")
        assert h1 is not None and h2 is not None
        assert (h1.status.events_applied, h2.status.events_applied) == (7, 1)
        h1_config, h2_config = repository.pool_config("h1"), repository.pool_config("h2")
        assert h1_config is not None and h1_config.event_token == "h1-t2"
        assert h2_config is not None and h2_config.event_token == "h2-t1"
        x1 = repository.get_vm(uuid="x1")
        assert x1 is not None and x1.facts.xapi_power_state == XapiPowerState.HALTED

        page = repository.read_changes(start, kinds=("vm",), cluster_id="", limit=100)
        changes = [sync_service_pb2.Change.FromString(payload) for payload in page.payloads]
        assert [change.revision for change in changes] == list(range(start + 1, start + 5))
        assert [(change.vm.uuid, change.type) for change in changes] == [
            ("x1", sync_service_pb2.CHANGE_TYPE_ADDED),
            ("x1", sync_service_pb2.CHANGE_TYPE_MODIFIED),
            ("x2", sync_service_pb2.CHANGE_TYPE_ADDED),
            ("y1", sync_service_pb2.CHANGE_TYPE_ADDED),
        ]
        assert repository.current_revision() == start + 4
    finally:
        release_first_write.set()
        engine.dispose()


def test_compaction_deletes_in_bounded_steps_and_the_removed_rows_with_the_last(repository: Repository) -> None:
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", removed_vm_uuids=["b"]))
    for round_ in range(10):
        repository.apply_batch(Batch("c1", 1, f"t{round_ + 3}", vms=[_facts("a", order=round_ + 1)]))
    last = repository.current_revision()
    start = repository.compacted_through()

    def revisions() -> list[int]:
        payloads = repository.read_changes(0, kinds=(), cluster_id="", limit=1000).payloads
        return [sync_service_pb2.Change.FromString(payload).revision for payload in payloads]

    def vm_rows(uuid: str) -> int:
        with repository.engine.connect() as connection:
            return int(
                connection.execute(text("SELECT COUNT(*) FROM sync_vms WHERE uuid = :u"), {"u": uuid}).scalar_one()
            )

    assert revisions()[0] <= start + 1 and revisions()[-1] == last
    steps: list[Compaction] = []
    while not steps or not steps[-1].finished:
        steps.append(repository.compact(keep_changes=3, keep_seconds=0, max_revisions=2))
        through = steps[-1].compacted_through
        assert repository.compacted_through() == through
        assert revisions() == list(range(through + 1, last + 1))  # exactly the changes above it are left
        assert vm_rows("b") == (0 if steps[-1].finished else 1)  # the removed row goes with the last step
        assert len(steps) < 100
    throughs = [start] + [step.compacted_through for step in steps]
    assert throughs[-1] == last - 3 and len(steps) >= 3
    assert all(0 < later - earlier <= 2 for earlier, later in itertools.pairwise(throughs))
    assert vm_rows("a") == 1
    assert repository.compact(keep_changes=3, keep_seconds=0) == Compaction(last - 3, finished=True)  # nothing due
    with pytest.raises(ValueError, match="max_revisions"):
        repository.compact(keep_changes=3, keep_seconds=0, max_revisions=0)


def test_age_retention_deletes_every_old_change_in_bounded_steps(repository: Repository) -> None:
    """Changes older than keep_seconds go, max_revisions a step, until the first recent one; each step looks for
    old changes only within its own revisions, and a step whose every change is old is not the last."""
    now = [dt.datetime(2026, 1, 1)]
    repository = Repository(repository.engine, clock=lambda: now[0])
    _register(repository, "c1")
    for round_ in range(7):
        repository.apply_batch(Batch("c1", 1, f"t{round_}", vms=[_facts("a", order=round_)]))
    last_old = repository.current_revision()
    now[0] += dt.timedelta(hours=1)
    for round_ in range(3):
        repository.apply_batch(Batch("c1", 1, f"u{round_}", vms=[_facts("a", order=100 + round_)]))
    last = repository.current_revision()
    start = repository.compacted_through()
    now[0] += dt.timedelta(minutes=30)  # the first changes are 90 minutes old, the later ones 30

    steps: list[Compaction] = []
    while not steps or not steps[-1].finished:
        steps.append(repository.compact(keep_changes=0, keep_seconds=3600, max_revisions=2))
        assert len(steps) < 100
    throughs = [start] + [step.compacted_through for step in steps]
    assert throughs[-1] == last_old
    assert all(0 <= later - earlier <= 2 for earlier, later in itertools.pairwise(throughs))
    assert len(steps) >= (last_old - start) // 2
    payloads = repository.read_changes(0, kinds=(), cluster_id="", limit=1000).payloads
    assert [sync_service_pb2.Change.FromString(payload).revision for payload in payloads] == list(
        range(last_old + 1, last + 1)
    )
    assert repository.compact(keep_changes=0, keep_seconds=3600) == Compaction(last_old, finished=True)


def _add_changes(repository: Repository, count: int, cluster_ids: Sequence[str] = ("c1",)) -> None:
    """`count` recent one-byte changes, the clusters taking turns, written straight into the change log."""
    first = repository.current_revision() + 1
    recent = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = [
        {"revision": revision, "cluster_id": cluster_ids[revision % len(cluster_ids)], "commit_time": recent}
        for revision in range(first, first + count)
    ]
    with repository.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sync_changes (revision, kind, change_type, cluster_id, object_key, commit_time, "
                "payload) VALUES (:revision, 'vm', 'MODIFIED', :cluster_id, 'a', :commit_time, X'00')"
            ),
            rows,
        )
        connection.execute(
            text("UPDATE sync_counters SET value = :last WHERE name = 'revision'"), {"last": first + count - 1}
        )


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_compaction_step_reads_no_more_of_a_longer_change_log(repository: Repository) -> None:
    """A step (of 1,000 changes) with nothing old enough to delete costs as much beside 40,000 retained changes as
    beside 2,000: without statistics, SQLite once answered the step's question (the newest change old enough to
    go) by walking the whole log under the write lock."""
    instructions = SqliteInstructions(repository.engine)

    def step() -> None:
        assert repository.compact(keep_changes=0, keep_seconds=3600, max_revisions=1_000).finished

    _add_changes(repository, 2_000)
    short_log = instructions.of(step)
    _add_changes(repository, 38_000)
    long_log = instructions.of(step)
    assert long_log < 2 * short_log + 1_000, (short_log, long_log)


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_one_clusters_next_changes_are_read_without_reading_its_older_ones(repository: Repository) -> None:
    """A WatchChanges stream of one cluster reads its next changes as a range in revision order: the read costs as
    much beside 40,000 of the cluster's retained changes as beside 2,000 (SQLite once read and sorted them all)."""
    instructions = SqliteInstructions(repository.engine)
    pages: list[ChangeRead] = []

    def next_changes() -> None:
        pages.append(repository.read_changes(repository.current_revision() - 20, kinds=(), cluster_id="c1", limit=5))

    _add_changes(repository, 2_000, cluster_ids=("c1", "c2"))
    short_log = instructions.of(next_changes)
    _add_changes(repository, 78_000, cluster_ids=("c1", "c2"))
    long_log = instructions.of(next_changes)
    assert long_log < 2 * short_log + 1_000, (short_log, long_log)
    assert all(len(page.payloads) == 5 for page in pages)


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_retention_answers_out_of_range(db_url: str, make_sync: Any) -> None:
    sync: RunningSyncService = make_sync(db_url)
    repository = sync.app.repository
    _register(repository, "c1")
    for round_ in range(10):
        repository.apply_batch(Batch("c1", 1, f"t{round_}", vms=[_facts("a", order=round_)]))
    last = repository.current_revision()
    assert repository.compact(keep_changes=3, keep_seconds=0) == Compaction(compacted_through=last - 3, finished=True)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(sync.stub.WatchChanges(sync_service_pb2.WatchChangesRequest(since_revision=1), timeout=5)))
    assert isinstance(info.value, grpc.Call) and info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    # From the oldest retained revision on, everything retained is sent; 0 means "every retained change".
    for since in (last - 3, 0):
        stream = sync.stub.WatchChanges(sync_service_pb2.WatchChangesRequest(since_revision=since), timeout=5)
        revisions = []
        for item in stream:
            if item.HasField("bookmark"):
                assert item.bookmark.revision == last
                break
            revisions.append(item.change.revision)
        stream.cancel()  # type: ignore[no-untyped-call]
        assert revisions == [last - 2, last - 1, last]


def _reltuples(repository: Repository, table: str) -> float:
    with repository.engine.connect() as connection:
        query = text("SELECT reltuples FROM pg_class WHERE relname = :table")
        return float(connection.execute(query, {"table": table}).scalar_one())


def test_a_large_full_list_refreshes_the_planner_statistics_on_postgresql(
    repository: Repository, db_backend: str
) -> None:
    """Until a table filled from empty is analysed, PostgreSQL plans for an empty table (and read existing rows
    among a batch's uuids by filtering the whole pool). A large full list is followed by an ANALYZE."""
    if db_backend != "postgresql":
        pytest.skip("PostgreSQL's planner statistics; the other databases keep their own up to date")
    _register(repository, "small")
    _register(repository, "large")
    small = [_facts(f"s{n}") for n in range(ANALYZE_AFTER_FULL_LIST_OF - 1)]
    repository.apply_batch(Batch("small", 1, "t1", pool=_pool_facts(), vms=small, full=True))
    assert _reltuples(repository, "sync_vms") <= 0  # never analysed yet (-1, or 0 before PostgreSQL 14)
    large = [_facts(f"l{n}") for n in range(ANALYZE_AFTER_FULL_LIST_OF)]
    repository.apply_batch(Batch("large", 1, "t1", pool=_pool_facts(), vms=large, full=True))
    assert _reltuples(repository, "sync_vms") == len(small) + len(large)


def _vm_reads(repository: Repository) -> tuple[list[str], Any]:
    """Which VM row reads a repository sends: 'versions' (id, revision, ref only) or 'whole'."""
    reads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT") and "FROM sync_vms" in statement:
            reads.append("whole" if "power_state" in statement else "versions")

    event.listen(repository.engine, "before_cursor_execute", record)
    return reads, lambda: event.remove(repository.engine, "before_cursor_execute", record)


@pytest.fixture
def mirror_engine(db_url: str) -> Any:
    """An engine on a migrated database, for tests that run two repositories (replicas) side by side."""
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    engine = create_engine_for(db_url, pool_size=4)
    yield engine
    engine.dispose()


def _power_of(repository: Repository, uuid: str) -> XapiPowerState | None:
    vm = repository.get_vm(uuid=uuid)
    return vm.facts.xapi_power_state if vm is not None and not vm.removed else None


def test_an_event_batch_of_rows_this_replica_wrote_last_reads_no_vm_row(mirror_engine: Any) -> None:
    repository = Repository(mirror_engine)  # the default keeps a cache on every database
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts(u) for u in "abcd"], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", vms=[_facts(u, XapiPowerState.HALTED) for u in "abcd"]))
    reads, stop = _vm_reads(repository)
    try:
        # The pool's rows were last written by this replica's last commit: the cached rows are the database's.
        result = repository.apply_batch(Batch("c1", 1, "t3", vms=[_facts(u) for u in "abc"]))
    finally:
        stop()
    assert result.revisions == 3 and reads == []
    vm_a = repository.get_vm(uuid="a")
    assert vm_a is not None and vm_a.facts.xapi_power_state is XapiPowerState.RUNNING
    assert vm_a.power_state_update_count == 1  # a new state: counted from one again
    # A VM the cache does not hold: the rows are checked by version, and the new one inserted.
    reads, stop = _vm_reads(repository)
    try:
        repository.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a", XapiPowerState.HALTED), _facts("e")]))
    finally:
        stop()
    assert reads == ["versions"] and _power_of(repository, "e") is XapiPowerState.RUNNING


def test_after_another_replica_wrote_the_pool_its_cached_rows_are_read_again(mirror_engine: Any) -> None:
    """Another writer (a replica that held the pool's lease meanwhile) changed a row this one cached: its commit
    stamped the pool, so this replica drops the pool's cached rows and diffs against the database."""
    ours, theirs = Repository(mirror_engine, vm_row_cache_size=1000), Repository(mirror_engine, vm_row_cache_size=1000)
    _register(ours, "c1")
    ours.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True))
    ours.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a", XapiPowerState.HALTED), _facts("b")]))
    theirs.apply_batch(Batch("c1", 1, "t3", vms=[_facts("a"), _facts("b", XapiPowerState.HALTED)]))
    reads, stop = _vm_reads(ours)
    try:
        # Halted again: a change against the database (running), none against this replica's last write.
        result = ours.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a", XapiPowerState.HALTED)]))
    finally:
        stop()
    assert result.revisions == 1 and reads == ["whole"]
    assert _power_of(ours, "a") is XapiPowerState.HALTED
    # b was not in that batch, and its cached row went with the rest of the pool's: running is a change.
    result = ours.apply_batch(Batch("c1", 1, "t5", vms=[_facts("a", XapiPowerState.HALTED), _facts("b")]))
    assert result.revisions == 1 and _power_of(ours, "b") is XapiPowerState.RUNNING
    # And the ref alone, written without a new revision, stamps the pool too.
    theirs.apply_batch(Batch("c1", 1, "t6", vms=[_facts("b")], vm_refs={"b": "OpaqueRef:b2"}))
    ours.apply_batch(Batch("c1", 1, "t7", vms=[_facts("b")], vm_refs={"b": "OpaqueRef:b2"}))
    mirror = dict((vm.uuid, ref) for ref, vm in ours.load_mirror("c1")[0])
    assert mirror["b"] == "OpaqueRef:b2"


def test_a_commit_whose_outcome_this_replica_did_not_learn_makes_it_read_the_pool_again(
    mirror_engine: Any,
) -> None:
    """The database committed the batch, but the replica saw an error (a connection lost at commit), so its cache
    still holds the rows as before: the stamp the commit wrote shows the difference."""
    repository = Repository(mirror_engine, vm_row_cache_size=1000)
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a"), _facts("b")]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repository._vm_rows, "put_committed", lambda *_args: None)
        repository.apply_batch(Batch("c1", 1, "t3", vms=[_facts("a", XapiPowerState.HALTED)]))
    cached = repository._vm_rows.get("c1", "a")
    assert cached is not None and cached.vm.facts.xapi_power_state is XapiPowerState.RUNNING
    # Running again: no change against the stale cached row, a change against the database (halted).
    result = repository.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a"), _facts("b")]))
    assert result.revisions == 1 and _power_of(repository, "a") is XapiPowerState.RUNNING


def test_a_takeover_by_a_replica_that_does_not_stamp_the_pool_still_drops_the_cached_rows(
    mirror_engine: Any,
) -> None:
    """During an upgrade, a replica of an earlier version may write the pool's rows without stamping it; it held
    the pool's lease to do so, and this replica's batches now carry a later epoch."""
    ours, theirs = Repository(mirror_engine, vm_row_cache_size=1000), Repository(mirror_engine, vm_row_cache_size=1000)
    _register(ours, "c1")
    with mirror_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sync_pool_leases (cluster_id, owner, epoch, expire_time, update_time) "
                "VALUES ('c1', 'ours', 1, 0, 0)"
            )
        )

    def lease(holder: str, epoch: int) -> dict[str, Any]:
        with mirror_engine.begin() as connection:
            connection.execute(
                text("UPDATE sync_pool_leases SET owner = :holder, epoch = :epoch WHERE cluster_id = 'c1'"),
                {"holder": holder, "epoch": epoch},
            )
        return {"lease_holder": holder, "lease_epoch": epoch}

    ours.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a")], full=True, **lease("ours", 1)))
    ours.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a", XapiPowerState.HALTED)], **lease("ours", 1)))
    with mirror_engine.connect() as connection:
        our_stamp = connection.execute(text("SELECT rows_stamp FROM sync_pools WHERE cluster_id = 'c1'")).scalar()
    theirs.apply_batch(Batch("c1", 1, "t3", vms=[_facts("a")], **lease("theirs", 2)))
    with mirror_engine.begin() as connection:  # as if that replica had not stamped
        connection.execute(text("UPDATE sync_pools SET rows_stamp = :stamp"), {"stamp": our_stamp})
    result = ours.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a", XapiPowerState.HALTED)], **lease("ours", 3)))
    assert result.revisions == 1 and _power_of(ours, "a") is XapiPowerState.HALTED


def test_a_removed_row_that_compaction_deleted_is_not_taken_from_the_cache(mirror_engine: Any) -> None:
    """Compaction deletes removed rows without stamping the pool: a VM that comes back gets a new row."""
    repository = Repository(mirror_engine, vm_row_cache_size=1000)
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a"), _facts("b")], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", vms=[_facts("b")], removed_vm_uuids=["a"]))
    repository.apply_batch(Batch("c1", 1, "t3", vms=[_facts("b", XapiPowerState.HALTED)]))
    cached = repository._vm_rows.get("c1", "a")
    assert cached is not None and cached.vm.removed
    while not repository.compact(keep_changes=1, keep_seconds=0).finished:
        pass
    assert repository.get_vm(uuid="a") is None  # its row is gone
    repository.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a"), _facts("b")]))
    assert _power_of(repository, "a") is XapiPowerState.RUNNING


def test_a_pool_registered_again_does_not_take_the_earlier_registrations_cached_rows(mirror_engine: Any) -> None:
    repository = Repository(mirror_engine, vm_row_cache_size=1000)
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a")], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a", XapiPowerState.HALTED)]))
    assert repository.deregister_pool("c1", request_id="")
    _register(repository, "c1")
    # An event batch before any full list (the rows are gone with the first registration): a new row.
    result = repository.apply_batch(Batch("c1", 1, "t3", vms=[_facts("a")]))
    assert result.revisions == 1 and _power_of(repository, "a") is XapiPowerState.RUNNING


def _write_group_rolled_back_after(repository: Repository, written: Batch) -> None:
    """Writes `written` (of pool c1) in one group with a batch of pool c2 whose write fails, so the group's
    transaction rolls back after `written` was written in it."""
    write_batch = Repository._write_batch

    def fail_for_c2(self: Repository, session: Any, batch: Batch, *args: Any) -> Any:
        if batch.cluster_id == "c2":
            raise RuntimeError("the disk is full")
        return write_batch(self, session, batch, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Repository, "_write_batch", fail_for_c2)
        with pytest.raises(RuntimeError, match="disk"):  # c1's batch is written first, then c2's fails
            repository._write_together([written, Batch("c2", 1, written.token)])


def test_rows_of_a_rolled_back_transaction_never_reach_the_cache(mirror_engine: Any) -> None:
    """A group that fails after one of its batches was written rolls back, and its revisions are handed out
    again: the rows it staged must not stand for the database's rows, even at an equal revision."""
    ours, theirs = Repository(mirror_engine, vm_row_cache_size=1000), Repository(mirror_engine, vm_row_cache_size=1000)
    _register(ours, "c1")
    _register(ours, "c2")
    ours.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), vms=[_facts("a")], full=True))
    ours.apply_batch(Batch("c1", 1, "t2", vms=[_facts("a", XapiPowerState.HALTED)]))
    cached = ours._vm_rows.get("c1", "a")
    assert cached is not None and cached.vm.facts.xapi_power_state is XapiPowerState.HALTED
    _write_group_rolled_back_after(ours, Batch("c1", 1, "t3", vms=[_facts("a", XapiPowerState.RUNNING)]))
    assert ours._vm_rows.get("c1", "a") is cached
    # Another writer takes the revision the rolled-back write had, for other content; then this replica
    # sees the VM running: a change against the database.
    theirs.apply_batch(Batch("c1", 1, "t4", vms=[_facts("a", XapiPowerState.PAUSED)]))
    result = ours.apply_batch(Batch("c1", 1, "t5", vms=[_facts("a", XapiPowerState.RUNNING)]))
    assert result.revisions == 1
    vm_a = ours.get_vm(uuid="a")
    assert vm_a is not None and vm_a.facts.xapi_power_state is XapiPowerState.RUNNING


def _host(uuid: str, memory_free: int = 1000) -> HostFacts:
    return HostFacts(
        uuid, f"host-{uuid}", f"10.0.0.{len(uuid)}", True, True, uuid == "h1", 4096, memory_free, VersionFacts(2, 15)
    )


def _stored_host_row(repository: Repository, uuid: str) -> tuple[int, bool] | None:
    with repository.engine.connect() as connection:
        row = connection.execute(
            text("SELECT memory_free, removed FROM sync_hosts WHERE uuid = :uuid"), {"uuid": uuid}
        ).one_or_none()
    return None if row is None else (int(row[0]), bool(row[1]))


def _apply_counting_host_reads(repository: Repository, batch: Batch) -> tuple[int, int]:
    """(revisions, host-row reads) of one batch."""
    result, reads = _apply_recording(
        repository, batch, lambda statement: statement.startswith("SELECT") and "FROM sync_hosts" in statement
    )
    return result.revisions, len(reads)


def test_an_event_batch_of_hosts_this_replica_wrote_last_reads_no_host_row(mirror_engine: Any) -> None:
    repository = Repository(mirror_engine)
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), hosts=[_host("h1"), _host("h2")], full=True))
    # The full list inserted the rows, their ids unknown: the first batch reads them.
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t2", hosts=[_host("h1", 950)])) == (1, 1)

    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t2", hosts=[_host("h1", 900)])) == (1, 0)
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t3", hosts=[_host("h1", 800), _host("h2")])) == (1, 0)
    assert _stored_host_row(repository, "h1") == (800, False) and _stored_host_row(repository, "h2") == (1000, False)
    # A new host: its row's id is not known once inserted, so the next batch naming it reads the pool's hosts once.
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t4", hosts=[_host("h3")])) == (1, 1)
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t5", hosts=[_host("h3", 700)])) == (1, 1)
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t6", hosts=[_host("h3", 600)])) == (1, 0)
    assert _stored_host_row(repository, "h3") == (600, False)
    # A host removed: its row is kept as removed, and a batch naming it reads the rows again.
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t7", removed_host_uuids=["h2"])) == (1, 0)
    assert _stored_host_row(repository, "h2") == (1000, True)
    assert _apply_counting_host_reads(repository, Batch("c1", 1, "t8", hosts=[_host("h2")])) == (1, 1)
    assert _stored_host_row(repository, "h2") == (1000, False)


def test_after_another_replica_wrote_a_host_its_cached_host_rows_are_read_again(mirror_engine: Any) -> None:
    ours, theirs = Repository(mirror_engine), Repository(mirror_engine)
    _register(ours, "c1")
    ours.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), hosts=[_host("h1"), _host("h2")], full=True))
    ours.apply_batch(Batch("c1", 1, "t2", hosts=[_host("h1", 900)]))
    theirs.apply_batch(Batch("c1", 1, "t3", hosts=[_host("h1", 500), _host("h2", 400)]))

    # The same memory as this replica last wrote: a change against the database.
    assert _apply_counting_host_reads(ours, Batch("c1", 1, "t4", hosts=[_host("h1", 900)])) == (1, 1)
    assert _stored_host_row(ours, "h1") == (900, False)
    # h2 was not in that batch; the pool's hosts were read whole, so its row is the database's.
    assert _apply_counting_host_reads(ours, Batch("c1", 1, "t5", hosts=[_host("h2", 1000)])) == (1, 0)
    assert _stored_host_row(ours, "h2") == (1000, False)


def test_a_removed_host_row_that_compaction_deleted_is_not_taken_from_the_cache(mirror_engine: Any) -> None:
    repository = Repository(mirror_engine)
    _register(repository, "c1")
    repository.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), hosts=[_host("h1"), _host("h2")], full=True))
    repository.apply_batch(Batch("c1", 1, "t2", hosts=[_host("h1", 900)], removed_host_uuids=["h2"]))
    repository.apply_batch(Batch("c1", 1, "t3", hosts=[_host("h1", 800)]))
    cached = repository._host_rows.get("c1", "h2")
    assert cached is not None and cached.host.removed
    while not repository.compact(keep_changes=1, keep_seconds=0).finished:
        pass
    assert _stored_host_row(repository, "h2") is None  # its row is gone

    repository.apply_batch(Batch("c1", 1, "t4", hosts=[_host("h2", 300)]))

    assert _stored_host_row(repository, "h2") == (300, False)


def test_host_rows_of_a_rolled_back_transaction_never_reach_the_cache(mirror_engine: Any) -> None:
    ours, theirs = Repository(mirror_engine), Repository(mirror_engine)
    _register(ours, "c1")
    _register(ours, "c2")
    ours.apply_batch(Batch("c1", 1, "t1", pool=_pool_facts(), hosts=[_host("h1")], full=True))
    ours.apply_batch(Batch("c1", 1, "t2", hosts=[_host("h1", 900)]))
    cached = ours._host_rows.get("c1", "h1")
    assert cached is not None and cached.host.facts.memory_free == 900
    _write_group_rolled_back_after(ours, Batch("c1", 1, "t3", hosts=[_host("h1", 100)]))

    assert ours._host_rows.get("c1", "h1") is cached
    theirs.apply_batch(Batch("c1", 1, "t4", hosts=[_host("h1", 200)]))
    assert ours.apply_batch(Batch("c1", 1, "t5", hosts=[_host("h1", 100)])).revisions == 1
    assert _stored_host_row(ours, "h1") == (100, False)
