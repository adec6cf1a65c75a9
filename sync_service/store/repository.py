"""The mirror's storage: batched apply with change log and ordered revisions, the pool registry, and queries.

Revisions come from one counter row, incremented with `UPDATE ... SET value = value + n` at the end of each
writing transaction: the row lock is held until commit, so transactions commit in revision order and no reader
can ever see revision N+1 before N (on every backend, with several threads or replicas writing).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Generic, NamedTuple, TypeVar, cast

import orjson
from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    LargeBinary,
    Select,
    Table,
    TypeDecorator,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert, Update

from sync_service import converters
from sync_service.domain import (
    HaFacts,
    HostFacts,
    MirrorHost,
    MirrorVm,
    PoolFacts,
    PoolInfo,
    PowerState,
    SyncStatusInfo,
    VersionFacts,
    VmFacts,
    XapiPowerState,
    observe_vm,
    utcnow,
    vm_gone,
)
from sync_service.leases import check_fence, lease_held
from sync_service.store.models import (
    COMPACTED_THROUGH,
    REVISION_COUNTER,
    ChangeRow,
    CounterRow,
    HostRow,
    PoolRow,
    RequestRow,
    VmRow,
)
from sync_service.store.row_cache import RowCache
from xsha_common.db import backend_of, is_transient_db_error, make_sessionmaker, write_transaction
from xsha_common.driver_sql import DriverSql, InListQuery
from xsha_common.group_commit import GroupCommit

log = logging.getLogger(__name__)

_IN_CHUNK: Final = 500
# Changes deleted per compaction transaction: about 0.1 s of MariaDB's time (20-120 ms measured) and 10-90 ms of
# PostgreSQL's, for changes of a VM's size.
COMPACT_CHUNK: Final = 10_000

# VM rows kept for the next batches (see row_cache), about 430 bytes a row beside the facts the watchers hold anyway.
# While a pool's rows were last written by this replica, a batch of rows it holds reads none of them: in process, on
# a 20,000-VM pool, an event batch of 200 changes took 19-29 % less time on every database (interleaved with a
# repository without the cache). Checking each row's version instead, as before the pools carried a stamp, saved
# 9-12 % on MariaDB and, on SQLite, cost more than the reads it saved.
VM_ROW_CACHE_SIZE: Final = 100_000
# Host rows, kept the same way: a VM's start or stop changes its host's record in XAPI, so most event batches carry
# hosts, and reading the pool's host rows (32 in figure 1) was 8 % of the committing thread on MariaDB at 5,000
# changes/s.
HOST_ROW_CACHE_SIZE: Final = 20_000

T = TypeVar("T")


class PoolNotFoundError(LookupError):
    pass


class StaleWatcherError(RuntimeError):
    """The pool was deregistered or reconfigured since the watcher started: its batch is not written."""


class LeaseLostError(StaleWatcherError):
    """The watcher's pool lease was taken over by another replica (its epoch is stale): its batch is not written."""


class ChangeNotifier:
    """Wakes in-process watch streams when a transaction commits new revisions (other replicas' commits are
    picked up by the streams' short database poll)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.latest = 0

    def notify(self, revision: int) -> None:
        with self._condition:
            if revision > self.latest:
                self.latest = revision
            self._condition.notify_all()

    def wait_beyond(self, revision: int, timeout: float) -> bool:
        """Wait until a revision above `revision` is known to be committed, or `timeout`; True if it is."""
        with self._condition:
            return self._condition.wait_for(lambda: self.latest > revision, timeout=timeout)


@dataclass(frozen=True)
class PoolConfig:
    """What a watcher needs to connect: registration, encrypted credentials, watch state."""

    cluster_id: str
    master_url: str
    credentials_encrypted: bytes | None
    tls_ca_bundle_pem: str
    tls_fingerprint: str
    tls_insecure: bool
    config_generation: int
    event_token: str
    host_addresses: list[str]
    watch_state: dict[str, Any]
    pool_uuid: str


@dataclass
class Batch:
    """One event batch (or full list) as the watcher hands it to the repository."""

    cluster_id: str
    config_generation: int
    token: str
    pool: PoolFacts | None = None
    vms: list[VmFacts] = field(default_factory=list)
    removed_vm_uuids: list[str] = field(default_factory=list)
    vm_refs: dict[str, str] = field(default_factory=dict)  # uuid -> XAPI ref
    hosts: list[HostFacts] = field(default_factory=list)
    removed_host_uuids: list[str] = field(default_factory=list)
    # A full list: every VM and host not in `vms` / `hosts` is gone from XAPI.
    full: bool = False
    watch_state: dict[str, Any] | None = None
    host_addresses: list[str] | None = None
    events: int = 0
    lag_ms: int = 0
    # The watcher's pool lease: checked (holder and epoch, row-locked) before anything is written.
    lease_holder: str = ""
    lease_epoch: int | None = None


@dataclass(frozen=True)
class BatchResult:
    revisions: int
    last_revision: int


@dataclass(frozen=True)
class Compaction:
    """One compaction step's outcome: the compacted-through revision, and whether the change log is now within
    the retention (else more steps are due)."""

    compacted_through: int
    finished: bool


@dataclass(frozen=True)
class VmFilter:
    cluster_id: str = ""
    resident_host_uuid: str = ""
    xapi_power_states: tuple[XapiPowerState, ...] = ()
    power_states: tuple[PowerState, ...] = ()
    ha_restart_priorities: tuple[str, ...] | None = None
    name_prefix: str = ""
    include_removed: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    last_key: int | None  # id of the last item when more may follow
    revision: int


@dataclass(frozen=True)
class ChangeRead:
    payloads: list[bytes]
    position: int  # every change up to here (matching or not) has been read
    compacted_through: int


# ------------------------------------------------------------------------------------------ row mapping


# Enum lookups by value through a dict: calling the Enum class was a visible share of the per-VM cost.
_XAPI_POWER_STATES: Final = {state.value: state for state in XapiPowerState}
_POWER_STATES: Final = {state.value: state for state in PowerState}


@dataclass(frozen=True, slots=True)
class _StoredVm:
    row_id: int
    xapi_ref: str
    vm: MirrorVm

    @property
    def version(self) -> tuple[int, int, str]:
        """Id, revision and ref: a database row with the same version has the same content (see row_cache), since
        every write of its content takes a new revision and only its ref is written without one."""
        return self.row_id, self.vm.revision, self.xapi_ref


def _stored_vm(row: Sequence[Any]) -> _StoredVm:
    """A VM row read with _STORED_VM_COLUMNS, unpacked by position (attribute access on each row cost more)."""
    (
        row_id,
        xapi_ref,
        cluster_id,
        pool_uuid,
        uuid,
        name_label,
        xapi_power_state,
        resident_host_uuid,
        ha_restart_priority,
        ha_order,
        start_delay,
        ha_always_run,
        memory_static_max,
        power_state,
        power_state_update_time,
        power_state_update_count,
        removed,
        revision,
        update_time,
    ) = row
    facts = VmFacts(
        uuid,
        name_label,
        _XAPI_POWER_STATES.get(xapi_power_state) or XapiPowerState(xapi_power_state),
        resident_host_uuid,
        ha_restart_priority,
        ha_order,
        start_delay,
        ha_always_run,
        memory_static_max,
    )
    vm = MirrorVm(
        cluster_id,
        pool_uuid,
        facts,
        _POWER_STATES.get(power_state) or PowerState(power_state),
        power_state_update_time,
        power_state_update_count,
        removed,
        revision,
        update_time,
    )
    return _StoredVm(row_id, xapi_ref, vm)


def _stored_vms_by_uuid(rows: Iterable[Sequence[Any]]) -> dict[str, _StoredVm]:
    return {stored.vm.uuid: stored for stored in map(_stored_vm, rows)}


def _vm_from_row(row: VmRow) -> MirrorVm:
    """An ORM VM row as a MirrorVm: the same mapping as the batch write's tuples (_stored_vm)."""
    return _stored_vm([getattr(row, column.name) for column in _STORED_VM_COLUMNS]).vm


def _vm_values(vm: MirrorVm) -> dict[str, Any]:
    facts = vm.facts
    return {
        "cluster_id": vm.cluster_id,
        "uuid": facts.uuid,
        "pool_uuid": vm.pool_uuid,
        "name_label": facts.name,
        "xapi_power_state": facts.xapi_power_state.value,
        "power_state": vm.power_state.value,
        "resident_host_uuid": facts.resident_host_uuid,
        "ha_restart_priority": facts.ha_restart_priority,
        "ha_order": facts.order,
        "start_delay": facts.start_delay,
        "ha_always_run": facts.ha_always_run,
        "memory_static_max": facts.memory_static_max,
        "power_state_update_time": vm.power_state_update_time,
        "power_state_update_count": vm.power_state_update_count,
        "removed": vm.removed,
        "revision": vm.revision,
        "update_time": vm.update_time,
    }


def _stored_vm_values(stored: _StoredVm) -> dict[str, Any]:
    """A stored VM row's column values, as `_vm_values` gives them, with its ref."""
    values = _vm_values(stored.vm)
    values["xapi_ref"] = stored.xapi_ref
    return values


def _version_from_row(row: HostRow | PoolRow) -> VersionFacts:
    return VersionFacts(
        api_version_major=row.api_version_major,
        api_version_minor=row.api_version_minor,
        product_brand=row.product_brand,
        product_version=row.product_version,
        platform_version=row.platform_version,
        build_number=row.build_number,
    )


def _version_values(version: VersionFacts) -> dict[str, Any]:
    return {
        "api_version_major": version.api_version_major,
        "api_version_minor": version.api_version_minor,
        "product_brand": version.product_brand,
        "product_version": version.product_version,
        "platform_version": version.platform_version,
        "build_number": version.build_number,
    }


def _host_from_row(row: HostRow) -> MirrorHost:
    """An ORM host row (or any row with its attributes) as a MirrorHost."""
    return _stored_host([getattr(row, column.name) for column in _STORED_HOST_COLUMNS]).host


class _StoredHost(NamedTuple):
    row_id: int
    host: MirrorHost


def _stored_host(row: Sequence[Any]) -> _StoredHost:
    """A host row read with _STORED_HOST_COLUMNS, unpacked by position (as _stored_vm)."""
    (
        row_id,
        cluster_id,
        pool_uuid,
        uuid,
        name,
        address,
        live,
        enabled,
        is_master,
        memory_total,
        memory_free,
        api_version_major,
        api_version_minor,
        product_brand,
        product_version,
        platform_version,
        build_number,
        removed,
        revision,
        update_time,
    ) = row
    version = VersionFacts(
        api_version_major, api_version_minor, product_brand, product_version, platform_version, build_number
    )
    facts = HostFacts(uuid, name, address, live, enabled, is_master, memory_total, memory_free, version)
    return _StoredHost(row_id, MirrorHost(cluster_id, pool_uuid, facts, removed, revision, update_time))


def _host_values(host: MirrorHost) -> dict[str, Any]:
    facts = host.facts
    return {
        "cluster_id": host.cluster_id,
        "uuid": facts.uuid,
        "pool_uuid": host.pool_uuid,
        "name": facts.name,
        "address": facts.address,
        "live": facts.live,
        "enabled": facts.enabled,
        "is_master": facts.is_master,
        "memory_total": facts.memory_total,
        "memory_free": facts.memory_free,
        **_version_values(facts.version),
        "removed": host.removed,
        "revision": host.revision,
        "update_time": host.update_time,
    }


def pool_info_from_row(row: PoolRow) -> PoolInfo:
    return PoolInfo(
        cluster_id=row.cluster_id,
        master_url=row.master_url,
        tls_ca_bundle_pem=row.tls_ca_bundle_pem,
        tls_fingerprint=row.tls_fingerprint,
        tls_insecure=row.tls_insecure,
        has_credentials=row.credentials_encrypted is not None,
        pool_uuid=row.pool_uuid,
        name=row.name,
        version=_version_from_row(row),
        ha=HaFacts(
            ha_enabled=row.ha_enabled,
            ha_host_failures_to_tolerate=row.ha_host_failures_to_tolerate,
            ha_plan_exists_for=row.ha_plan_exists_for,
            ha_allow_overcommit=row.ha_allow_overcommit,
            ha_overcommitted=row.ha_overcommitted,
        ),
        master_host_uuid=row.master_host_uuid,
        status=SyncStatusInfo(
            state=row.sync_state,
            connected=row.connected,
            wire_format=row.wire_format,
            connected_url=row.connected_url,
            last_event_time=row.last_event_time,
            lag_ms=row.lag_ms,
            last_full_sync_time=row.last_full_sync_time,
            events_applied=row.events_applied,
            reconnects=row.reconnects,
            last_error=row.last_error,
            last_error_time=row.last_error_time,
            owner=row.owner,
        ),
        revision=row.revision,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _pool_fact_values(facts: PoolFacts) -> dict[str, Any]:
    return {
        "pool_uuid": facts.uuid,
        "name": facts.name,
        **_version_values(facts.version),
        "ha_enabled": facts.ha.ha_enabled,
        "ha_host_failures_to_tolerate": facts.ha.ha_host_failures_to_tolerate,
        "ha_plan_exists_for": facts.ha.ha_plan_exists_for,
        "ha_allow_overcommit": facts.ha.ha_allow_overcommit,
        "ha_overcommitted": facts.ha.ha_overcommitted,
        "master_host_uuid": facts.master_host_uuid,
    }


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_keys(rows: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    """`rows` grouped by their key sets: an executemany needs the same parameters in every row."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups.values()


class _PlainBytes(TypeDecorator[bytes]):
    """LargeBinary bound as the bytes it is (every driver takes bytes): SQLite's processor, which wraps each
    value in a memoryview, showed up in ingest profiles for the change-log payloads."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


_CHANGES_TABLE: Final = cast(Table, ChangeRow.__table__)
_POOLS: Final = cast(Table, PoolRow.__table__)
_VMS: Final = cast(Table, VmRow.__table__)
_HOSTS: Final = cast(Table, HostRow.__table__)
_COUNTERS: Final = cast(Table, CounterRow.__table__)
# The batch write's statements, built once (their rows carry the models' attribute names).
_POOL_OF: Final = select(_POOLS).where(_POOLS.c.cluster_id == bindparam("cluster_id"))
# The batch write reads VM rows as plain tuples in this order (see _stored_vm).
_STORED_VM_COLUMNS: Final = tuple(
    _VMS.c[name]
    for name in (
        "id",
        "xapi_ref",
        "cluster_id",
        "pool_uuid",
        "uuid",
        "name_label",
        "xapi_power_state",
        "resident_host_uuid",
        "ha_restart_priority",
        "ha_order",
        "start_delay",
        "ha_always_run",
        "memory_static_max",
        "power_state",
        "power_state_update_time",
        "power_state_update_count",
        "removed",
        "revision",
        "update_time",
    )
)
# A full list of at least this many VMs is followed, on PostgreSQL, by an ANALYZE of the mirror tables.
ANALYZE_AFTER_FULL_LIST_OF: Final = 1000
_VMS_OF_CLUSTER: Final = select(*_STORED_VM_COLUMNS).where(_VMS.c.cluster_id == bindparam("cluster_id"))
_VMS_BY_UUID: Final = _VMS_OF_CLUSTER.where(_VMS.c.uuid.in_(bindparam("uuids", expanding=True)))
# An event batch's few VM rows, read as driver SQL (a handful of compiled IN sizes). Longer lists keep the
# expanding IN above: padding a 250-uuid list to its power of two would double PyMySQL's escaping of it.
_FEW_UUIDS: Final = 16
_VMS_BY_FEW_UUIDS: Final = InListQuery(lambda uuids: _VMS_OF_CLUSTER.where(_VMS.c.uuid.in_(uuids)), "uuid")
# With a row cache, an event batch's VM rows are first read by their version only (see row_cache): a row whose
# version matches the cached one is taken from the cache, the rest are read whole by id.
_VM_VERSIONS_BY_UUID: Final = select(_VMS.c.uuid, _VMS.c.id, _VMS.c.revision, _VMS.c.xapi_ref).where(
    _VMS.c.cluster_id == bindparam("cluster_id"), _VMS.c.uuid.in_(bindparam("uuids", expanding=True))
)
_VMS_BY_ID: Final = select(*_STORED_VM_COLUMNS).where(_VMS.c.id.in_(bindparam("ids", expanding=True)))
# Host rows likewise (see _stored_host).
_STORED_HOST_COLUMNS: Final = tuple(
    _HOSTS.c[name]
    for name in (
        "id",
        "cluster_id",
        "pool_uuid",
        "uuid",
        "name",
        "address",
        "live",
        "enabled",
        "is_master",
        "memory_total",
        "memory_free",
        "api_version_major",
        "api_version_minor",
        "product_brand",
        "product_version",
        "platform_version",
        "build_number",
        "removed",
        "revision",
        "update_time",
    )
)
_HOSTS_OF_CLUSTER: Final = select(*_STORED_HOST_COLUMNS).where(_HOSTS.c.cluster_id == bindparam("cluster_id"))
_ADVANCE_REVISION: Final = (
    update(_COUNTERS)
    .where(_COUNTERS.c.name == REVISION_COUNTER)
    .values(value=_COUNTERS.c.value + bindparam("count", type_=BigInteger()))
)
_COUNTER_NOW: Final = select(_COUNTERS.c.value).where(_COUNTERS.c.name == bindparam("counter"))
# The advance and the new value in one round trip: RETURNING where the database has it for UPDATE (PostgreSQL,
# SQLite 3.35+); on MySQL and MariaDB, LAST_INSERT_ID(expr) puts the new value in the statement's OK packet, which
# the driver reports as its lastrowid. The counter's SELECT after the UPDATE was 3-5 % of the committing thread on
# MariaDB at 5,000-7,000 changes/s (py-spy).
_ADVANCE_REVISION_RETURNING: Final = _ADVANCE_REVISION.returning(_COUNTERS.c.value)
_ADVANCE_REVISION_REMEMBERED: Final = (
    update(_COUNTERS)
    .where(_COUNTERS.c.name == REVISION_COUNTER)
    .values(value=func.last_insert_id(_COUNTERS.c.value + bindparam("count", type_=BigInteger())))
)


@functools.cache
def _changes_after(by_kind: bool, by_cluster: bool) -> Select[int, bytes]:
    """Change-log rows above `after` up to `upper`, in revision order, at most `limit`; filtered by `kinds` and
    `cluster_id` when asked. Built once per filter shape: every watch stream runs it each time it wakes."""
    changes = _CHANGES_TABLE.c
    query = (
        select(changes.revision, changes.payload)
        .where(changes.revision > bindparam("after"), changes.revision <= bindparam("upper"))
        .order_by(changes.revision)
        .limit(bindparam("limit", type_=Integer()))
    )
    if by_kind:
        query = query.where(changes.kind.in_(bindparam("kinds", expanding=True)))
    if by_cluster:
        query = query.where(changes.cluster_id == bindparam("cluster_id"))
    return query


@functools.cache
def _pool_bookkeeping(columns: tuple[str, ...]) -> Update:
    """The pool row's per-batch update of `columns` (bound by name; events_applied is an increment), one
    statement per column set."""
    values: dict[str, Any] = {name: bindparam(name, type_=_POOLS.c[name].type) for name in columns}
    if "events_applied" in values:
        values["events_applied"] = _POOLS.c.events_applied + values["events_applied"]
    return update(_POOLS).where(_POOLS.c.id == bindparam("pool_id")).values(values)


# The columns that find a mirror row (with the row's id): the same in every update of that row.
_ROW_IDENTITY: Final = frozenset({"cluster_id", "uuid"})
_UNSET: Final[Any] = object()


@functools.cache
def _insert_rows(table: Table) -> Insert:
    """A mirror table's insert (executemany with the row's values as parameters)."""
    return insert(table)


# The change-log insert: Core executemany with the payload bound without processing.
_INSERT_CHANGES: Final = insert(_CHANGES_TABLE).values(payload=bindparam("payload", type_=_PlainBytes()))


# ------------------------------------------------------------------------------------------- repository

# Order of a batch's changes in the change log (stable within a kind).
_CHANGE_KIND_ORDER: Final = {"pool": 0, "host": 1, "vm": 2}


@dataclass
class _PendingChange:
    kind: str
    change_type: str
    cluster_id: str
    key: str
    obj: MirrorVm | MirrorHost | PoolInfo | None  # None: the pool row, rendered after its update


@dataclass
class _GroupWrites:
    """What a group's batches write together at the end of its transaction rather than batch by batch: the
    revision counter's advance beyond its first allocation, the change-log rows, each pool's bookkeeping and the
    mirror rows (the rows earlier, when a pool's later batch in the group is about to read them). With batches of a
    change or two from many pools, these were four of a batch's ten statements, and every statement gives the GIL
    away and waits to get it back."""

    next_revision: int = 0  # the next revision to hand out; 0 until this transaction has locked the counter row
    unsaved: int = 0  # revisions handed out beyond what the counter row says yet
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    bookkeeping: dict[int, dict[str, Any]] = field(default_factory=dict)  # pool row id -> the pool's update
    # Mirror row writes, by table, kind ("insert" or "update" by row id) and key set: written before a later batch
    # of one of `row_clusters` reads its rows, or at the end.
    row_writes: dict[tuple[Table, str, tuple[str, ...]], list[dict[str, Any]]] = field(default_factory=dict)
    row_clusters: set[str] = field(default_factory=set)
    # The pools' rows_stamp this transaction writes (see row_cache), and the tag each written pool's cached rows
    # get once it commits.
    stamp: int = field(default_factory=lambda: secrets.randbits(62) + 1)
    cache_tags: dict[str, Hashable] = field(default_factory=dict)

    def add_bookkeeping(self, pool_id: int, values: dict[str, Any]) -> None:
        """A pool's later batch in the same group overrides its earlier one's values, and its events add up."""
        earlier = self.bookkeeping.get(pool_id)
        if earlier is not None:
            values = {**earlier, **values, "events_applied": earlier["events_applied"] + values["events_applied"]}
        self.bookkeeping[pool_id] = values


class Repository:
    def __init__(
        self,
        engine: Engine,
        notifier: ChangeNotifier | None = None,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        on_write: Callable[[float], None] | None = None,
        vm_row_cache_size: int | None = None,
    ) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = make_sessionmaker(engine)
        self.notifier = notifier or ChangeNotifier()
        self.clock = clock
        self.backend = backend_of(engine)
        self._on_write = on_write
        self._batch_writes: GroupCommit[Batch, BatchResult] = GroupCommit(self._write_group)
        self._sql = DriverSql(engine.dialect)
        # The VM rows of the last batches, by pool and uuid (on MariaDB, reading the batch's rows back was a quarter
        # of the committing thread at 10,000 changes/s, most of it PyMySQL decoding each column in Python).
        if vm_row_cache_size is None:
            vm_row_cache_size = VM_ROW_CACHE_SIZE
        self._vm_rows: RowCache[_StoredVm] = RowCache(vm_row_cache_size)
        self._host_rows: RowCache[_StoredHost] = RowCache(HOST_ROW_CACHE_SIZE if vm_row_cache_size else 0)

    # ---------------------------------------------------------------- revisions and the change log

    def _allocate(self, session: Session, count: int) -> int:
        """Reserve `count` revisions; returns the first. Holds the counter row lock until commit."""
        # Core statements built once: the ORM's bulk-update path cost more than the update on every batch.
        connection = session.connection()
        if self.backend == "mysql":
            last = connection.execute(_ADVANCE_REVISION_REMEMBERED, {"count": count}).lastrowid
            if not last:  # no counter row: the schema was not built by the migrations
                raise NoResultFound(f"the {REVISION_COUNTER!r} counter row is missing")
        elif connection.dialect.update_returning:
            last = connection.execute(_ADVANCE_REVISION_RETURNING, {"count": count}).scalar_one()
        else:  # SQLite before 3.35
            connection.execute(_ADVANCE_REVISION, {"count": count})
            last = self._counter(connection, REVISION_COUNTER)
        return int(last) - count + 1

    def _allocate_in_group(self, session: Session, group: _GroupWrites, count: int) -> int:
        """`_allocate` for a group's batch: the first allocation locks the counter row until commit, as before;
        later ones in the same transaction hand out the following revisions, saved by `_flush_group`."""
        if group.next_revision == 0:
            first = self._allocate(session, count)
        else:
            first = group.next_revision
            group.unsaved += count
        group.next_revision = first + count
        return first

    def _write_rows(self, connection: Connection, table: Table, kind: str, rows: Sequence[dict[str, Any]]) -> None:
        if kind == "insert":
            self._sql.executemany(connection, _insert_rows(table), rows)
        else:
            self._sql.update_by_id(connection, table, rows)

    def _flush_rows(self, session: Session, group: _GroupWrites) -> None:
        connection = session.connection()
        for (table, kind, _), rows in group.row_writes.items():
            self._write_rows(connection, table, kind, rows)
        group.row_writes.clear()
        group.row_clusters.clear()

    def _flush_group(self, session: Session, group: _GroupWrites) -> None:
        """The group's deferred writes, before its commit."""
        self._flush_rows(session, group)
        connection = session.connection()
        if group.unsaved:
            connection.execute(_ADVANCE_REVISION, {"count": group.unsaved})
        self._sql.insert_many(connection, _INSERT_CHANGES, group.log_rows)
        rows = [{"pool_id": pool_id, **values} for pool_id, values in group.bookkeeping.items()]
        for same_keys in _by_keys(rows):
            keys = tuple(key for key in same_keys[0] if key != "pool_id")
            self._sql.executemany(connection, _pool_bookkeeping(keys), same_keys)

    def _write_changes(
        self,
        session: Session,
        changes: list[_PendingChange],
        now: dt.datetime,
        vm_refs: dict[str, str] | None = None,
        row_ids: dict[str, dict[str, int]] | None = None,
        stored_vms: Mapping[str, _StoredVm] | None = None,
        written_vms: dict[str, MirrorVm] | None = None,
        group: _GroupWrites | None = None,
        written_hosts: dict[str, MirrorHost] | None = None,
    ) -> int:
        """Allocates revisions for `changes`, stamps the objects, writes their rows and the change log.
        Returns the last revision (0 when there is nothing). `row_ids` (kind -> uuid -> row id), when given,
        holds every existing row of the changed objects, read in this transaction, so they need no lookup;
        `stored_vms` (uuid -> stored row), those VM rows as stored, so an update sets only the columns that
        differ. `written_vms` and `written_hosts`, when given, receive each VM and host as its row was written (uuid
        -> stamped object). With `group`, revisions come from the group and the change-log rows join its deferred
        writes."""
        if not changes:
            return 0
        first = (
            self._allocate(session, len(changes))
            if group is None
            else self._allocate_in_group(session, group, len(changes))
        )
        vm_updates: list[dict[str, Any]] = []
        host_updates: list[dict[str, Any]] = []
        log_rows: list[dict[str, Any]] = []
        stored_vm_values: dict[str, dict[str, Any]] = {}
        timestamps: converters.TimestampMemo = {}
        revision = first
        for change in changes:
            obj = change.obj
            if isinstance(obj, MirrorVm):
                obj = obj.stamped(revision, now)
                if written_vms is not None:
                    written_vms[obj.uuid] = obj
                values = _vm_values(obj)
                if vm_refs and obj.uuid in vm_refs:
                    values["xapi_ref"] = vm_refs[obj.uuid]
                vm_updates.append(values)
                stored = stored_vms.get(obj.uuid) if stored_vms else None
                if stored is not None:
                    stored_vm_values[obj.uuid] = _stored_vm_values(stored)
            elif isinstance(obj, MirrorHost):
                obj = replace(obj, revision=revision, update_time=now)
                if written_hosts is not None:
                    written_hosts[obj.uuid] = obj
                host_updates.append(_host_values(obj))
            else:
                row = session.execute(select(PoolRow).where(PoolRow.cluster_id == change.cluster_id)).scalar_one()
                row.revision = revision
                session.flush()
                obj = pool_info_from_row(row) if obj is None else replace(obj, revision=revision)
            payload = converters.change_payload(revision, change.change_type, now, change.cluster_id, obj, timestamps)
            log_rows.append(
                {
                    "revision": revision,
                    "kind": change.kind,
                    "change_type": change.change_type,
                    "cluster_id": change.cluster_id,
                    "object_key": change.key,
                    "commit_time": now,
                    "payload": payload,
                }
            )
            revision += 1
        self._upsert(
            session, VmRow, vm_updates, row_ids["vm"] if row_ids is not None else None, stored_vm_values, group
        )
        self._upsert(session, HostRow, host_updates, row_ids["host"] if row_ids is not None else None, group=group)
        if group is None:
            self._sql.insert_many(session.connection(), _INSERT_CHANGES, log_rows)
        else:
            group.log_rows.extend(log_rows)
        return revision - 1

    def _upsert(
        self,
        session: Session,
        model: type[VmRow] | type[HostRow],
        rows: list[dict[str, Any]],
        known_ids: dict[str, int] | None = None,
        stored_values: Mapping[str, Mapping[str, Any]] | None = None,
        group: _GroupWrites | None = None,
    ) -> None:
        """Core executemany, not the ORM's bulk paths (which cost more per row than the database did).
        `known_ids` (uuid -> row id, rows of one cluster) spares the lookup when the caller has just read them;
        `stored_values` (uuid -> column values of those rows as stored) lets an update set only the columns that
        changed. With `group`, the writes join the group's deferred row writes."""
        if not rows:
            return
        table = cast(Table, model.__table__)
        connection = session.connection()
        existing: dict[tuple[str, str], int] = {}
        clusters = {row["cluster_id"] for row in rows}
        if known_ids is not None and len(clusters) == 1:
            cluster = next(iter(clusters))
            existing = {(cluster, uuid): row_id for uuid, row_id in known_ids.items()}
        else:
            for cluster in clusters:
                uuids = [row["uuid"] for row in rows if row["cluster_id"] == cluster]
                for chunk in _chunks(uuids):
                    for row_id, uuid in connection.execute(
                        select(table.c.id, table.c.uuid).where(table.c.cluster_id == cluster, table.c.uuid.in_(chunk))
                    ):
                        existing[(cluster, uuid)] = row_id
        if len(clusters) != 1:
            stored_values = None  # keyed by uuid alone, for one cluster's rows
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        # An UPDATE sets only what changed. A row is found by its pool and uuid, so those are never set; with the
        # stored row at hand, neither is any other column that kept its value. SQLite rewrites the entries of
        # every index whose columns the SET names, changed or not (about 4x the cost of a VM row's update,
        # measured on 250 rows of a 20,000-row table), and on MySQL a power flip's 7 columns cost 30 % less
        # server time and 60 % less client CPU than the whole row (see JoinedUpdate).
        for row in rows:
            row_id = existing.get((row["cluster_id"], row["uuid"]))
            if row_id is None:
                inserts.append(row)
                continue
            stored = stored_values.get(row["uuid"]) if stored_values is not None else None
            if stored is None:
                values = {key: value for key, value in row.items() if key not in _ROW_IDENTITY}
            else:
                values = {
                    key: value
                    for key, value in row.items()
                    if key not in _ROW_IDENTITY and stored.get(key, _UNSET) != value
                }
                if not values:
                    continue
            values["row_id"] = row_id
            updates.append(values)
        # One statement per kind and set of keys (a VM row carries xapi_ref only when the batch knows it).
        writes = [("insert", same_keys) for same_keys in _by_keys(inserts)]
        writes.extend(("update", same_keys) for same_keys in _by_keys(updates))
        for kind, same_keys in writes:
            if group is None:
                self._write_rows(connection, table, kind, same_keys)
            else:
                group.row_writes.setdefault((table, kind, tuple(same_keys[0])), []).extend(same_keys)
                group.row_clusters.update(clusters)

    def _commit_hook(self, last_revision: int) -> None:
        if last_revision:
            self.notifier.notify(last_revision)

    def current_revision(self) -> int:
        with self.sessions() as session:
            return self._counter(session, REVISION_COUNTER)

    def compacted_through(self) -> int:
        with self.sessions() as session:
            return self._counter(session, COMPACTED_THROUGH)

    @staticmethod
    def _counter(executor: Session | Connection, name: str) -> int:
        return int(executor.execute(_COUNTER_NOW, {"counter": name}).scalar_one())

    # ------------------------------------------------------------------------------------ registry

    def _pool_row(self, session: Session, cluster_id: str) -> PoolRow:
        row = session.execute(select(PoolRow).where(PoolRow.cluster_id == cluster_id)).scalar_one_or_none()
        if row is None:
            raise PoolNotFoundError(cluster_id)
        return row

    def find_pool(self, cluster_id: str) -> PoolInfo | None:
        # Core, not the ORM: GetPool is on ha_service's decision path, and a single-row ORM load (identity map,
        # instance state) cost several times the query itself.
        table = cast(Table, PoolRow.__table__)
        with self.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.cluster_id == cluster_id)).one_or_none()
        # A Row has the same attribute names as PoolRow.
        return pool_info_from_row(cast(PoolRow, row)) if row is not None else None

    def pool_registration(self, cluster_id: str) -> tuple[PoolInfo, bytes | None, str] | None:
        """(pool, encrypted credentials, register request id), for idempotency checks."""
        with self.sessions() as session:
            row = session.execute(select(PoolRow).where(PoolRow.cluster_id == cluster_id)).scalar_one_or_none()
            if row is None:
                return None
            return pool_info_from_row(row), row.credentials_encrypted, row.register_request_id

    def register_pool(
        self,
        *,
        cluster_id: str,
        master_url: str,
        credentials_encrypted: bytes | None,
        tls_ca_bundle_pem: str,
        tls_fingerprint: str,
        tls_insecure: bool,
        request_id: str,
    ) -> PoolInfo:
        now = self.clock()
        with write_transaction(self.sessions) as session:
            row = PoolRow(
                cluster_id=cluster_id,
                master_url=master_url,
                credentials_encrypted=credentials_encrypted,
                tls_ca_bundle_pem=tls_ca_bundle_pem,
                tls_fingerprint=tls_fingerprint,
                tls_insecure=tls_insecure,
                register_request_id=request_id,
                config_generation=1,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            session.flush()
            last = self._write_changes(session, [_PendingChange("pool", "ADDED", cluster_id, cluster_id, None)], now)
            info = pool_info_from_row(row)
        self._commit_hook(last)
        return info

    def update_pool(
        self,
        cluster_id: str,
        *,
        master_url: str | None,
        credentials_encrypted: bytes | None,
        tls: tuple[str, str, bool] | None,
        request_id: str,
    ) -> PoolInfo:
        now = self.clock()
        with write_transaction(self.sessions) as session:
            if request_id and session.get(RequestRow, request_id) is not None:
                return pool_info_from_row(self._pool_row(session, cluster_id))
            row = self._pool_row(session, cluster_id)
            changed = False
            if master_url is not None and master_url != row.master_url:
                row.master_url = master_url
                row.host_addresses = "[]"  # addresses learnt from the old pool no longer apply
                changed = True
            if credentials_encrypted is not None:
                row.credentials_encrypted = credentials_encrypted
                changed = True
            if tls is not None and tls != (row.tls_ca_bundle_pem, row.tls_fingerprint, row.tls_insecure):
                row.tls_ca_bundle_pem, row.tls_fingerprint, row.tls_insecure = tls
                changed = True
            last = 0
            if changed:
                row.config_generation += 1
                row.update_time = now
                session.flush()
                last = self._write_changes(
                    session, [_PendingChange("pool", "MODIFIED", cluster_id, cluster_id, None)], now
                )
            if request_id:
                session.add(
                    RequestRow(request_id=request_id, method="UpdatePool", cluster_id=cluster_id, create_time=now)
                )
            info = pool_info_from_row(row)
        self._commit_hook(last)
        return info

    def deregister_pool(self, cluster_id: str, request_id: str) -> bool:
        """Removes the pool and its mirror, emitting REMOVED changes. False when it was not registered (or the
        same request already removed it)."""
        now = self.clock()
        with write_transaction(self.sessions) as session:
            if request_id and session.get(RequestRow, request_id) is not None:
                return True
            row = session.execute(select(PoolRow).where(PoolRow.cluster_id == cluster_id)).scalar_one_or_none()
            if row is None:
                return False
            changes: list[_PendingChange] = []
            for vm_row in session.execute(select(VmRow).where(VmRow.cluster_id == cluster_id)).scalars():
                vm = _vm_from_row(vm_row)
                if not vm.removed:
                    changes.append(_PendingChange("vm", "REMOVED", cluster_id, vm.uuid, vm_gone(vm, now)))
            for host_row in session.execute(select(HostRow).where(HostRow.cluster_id == cluster_id)).scalars():
                host = _host_from_row(host_row)
                if not host.removed:
                    changes.append(
                        _PendingChange("host", "REMOVED", cluster_id, host.uuid, replace(host, removed=True))
                    )
            pool_info = pool_info_from_row(row)
            changes.append(_PendingChange("pool", "REMOVED", cluster_id, cluster_id, pool_info))
            # Rows first (the change log keeps their last state), then the log.
            session.execute(delete(VmRow).where(VmRow.cluster_id == cluster_id))
            session.execute(delete(HostRow).where(HostRow.cluster_id == cluster_id))
            first = self._allocate(session, len(changes))
            log_rows = []
            for offset, change in enumerate(changes):
                revision = first + offset
                assert change.obj is not None
                obj = replace(change.obj, revision=revision)
                if isinstance(obj, MirrorVm | MirrorHost):
                    obj = replace(obj, update_time=now)
                log_rows.append(
                    {
                        "revision": revision,
                        "kind": change.kind,
                        "change_type": change.change_type,
                        "cluster_id": cluster_id,
                        "object_key": change.key,
                        "commit_time": now,
                        "payload": converters.change_payload(revision, "REMOVED", now, cluster_id, obj),
                    }
                )
            session.execute(insert(ChangeRow), log_rows)
            session.delete(row)
            if request_id:
                session.add(
                    RequestRow(request_id=request_id, method="DeregisterPool", cluster_id=cluster_id, create_time=now)
                )
            last = first + len(changes) - 1
        self._commit_hook(last)
        return True

    def list_pools(self, *, after_id: int | None, limit: int) -> Page[PoolInfo]:
        with self._read_session() as session:
            revision = self._counter(session, REVISION_COUNTER)
            query = select(PoolRow).order_by(PoolRow.id).limit(limit + 1)
            if after_id is not None:
                query = query.where(PoolRow.id > after_id)
            rows = list(session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([pool_info_from_row(row) for row in rows], rows[-1].id if more and rows else None, revision)

    def pool_configs(self) -> list[PoolConfig]:
        with self.sessions() as session:
            return [self._config(row) for row in session.execute(select(PoolRow).order_by(PoolRow.id)).scalars()]

    def pool_config(self, cluster_id: str) -> PoolConfig | None:
        with self.sessions() as session:
            row = session.execute(select(PoolRow).where(PoolRow.cluster_id == cluster_id)).scalar_one_or_none()
            return self._config(row) if row is not None else None

    @staticmethod
    def _config(row: PoolRow) -> PoolConfig:
        return PoolConfig(
            cluster_id=row.cluster_id,
            master_url=row.master_url,
            credentials_encrypted=row.credentials_encrypted,
            tls_ca_bundle_pem=row.tls_ca_bundle_pem,
            tls_fingerprint=row.tls_fingerprint,
            tls_insecure=row.tls_insecure,
            config_generation=row.config_generation,
            event_token=row.event_token,
            host_addresses=list(orjson.loads(row.host_addresses or "[]")),
            watch_state=dict(orjson.loads(row.watch_state or "{}")),
            pool_uuid=row.pool_uuid,
        )

    def update_status(
        self,
        cluster_id: str,
        config_generation: int | None = None,
        *,
        lease: tuple[str, int] | None = None,
        **values: Any,
    ) -> None:
        """Sync status fields (no change-log entry). Ignored when the pool is gone or was reconfigured, or when
        `lease` (holder, epoch) no longer holds the pool."""
        values.setdefault("update_time", self.clock())
        condition = PoolRow.cluster_id == cluster_id
        if config_generation is not None:
            condition = and_(condition, PoolRow.config_generation == config_generation)
        if lease is not None:
            condition = and_(condition, lease_held(cluster_id, *lease))
        with write_transaction(self.sessions) as session:
            session.execute(update(PoolRow).where(condition).values(**values))

    def increment_reconnects(self, cluster_id: str) -> None:
        with write_transaction(self.sessions) as session:
            session.execute(
                update(PoolRow).where(PoolRow.cluster_id == cluster_id).values(reconnects=PoolRow.reconnects + 1)
            )

    # --------------------------------------------------------------------------------- watcher writes

    def load_mirror(self, cluster_id: str) -> tuple[list[tuple[str, MirrorVm]], list[MirrorHost]]:
        """The live (not removed) VMs with their XAPI refs, and hosts, so a restarted watcher can resume."""
        with self.sessions() as session:
            vms = [
                (row.xapi_ref, _vm_from_row(row))
                for row in session.execute(
                    select(VmRow).where(VmRow.cluster_id == cluster_id, VmRow.removed.is_(False))
                ).scalars()
            ]
            hosts = [
                _host_from_row(row)
                for row in session.execute(
                    select(HostRow).where(HostRow.cluster_id == cluster_id, HostRow.removed.is_(False))
                ).scalars()
            ]
        return vms, hosts

    def apply_batch(self, batch: Batch) -> BatchResult:
        """Write one event batch (or full list) and its token in one transaction; only real changes are logged.

        Batches that arrive while another transaction is writing share the next one (a group commit): with many
        pools, one commit serves many watchers instead of each queueing for the write lock on its own. Each
        batch keeps its own checks and outcome: a stale or fenced-off watcher's batch is refused alone."""
        return self._batch_writes.submit(batch)

    def _write_group(self, batches: Sequence[Batch]) -> list[BatchResult | BaseException]:
        started = time.perf_counter()
        try:
            outcomes, last = self._write_together(batches)
        except Exception as error:
            if len(batches) == 1 or is_transient_db_error(error):
                return [error for _ in batches]
            # One batch's failure (it rolled back the group) must not hold back the other pools.
            log.debug("grouped batch write failed (%s); writing each alone", error)
            return [self._write_alone(batch) for batch in batches]
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        self._commit_hook(last)
        if self.backend == "postgresql" and any(
            batch.full and len(batch.vms) >= ANALYZE_AFTER_FULL_LIST_OF for batch in batches
        ):
            self._analyze_mirror()
        return outcomes

    def _analyze_mirror(self) -> None:
        """PostgreSQL: refresh the mirror tables' statistics after a large full list. Until autovacuum gets to a
        table just filled from empty, the planner takes it for nearly empty; the reads of existing rows among a
        batch's uuids then filtered the whole pool against each uuid, about 180 ms a read at 1,000 uuids, against
        3 ms once analysed. Best effort: autovacuum does it anyway within a minute or so."""
        try:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(f"ANALYZE {_VMS.name}, {_HOSTS.name}")
        except Exception as error:
            log.warning("could not analyze the mirror tables: %s", error)

    def _write_alone(self, batch: Batch) -> BatchResult | BaseException:
        return self._write_group([batch])[0]

    def _write_together(self, batches: Sequence[Batch]) -> tuple[list[BatchResult | BaseException], int]:
        """All `batches` in one transaction; a batch refused by its checks (nothing of it written yet) gets its
        error as its outcome. Returns the outcomes in order and the last revision written."""
        now = self.clock()
        outcomes: dict[int, BatchResult | BaseException] = {}
        last = 0
        staged: dict[tuple[str, str], _StoredVm] = {}  # VM rows as this transaction leaves them
        staged_hosts: dict[tuple[str, str], _StoredHost] = {}  # host rows likewise
        group = _GroupWrites()
        with write_transaction(self.sessions) as session:
            # Lease rows are locked in cluster order, so two groups (or replicas) never wait on each other in a
            # cycle; a pool's own batches keep their order (the sort is stable).
            for index in sorted(range(len(batches)), key=lambda i: batches[i].cluster_id):
                if batches[index].cluster_id in group.row_clusters:  # a pool's later batch reads what the earlier wrote
                    self._flush_rows(session, group)
                try:
                    result = self._write_batch(session, batches[index], now, staged, staged_hosts, group)
                except StaleWatcherError as refused:
                    outcomes[index] = refused
                    continue
                outcomes[index] = result
                last = max(last, result.last_revision)
            self._flush_group(session, group)
        self._vm_rows.put_committed(staged, group.cache_tags)
        self._host_rows.put_committed(staged_hosts, group.cache_tags)
        return [outcomes[i] for i in range(len(batches))], last

    def _stored_vms(
        self,
        connection: Connection,
        cluster_id: str,
        uuids: Sequence[str],
        staged: Mapping[tuple[str, str], _StoredVm],
        trusted: bool,
    ) -> dict[str, _StoredVm]:
        """The stored rows of `uuids` (those that exist), by uuid: from this transaction's staged rows or the row
        cache, the rest read whole. With the pool's cached rows `trusted` (see row_cache), and every row known and
        not removed, nothing is read; otherwise a known row is taken where its version still matches. When fewer
        than half of them are known (a pool's first batches), all are read whole at once: checking versions first
        would cost a read more."""
        known: dict[str, _StoredVm] = {}
        for uuid in uuids:
            cached = staged.get((cluster_id, uuid)) or self._vm_rows.get(cluster_id, uuid)
            if cached is not None:
                known[uuid] = cached
        # A removed row may have been deleted by compaction, which does not stamp the pool.
        if trusted and len(known) == len(uuids) and not any(row.vm.removed for row in known.values()):
            return known
        if len(known) * 2 < len(uuids):
            return self._read_vms(connection, cluster_id, uuids)
        found: dict[str, _StoredVm] = {}
        changed_ids: list[int] = []
        for chunk in _chunks(uuids):
            for uuid, row_id, revision, xapi_ref in connection.execute(
                _VM_VERSIONS_BY_UUID, {"cluster_id": cluster_id, "uuids": list(chunk)}
            ):
                cached = known.get(uuid)
                if cached is not None and cached.version == (row_id, revision, xapi_ref):
                    found[uuid] = cached
                else:
                    changed_ids.append(row_id)
        changed = itertools.chain.from_iterable(
            connection.execute(_VMS_BY_ID, {"ids": list(ids)}) for ids in _chunks(changed_ids)
        )
        found.update(_stored_vms_by_uuid(changed))
        return found

    def _read_vms(self, connection: Connection, cluster_id: str, uuids: Sequence[str]) -> dict[str, _StoredVm]:
        if 0 < len(uuids) <= _FEW_UUIDS:
            query, values = _VMS_BY_FEW_UUIDS.bind(uuids, cluster_id=cluster_id)
            return _stored_vms_by_uuid(self._sql.fetch(connection, query, values))
        rows = itertools.chain.from_iterable(
            connection.execute(_VMS_BY_UUID, {"cluster_id": cluster_id, "uuids": list(chunk)})
            for chunk in _chunks(uuids)
        )
        return _stored_vms_by_uuid(rows)

    @staticmethod
    def _stage_vm_rows(
        staged: dict[tuple[str, str], _StoredVm],
        cluster_id: str,
        existing: Mapping[str, _StoredVm],
        written: Mapping[str, MirrorVm],
        refs: Mapping[str, str],
        new_refs: Mapping[str, str],
    ) -> None:
        """Records the VM rows as this batch leaves them: those it read and left alone, and those it wrote over
        an existing row (a new row's id is not known until it is read)."""
        for uuid, stored in existing.items():
            vm = written.get(uuid)
            if vm is not None:
                staged[(cluster_id, uuid)] = _StoredVm(stored.row_id, refs.get(uuid, stored.xapi_ref), vm)
            elif uuid in new_refs:
                staged[(cluster_id, uuid)] = _StoredVm(stored.row_id, new_refs[uuid], stored.vm)
            else:
                staged[(cluster_id, uuid)] = stored
        for uuid in written.keys() - existing.keys():
            staged.pop((cluster_id, uuid), None)

    def _known_hosts(
        self, cluster_id: str, uuids: Sequence[str], staged_hosts: Mapping[tuple[str, str], _StoredHost]
    ) -> dict[str, _StoredHost] | None:
        """The stored host rows of `uuids` from this transaction's staged rows or the trusted cache, or None when
        any of them is not known or is removed (compaction deletes removed rows without stamping the pool, and a
        uuid not known may have a row: its removed row, or one inserted without its id known)."""
        known: dict[str, _StoredHost] = {}
        for uuid in uuids:
            cached = staged_hosts.get((cluster_id, uuid)) or self._host_rows.get(cluster_id, uuid)
            if cached is None or cached.host.removed:
                return None
            known[uuid] = cached
        return known

    @staticmethod
    def _stage_host_rows(
        staged_hosts: dict[tuple[str, str], _StoredHost],
        cluster_id: str,
        read: Mapping[str, _StoredHost],
        written: Mapping[str, MirrorHost],
        ids: Mapping[str, int],
    ) -> None:
        """Records the host rows as this batch leaves them: those it read, and those it wrote over an existing
        row (a new row's id is not known until it is read)."""
        for uuid, stored in read.items():
            staged_hosts[(cluster_id, uuid)] = stored
        for uuid, host in written.items():
            row_id = ids.get(uuid)
            if row_id is None:
                staged_hosts.pop((cluster_id, uuid), None)
            else:
                staged_hosts[(cluster_id, uuid)] = _StoredHost(row_id, host)

    def _write_batch(
        self,
        session: Session,
        batch: Batch,
        now: dt.datetime,
        staged: dict[tuple[str, str], _StoredVm],
        staged_hosts: dict[tuple[str, str], _StoredHost],
        group: _GroupWrites,
    ) -> BatchResult:
        """One batch inside the group's transaction; its rows, change log and bookkeeping join the group's deferred
        writes. Raises StaleWatcherError (or LeaseLostError) before writing anything when the watcher may not
        write. Core rows and statements built once: on this path, per batch, the ORM's identity map, flush and
        statement building cost more than the database did."""
        cluster_id = batch.cluster_id
        connection = session.connection()
        if batch.lease_epoch is not None and not check_fence(
            session, cluster_id, batch.lease_holder, batch.lease_epoch
        ):
            raise LeaseLostError(cluster_id)
        pool_row = self._sql.fetch_optional(connection, _POOL_OF, {"cluster_id": cluster_id})
        if pool_row is None or pool_row.config_generation != batch.config_generation:
            raise StaleWatcherError(cluster_id)
        pool_uuid = batch.pool.uuid if batch.pool is not None else pool_row.pool_uuid
        changes: list[_PendingChange] = []
        ref_by_uuid = batch.vm_refs
        caching = self._vm_rows.max_entries > 0
        # The pool's cached rows, if the pool's rows were last written by this replica's last commit for it, under
        # this lease; otherwise none of them are (a pool's later batch in this group sees the same tag and stamp:
        # the stamp is written with the bookkeeping at the end).
        cache_tag = (pool_row.rows_stamp, batch.lease_epoch)
        trusted = caching and self._vm_rows.tag(cluster_id) == cache_tag
        if caching and not trusted:
            self._vm_rows.forget(cluster_id)
        hosts_trusted = caching and self._host_rows.tag(cluster_id) == cache_tag
        if caching and not hosts_trusted:
            self._host_rows.forget(cluster_id)

        # VMs
        wanted = {vm.uuid: vm for vm in batch.vms}
        if batch.full:
            existing_vms = _stored_vms_by_uuid(connection.execute(_VMS_OF_CLUSTER, {"cluster_id": cluster_id}))
        elif caching:
            existing_vms = self._stored_vms(
                connection, cluster_id, list(wanted) + batch.removed_vm_uuids, staged, trusted
            )
        else:
            existing_vms = self._read_vms(connection, cluster_id, list(wanted) + batch.removed_vm_uuids)
        ref_updates: list[dict[str, Any]] = []
        new_refs: dict[str, str] = {}  # uuid -> ref, for ref_updates
        changed_uuids: set[str] = set()
        for uuid, facts in wanted.items():
            row = existing_vms.get(uuid)
            previous = row.vm if row is not None else None
            current = observe_vm(
                previous, facts, cluster_id=cluster_id, pool_uuid=pool_uuid, now=now, full_report=batch.full
            )
            if previous is None or previous.removed:
                changes.append(_PendingChange("vm", "ADDED", cluster_id, uuid, current))
                changed_uuids.add(uuid)
            elif not previous.same_content(current):
                changes.append(_PendingChange("vm", "MODIFIED", cluster_id, uuid, current))
                changed_uuids.add(uuid)
            ref = ref_by_uuid.get(uuid, "")
            if ref and row is not None and row.xapi_ref != ref and uuid not in changed_uuids:
                ref_updates.append({"row_id": row.row_id, "xapi_ref": ref})
                new_refs[uuid] = ref
        gone = [uuid for uuid in existing_vms if uuid not in wanted] if batch.full else batch.removed_vm_uuids
        for uuid in gone:
            row = existing_vms.get(uuid)
            if row is None or row.vm.removed:
                continue
            changes.append(_PendingChange("vm", "REMOVED", cluster_id, uuid, vm_gone(row.vm, now)))

        # Hosts
        wanted_hosts = {host.uuid: host for host in batch.hosts}
        stored_hosts: dict[str, _StoredHost] = {}
        hosts_read = False
        if batch.full or batch.hosts or batch.removed_host_uuids:
            known_hosts = (
                None
                if batch.full or not hosts_trusted
                else self._known_hosts(cluster_id, [*wanted_hosts, *batch.removed_host_uuids], staged_hosts)
            )
            if known_hosts is not None:
                stored_hosts = known_hosts
            else:
                rows = self._sql.fetch(connection, _HOSTS_OF_CLUSTER, {"cluster_id": cluster_id})
                stored_hosts = {stored.host.uuid: stored for stored in map(_stored_host, rows)}
                hosts_read = True
        for uuid, host_facts in wanted_hosts.items():
            found = stored_hosts.get(uuid)
            previous_host = found.host if found is not None else None
            current_host = MirrorHost(
                cluster_id=cluster_id,
                pool_uuid=pool_uuid,
                facts=host_facts,
                removed=False,
                revision=previous_host.revision if previous_host else 0,
                update_time=previous_host.update_time if previous_host else None,
            )
            if previous_host is None or previous_host.removed:
                changes.append(_PendingChange("host", "ADDED", cluster_id, uuid, current_host))
            elif not previous_host.same_content(current_host):
                changes.append(_PendingChange("host", "MODIFIED", cluster_id, uuid, current_host))
        gone_hosts = (
            [uuid for uuid in stored_hosts if uuid not in wanted_hosts] if batch.full else batch.removed_host_uuids
        )
        for uuid in gone_hosts:
            found = stored_hosts.get(uuid)
            if found is None or found.host.removed:
                continue
            host = found.host
            changes.append(
                _PendingChange(
                    "host",
                    "REMOVED",
                    cluster_id,
                    uuid,
                    replace(host, removed=True, facts=replace(host.facts, live=False)),
                )
            )

        # Pool facts: written before the change log, whose pool entry renders the updated row.
        if batch.pool is not None:
            values = _pool_fact_values(batch.pool)
            if any(getattr(pool_row, key) != value for key, value in values.items()):
                connection.execute(update(_POOLS).where(_POOLS.c.id == pool_row.id).values(**values, update_time=now))
                changes.append(_PendingChange("pool", "MODIFIED", cluster_id, cluster_id, None))

        # Causes before effects in the change log: a host's death and the pool's facts come before the VM
        # moves of the same batch (a full re-list after a master crash carries both), so a watcher that sees
        # a VM running elsewhere already knows its old host died.
        changes.sort(key=lambda change: _CHANGE_KIND_ORDER.get(change.kind, len(_CHANGE_KIND_ORDER)))
        row_ids = {
            "vm": {uuid: row.row_id for uuid, row in existing_vms.items()},
            "host": {uuid: stored.row_id for uuid, stored in stored_hosts.items()},
        }
        written: dict[str, MirrorVm] | None = {} if caching else None
        written_hosts: dict[str, MirrorHost] = {}
        last = self._write_changes(
            session, changes, now, ref_by_uuid, row_ids, existing_vms, written, group, written_hosts
        )
        if ref_updates:  # refs of unchanged VMs (rare)
            self._sql.update_by_id(connection, _VMS, ref_updates)
        if written is not None:
            self._stage_vm_rows(staged, cluster_id, existing_vms, written, ref_by_uuid, new_refs)
            read_hosts = stored_hosts if hosts_read else {}
            self._stage_host_rows(staged_hosts, cluster_id, read_hosts, written_hosts, row_ids["host"])

        bookkeeping: dict[str, Any] = {
            "event_token": batch.token,
            "events_applied": batch.events,  # added to the stored count
            "last_event_time": now,
            "lag_ms": batch.lag_ms,
            "rows_stamp": group.stamp,
        }
        if batch.full:
            bookkeeping["last_full_sync_time"] = now
        if batch.watch_state is not None:
            bookkeeping["watch_state"] = orjson.dumps(batch.watch_state).decode()
        if batch.host_addresses is not None:
            addresses = orjson.dumps(batch.host_addresses).decode()
            if addresses != pool_row.host_addresses:
                bookkeeping["host_addresses"] = addresses
        group.add_bookkeeping(pool_row.id, bookkeeping)
        group.cache_tags[cluster_id] = (group.stamp, batch.lease_epoch)
        return BatchResult(revisions=len(changes), last_revision=last)

    # ------------------------------------------------------------------------------------------ reads

    def _read_session(self) -> Session:
        """A session whose reads form one snapshot (REPEATABLE READ on MySQL and PostgreSQL; SQLite's read
        transactions are snapshots already), so a page and the revision it reports agree."""
        session = self.sessions()
        if self.backend != "sqlite":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return session

    def get_vm(self, *, uuid: str = "", cluster_id: str = "", name: str = "") -> MirrorVm | None:
        with self.sessions() as session:
            query = select(VmRow)
            if uuid:
                query = query.where(VmRow.uuid == uuid)
            else:
                query = query.where(VmRow.cluster_id == cluster_id, VmRow.name_label == name)
            # A live row wins over a removed one (a VM moved between pools, or a name reused).
            rows = list(session.execute(query.order_by(VmRow.removed, VmRow.revision.desc()).limit(1)).scalars())
            return _vm_from_row(rows[0]) if rows else None

    def list_vms(
        self, vm_filter: VmFilter, *, after_id: int | None, limit: int, revision: int | None
    ) -> Page[MirrorVm]:
        with self._read_session() as session:
            current = self._counter(session, REVISION_COUNTER) if revision is None else revision
            query = select(VmRow).order_by(VmRow.id).limit(limit + 1)
            conditions = []
            if after_id is not None:
                conditions.append(VmRow.id > after_id)
            if vm_filter.cluster_id:
                conditions.append(VmRow.cluster_id == vm_filter.cluster_id)
            if vm_filter.resident_host_uuid:
                conditions.append(VmRow.resident_host_uuid == vm_filter.resident_host_uuid)
            if vm_filter.xapi_power_states:
                conditions.append(VmRow.xapi_power_state.in_([s.value for s in vm_filter.xapi_power_states]))
            if vm_filter.power_states:
                conditions.append(VmRow.power_state.in_([s.value for s in vm_filter.power_states]))
            if vm_filter.ha_restart_priorities is not None:
                conditions.append(VmRow.ha_restart_priority.in_(list(vm_filter.ha_restart_priorities)))
            if vm_filter.name_prefix:
                escaped = vm_filter.name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conditions.append(VmRow.name_label.like(escaped + "%", escape="\\"))
            if not vm_filter.include_removed:
                conditions.append(VmRow.removed.is_(False))
            if conditions:
                query = query.where(and_(*conditions))
            rows = list(session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_vm_from_row(row) for row in rows], rows[-1].id if more and rows else None, current)

    def list_hosts(
        self, *, cluster_id: str, include_removed: bool, after_id: int | None, limit: int, revision: int | None
    ) -> Page[MirrorHost]:
        with self._read_session() as session:
            current = self._counter(session, REVISION_COUNTER) if revision is None else revision
            query = select(HostRow).order_by(HostRow.id).limit(limit + 1)
            if after_id is not None:
                query = query.where(HostRow.id > after_id)
            if cluster_id:
                query = query.where(HostRow.cluster_id == cluster_id)
            if not include_removed:
                query = query.where(HostRow.removed.is_(False))
            rows = list(session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_host_from_row(row) for row in rows], rows[-1].id if more and rows else None, current)

    def read_changes(self, after: int, *, kinds: Sequence[str], cluster_id: str, limit: int) -> ChangeRead:
        """Changes above `after` in revision order. `position` is how far the log was read, matching or not."""
        with self.engine.connect() as connection:
            # The counter first: every revision up to it is committed (commits happen in revision order).
            upper = self._counter(connection, REVISION_COUNTER)
            parameters: dict[str, Any] = {"after": after, "upper": upper, "limit": limit}
            if kinds:
                parameters["kinds"] = list(kinds)
            if cluster_id:
                parameters["cluster_id"] = cluster_id
            rows = connection.execute(_changes_after(bool(kinds), bool(cluster_id)), parameters).all()
            # Read after the rows: if retention deleted some of them meanwhile, this says so.
            compacted = self._counter(connection, COMPACTED_THROUGH)
        position = int(rows[-1][0]) if len(rows) >= limit else max(after, upper)
        return ChangeRead([bytes(row[1]) for row in rows], position, compacted)

    # -------------------------------------------------------------------------------------- retention

    def compact(self, *, keep_changes: int, keep_seconds: float, max_revisions: int = COMPACT_CHUNK) -> Compaction:
        """One step of the change-log retention, in its own transaction: deletes the changes the retention lets go
        of, at most `max_revisions` of them, oldest first, and advances the compacted-through revision past them.
        Bounded so no transaction deletes a whole backlog at once: at 7,000 changes/s a minute brings about 300,000
        rows, and one MariaDB DELETE of 200,000 took 1.1-1.3 s of the server beside the ingest. The caller repeats
        until `finished`. The removed VM and host rows the change log no longer needs go in the last step."""
        if max_revisions < 1:
            raise ValueError("max_revisions must be at least 1")
        now = self.clock()
        with write_transaction(self.sessions) as session:
            compacted = session.execute(
                select(CounterRow).where(CounterRow.name == COMPACTED_THROUGH).with_for_update()
            ).scalar_one()
            last = self._counter(session, REVISION_COUNTER)
            lower = compacted.value
            step_top = lower + max_revisions
            target = lower
            if keep_changes > 0:
                target = max(target, last - keep_changes)
            if keep_seconds > 0:
                # Looked for within this step's revisions only: asked of the whole log, SQLite (no planner
                # statistics) walked it in revision order, under the write lock, looking for an old row: 0.57 s
                # at 1.5 million changes, a stall of the ingest in every step.
                old = session.execute(
                    select(func.max(ChangeRow.revision)).where(
                        ChangeRow.revision > lower,
                        ChangeRow.revision <= step_top,
                        ChangeRow.commit_time < now - dt.timedelta(seconds=keep_seconds),
                    )
                ).scalar()
                if old is not None:
                    # The step's last change is old enough: later ones may be too, so the retention goes on.
                    target = max(target, int(old) + 1 if old == step_top else int(old))
            upper = min(target, step_top)
            if upper > lower:
                # Bounded below as well: the rows under `lower` are gone, but a DELETE of `revision <= upper`
                # would still walk their index entries until the database purged them.
                session.execute(delete(ChangeRow).where(ChangeRow.revision > lower, ChangeRow.revision <= upper))
                compacted.value = upper
            finished = upper >= target
            if finished:
                # Removed rows are kept only while the change log may still need them.
                session.execute(delete(VmRow).where(VmRow.removed.is_(True), VmRow.revision <= upper))
                session.execute(delete(HostRow).where(HostRow.removed.is_(True), HostRow.revision <= upper))
                session.execute(delete(RequestRow).where(RequestRow.create_time < now - dt.timedelta(days=1)))
            return Compaction(compacted_through=int(upper), finished=finished)

    def request_seen(self, request_id: str) -> bool:
        with self.sessions() as session:
            return session.get(RequestRow, request_id) is not None


__all__ = [
    "Batch",
    "BatchResult",
    "ChangeNotifier",
    "ChangeRead",
    "Compaction",
    "LeaseLostError",
    "Page",
    "PoolConfig",
    "PoolNotFoundError",
    "Repository",
    "StaleWatcherError",
    "VmFilter",
]
