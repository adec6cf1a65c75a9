"""The controller: follows sync_service's change stream and acts on it (R5, R7, R9, R11).

Two threads. The watcher lists pools/hosts/VMs, then watches from the list's revision (or from the revision the
controller persisted, after a restart), re-lists on OUT_OF_RANGE and reconnects with backoff; it only queues what it
receives. The worker takes the queue in order, feeds each observation of a managed VM to the pure
`ha_service.domain.reconcile.reconcile_vm`, persists the returned memory, actions and notifications in one
transaction, and writes decided HA configs through SetVmHaConfig. A periodic tick (injectable clock) runs the time
rules: HA_RESTART_OVERDUE, REPLACE_SYSTEM_VM, unprotected retries, POOL_UNFENCED, event retention.

Single-active: `is_active_replica` says whether this replica can prove it holds the controller lease; while it
cannot, the worker holds its work (acts on none, drops none).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from sqlalchemy import Select, and_, bindparam, delete, or_, select, union_all, update
from sqlalchemy.engine import Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import ColumnElement

from ha_service import converters as cv
from ha_service.domain import model as dm
from ha_service.domain.policy import effective_mode, ha_config_drift, unprotected_reason_for_error
from ha_service.domain.reconcile import reconcile_vm
from ha_service.domain.versions import native_ha_supported
from ha_service.events import (
    ACTION,
    PENDING,
    EventBus,
    NewAction,
    NewNotification,
    append_events,
    counter_values,
)
from ha_service.handlers import load_pins, load_settings
from ha_service.metrics import HaMetrics
from ha_service.mode_migration import cluster_migrating
from ha_service.settings import HaSettings
from ha_service.store.models import (
    CONTROLLER_NAME,
    EVENT_FLOOR_COUNTER,
    EVENT_REVISION_COUNTER,
    ClusterPinRow,
    ClusterStateRow,
    ControllerStateRow,
    CounterRow,
    HaEventRow,
    ManagedVmRow,
)
from ha_service.sync_client import SyncClient, SyncError, SyncOutOfRangeError, WatchStream, XapiRefusedError
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.db import is_transient_db_error, retry_transient, write_transaction

log = logging.getLogger(__name__)
# Names per IN (...) lookup.
_NAME_CHUNK = 500
# VM reconciles per transaction: enough to pay a transaction's fixed cost once per burst, few enough that the
# controller does not hold SQLite's write lock (which RPC writers queue on) for long.
_UNITS_PER_TRANSACTION = 100
# Queued items the worker takes in hand at once (a bound on how far it looks ahead for a batch).
_BACKLOG_LIMIT = 1000
# How often a worker holding work rechecks a lease it cannot prove it holds.
_INACTIVE_RECHECK_SECONDS = 0.05
# How far back a tick looks for acknowledged actions of down VMs (an ack may allow a follow-up action: RECREATE
# after a RESTART that did not bring the VM back) and for agent reports (a reconnect ends an outage). Generous, so
# a late commit or another replica's clock skew cannot hide one; an acked VM stays selected only while it is down.
_RECENT_SECONDS = 60.0
# Session.info keys of per-transaction reads.
_SETTINGS_KEY = "ha_controller_settings"
_MIGRATING_KEY = "ha_controller_migrating"
# Actions appended by this transaction's units, written at its end: {(cluster_id, instance_name): {kind}}.
_PENDING_ADDED_KEY = "ha_controller_pending_added"
# VM rows bound to a new VM uuid by this transaction's units, not flushed yet: {vm_uuid: row}.
_BOUND_KEY = "ha_controller_bound"
# What a shared transaction read up front for its units (see Controller._prefetch): a _Prefetched.
_PREFETCHED_KEY = "ha_controller_prefetched"


# The statements a reconcile runs per VM, built once: under a burst (a host's VMs restarted) building them again for
# every VM (operator overloading, coercion) was a tenth of the worker's time.
_ROW_BY_ID: Final = select(ManagedVmRow).where(ManagedVmRow.id == bindparam("row_id")).with_for_update()
_ROW_BY_UUID: Final = select(ManagedVmRow).where(ManagedVmRow.vm_uuid == bindparam("vm_uuid")).with_for_update()
_ROW_BY_NAME: Final = (
    select(ManagedVmRow)
    .where(ManagedVmRow.cluster_id == bindparam("cluster_id"), ManagedVmRow.instance_name == bindparam("name"))
    .with_for_update()
)
_ROWS_BY_UUIDS_OR_IDS: Final = (
    select(ManagedVmRow)
    .where(
        or_(
            ManagedVmRow.vm_uuid.in_(bindparam("uuids", expanding=True)),
            ManagedVmRow.id.in_(bindparam("ids", expanding=True)),
        )
    )
    .with_for_update()
)
_PENDING_KINDS_BY_NAMES: Final = select(HaEventRow.cluster_id, HaEventRow.instance_name, HaEventRow.kind).where(
    HaEventRow.category == ACTION,
    HaEventRow.action_state == PENDING,
    HaEventRow.instance_name.in_(bindparam("names", expanding=True)),
)
_PENDING_KINDS: Final = select(HaEventRow.kind).where(
    HaEventRow.category == ACTION,
    HaEventRow.action_state == PENDING,
    HaEventRow.cluster_id == bindparam("cluster_id"),
    HaEventRow.instance_name == bindparam("name"),
)


class _UnitFailedError(Exception):
    """A unit of a shared transaction failed; the transaction is rolled back and run again without it."""

    def __init__(self, index: int) -> None:
        super().__init__(f"unit {index} failed")
        self.index = index


def _read(session: Session, statement: Executable, params: Mapping[str, object]) -> Result[Any]:
    """A reconcile's read, without flushing the transaction's changed rows first: the flush before every read
    was most of a burst's cost (two a VM). Safe for the reads it runs (_ROW_BY_UUID, _ROW_BY_NAME, _ROW_BY_ID,
    _PENDING_KINDS, and the up-front _ROWS_BY_UUIDS_OR_IDS and _PENDING_KINDS_BY_NAMES): a unit changes none of
    the columns they filter on but a VM row's uuid, which _observe_in tracks itself (_BOUND_KEY); a row already
    loaded is returned as this transaction left it (the session's identity map); a transaction's events are written
    at its end, and its units see each other's pending actions through _PENDING_ADDED_KEY. The rows are flushed
    once, at the end of the transaction."""
    with session.no_autoflush:
        return session.execute(statement, params)


# The managed VM row a unit reconciles, when known before it runs: the VM's uuid (str) or the row's id (int).
UnitRow = str | int


@dataclass
class _Prefetched:
    """The rows a shared transaction's units reconcile, and those rows' pending action kinds, read in two statements
    at its start rather than two a VM. Together, units flush nothing until the end, so what a unit would have read
    itself is what was read here; a row not looked up here is read by the unit as before."""

    uuids: set[str]  # looked up: a uuid here without a row has none
    rows_by_uuid: dict[str, ManagedVmRow]  # those that exist
    rows_by_id: dict[int, ManagedVmRow]  # those that exist (a unit whose id is missing reads it, and fails, itself)
    pending: dict[tuple[str, str], list[str]]  # by (cluster_id, instance_name), for every row read


class _SharedWriteFailedError(Exception):
    """The events and rows that a shared transaction writes at its end failed; its units run again one at a time."""


def _note_pending(session: Session, items: Sequence[NewAction | NewNotification]) -> None:
    """Records a unit's actions, which are pending from now on, for the units after it in the same transaction."""
    added: dict[tuple[str, str], set[str]] = session.info[_PENDING_ADDED_KEY]
    for item in items:
        if isinstance(item, NewAction):
            added.setdefault((item.cluster_id, item.instance_name), set()).add(item.kind)


_CAUSE_TO_PROTO = {
    dm.ActionCause.HALTED: ha_service_pb2.RESTART_CAUSE_VM_HALTED,
    dm.ActionCause.HOST_DEAD_STILL_RUNNING: ha_service_pb2.RESTART_CAUSE_HOST_DEAD,
}


@dataclass(frozen=True)
class ControllerConfig:
    tick_interval: float = 1.0
    watch_bookmark_interval: float = 1.0
    reconnect_initial_backoff: float = 0.2
    reconnect_max_backoff: float = 5.0
    event_retention: int = 100_000  # HA events kept (pending actions are always kept)
    revision_persist_interval: float = 0.5
    # How often a tick looks at every down VM again rather than only those a time rule or an ack may have changed:
    # the level-triggered safety net under the narrower per-tick selection.
    full_resync_interval: float = 30.0


@dataclass
class _Snapshot:
    pools: list[sync_service_pb2.Pool]
    hosts: list[sync_service_pb2.Host]
    vms: list[sync_service_pb2.Vm]
    revision: int
    process: bool


@dataclass(frozen=True)
class _FencingReads:
    """What the fencing check of every pool reads, at once."""

    settings: HaSettings
    overrides: Mapping[str, bool]
    pins: Mapping[str, ClusterPinRow]
    notified: Mapping[str, bool]


@dataclass
class _Apply:
    """A SetVmHaConfig to make after the transaction that decided it."""

    row_id: int
    vm_uuid: str
    config: dm.HaConfig
    repair_notice: dm.Notification | None = None


@dataclass
class _Work:
    events: list[NewAction | NewNotification] = field(default_factory=list)
    applies: list[_Apply] = field(default_factory=list)


def _split_kinds(text: str) -> frozenset[dm.ActionKind]:
    return frozenset(dm.ActionKind(k) for k in text.split(",") if k)


def _config_key(config: dm.HaConfig | None) -> str:
    return "" if config is None else f"{config.ha_restart_priority}|{config.order}|{config.start_delay}"


def _config_from_key(text: str) -> dm.HaConfig | None:
    if not text:
        return None
    priority, order, delay = text.split("|")
    return dm.HaConfig(priority, int(order), int(delay))


class Controller:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        sync: SyncClient,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.time,
        metrics: HaMetrics | None = None,
        config: ControllerConfig | None = None,
        is_active_replica: Callable[[], bool] = lambda: True,
        on_pool_change: Callable[[str | None], None] = lambda cluster_id: None,
        lease_fence: tuple[str, int] | None = None,
    ) -> None:
        self.sessions = sessions
        # The controller lease this controller runs under, (holder, fencing token); None without a lease (tests).
        self.lease_fence = lease_fence
        self.sync = sync
        self.bus = bus
        self.clock = clock
        self.metrics = metrics or HaMetrics()
        self.config = config or ControllerConfig()
        self.is_active_replica = is_active_replica
        # Told (from the watch thread, as soon as a pool change arrives) so pool-fact caches drop the entry;
        # None: the stream (re)connected and changes may have been missed, drop everything.
        self.on_pool_change = on_pool_change
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # The worker's view of the mirror.
        self.pools: dict[str, sync_service_pb2.Pool] = {}
        self.hosts: dict[str, sync_service_pb2.Host] = {}
        self.host_since: dict[str, float | None] = {}
        self.vms: dict[str, sync_service_pb2.Vm] = {}
        self.vm_by_name: dict[tuple[str, str], str] = {}
        self.processed_revision = 0
        self._persisted_revision = 0
        self._last_persist = 0.0
        self._fenced_out = False
        self._next_full_resync = float("-inf")
        self.connected = threading.Event()
        self.snapshots_taken = 0
        # Hosts a resume listing showed dead that this controller did not know dead: the replay from the persisted
        # revision may hold their death, which the listed (already dead) cache would not show as a change.
        self._dead_at_listing: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self.sessions() as session:
            state = session.get(ControllerStateRow, CONTROLLER_NAME)
            self._persisted_revision = state.sync_revision if state is not None else 0
        self.processed_revision = self._persisted_revision
        for target, name in ((self._watch_loop, "ha-controller-watch"), (self._work_loop, "ha-controller-work")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.cancel()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def notify_decision(self, cluster_id: str, instance_name: str) -> None:
        """A decision committed: apply it now if the VM is already in the mirror. Only then is there work (see
        _decision_unit), so the worker is not woken for each of a burst of decisions made ahead of their VMs: a VM
        the worker adds to the mirror later is bound when it observes the VM, and the tick binds any left over."""
        if (cluster_id, instance_name) in self.vm_by_name:
            self._queue.put(("decision", cluster_id, instance_name))

    def tick_now(self) -> None:
        self._queue.put(("tick",))

    def wait_processed(self, timeout: float = 10.0) -> bool:
        """Waits until the worker drained what was queued before this call (tests)."""
        done = threading.Event()
        self._queue.put(("barrier", done))
        return done.wait(timeout)

    # --- watcher thread ---------------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        backoff = self.config.reconnect_initial_backoff
        since: int | None = None
        first = True
        while not self._stop.is_set():
            try:
                if since is None:
                    pools, pools_revision = self.sync.list_pools()
                    hosts, hosts_revision = self.sync.list_hosts()
                    vms, vms_revision = self.sync.list_vms()
                    listed = min(pools_revision, hosts_revision, vms_revision)
                    newest = max(pools_revision, hosts_revision, vms_revision)
                    resume = first and 0 < self._persisted_revision <= newest
                    self._queue.put(_Snapshot(pools, hosts, vms, listed, process=not resume))
                    since = self._persisted_revision if resume else listed
                    first = False
                stream = self.sync.watch(since, bookmark_interval=self.config.watch_bookmark_interval)
                with self._stream_lock:
                    if self._stop.is_set():
                        stream.cancel()
                        return
                    self._stream = stream
                self.on_pool_change(None)
                self.connected.set()
                self.metrics.controller_connected.set(1)
                for item in stream:
                    if self._stop.is_set():
                        return
                    backoff = self.config.reconnect_initial_backoff
                    if item.HasField("changes") or item.HasField("change"):
                        for change in item.changes.changes if item.HasField("changes") else (item.change,):
                            if change.HasField("pool"):
                                self.on_pool_change(change.pool.cluster_id or change.cluster_id)
                            self._queue.put(change)
                            since = max(since, change.revision)
                    else:
                        self._queue.put(("bookmark", item.bookmark.revision))
                        since = max(since, item.bookmark.revision)
            except SyncOutOfRangeError:
                log.info("sync revision %s no longer retained; listing again", since)
                since = None
                continue
            except SyncError as error:
                if self._stop.is_set():
                    return
                log.warning("sync_service watch failed (%s); reconnecting in %.1fs", error, backoff)
            except Exception:
                log.exception("controller watcher failed; reconnecting")
            finally:
                self.connected.clear()
                self.metrics.controller_connected.set(0)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.config.reconnect_max_backoff)

    # --- worker thread ----------------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        next_tick = time.monotonic()
        backlog: deque[object] = deque()
        holding = False
        while not self._stop.is_set():
            if not backlog:
                with contextlib.suppress(queue.Empty):
                    backlog.append(self._queue.get(timeout=max(0.0, next_tick - time.monotonic())))
            # Whatever else has arrived meanwhile, so a burst of VM changes shares transactions.
            while len(backlog) < _BACKLOG_LIMIT:
                try:
                    backlog.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._stop.is_set():
                return
            segment = self._next_segment(backlog)
            if segment and not self.is_active_replica():
                # The lease cannot be proven held (a renewal is late): act on nothing, and drop nothing either.
                # Should the lease be lost, this controller is stopped and the next one resumes from the stored
                # revision, which never passes what is held here.
                backlog.extendleft(reversed(segment))
                if not holding:
                    holding = True
                    log.warning("controller lease unproven (a renewal is late): holding work until it is")
                self._stop.wait(_INACTIVE_RECHECK_SECONDS)
                continue
            if holding:
                holding = False
                log.info("controller lease proven again: resuming with %d items held", len(backlog) + len(segment))
            try:
                if segment:
                    self._handle_segment(segment)
                ticked = any(isinstance(item, tuple) and item[0] == "tick" for item in segment)
                if time.monotonic() >= next_tick or ticked:
                    if self.is_active_replica():
                        self._tick()
                    next_tick = time.monotonic() + self.config.tick_interval
                if not backlog and self._queue.empty():
                    self._persist_revision(force=False)
            except Exception:
                log.exception("controller failed to process %s", ", ".join(sorted({type(i).__name__ for i in segment})))

    @staticmethod
    def _batchable(item: object) -> bool:
        """VM changes and decisions only touch the VM caches, which no reconcile reads: their reconciles can share
        a transaction. Host and pool changes (which reconciles read), bookmarks, ticks and barriers cannot."""
        if isinstance(item, sync_service_pb2.Change):
            return item.HasField("vm")
        return isinstance(item, tuple) and item[0] == "decision"

    @classmethod
    def _next_segment(cls, backlog: deque[object]) -> list[object]:
        """The leading run of batchable items, or else the one item at the front."""
        if not backlog:
            return []
        segment = [backlog.popleft()]
        if cls._batchable(segment[0]):
            while backlog and cls._batchable(backlog[0]):
                segment.append(backlog.popleft())
        return segment

    def _handle_segment(self, segment: list[object]) -> None:
        if self._batchable(segment[0]):  # then all of it is (see _next_segment)
            self._on_vm_items(segment)
        else:
            self._handle(segment[0])

    def _handle(self, item: object) -> None:
        """One item that is not a VM change or decision (those go to _on_vm_items)."""
        if isinstance(item, sync_service_pb2.Change):
            self._on_change(item)
        elif isinstance(item, _Snapshot):
            self._on_snapshot(item)
        elif isinstance(item, tuple):
            if item[0] == "bookmark":
                self.processed_revision = max(self.processed_revision, int(item[1]))
                self._persist_revision(force=False)
            elif item[0] == "barrier":
                item[1].set()

    def _persist_revision(self, *, force: bool) -> None:
        if self.processed_revision == self._persisted_revision:
            return
        if not force and time.monotonic() - self._last_persist < self.config.revision_persist_interval:
            return
        revision, now = self.processed_revision, self.clock()

        def transaction() -> bool:
            with write_transaction(self.sessions) as session:
                if self.lease_fence is not None:
                    # Fenced: a controller whose lease was taken over must not move the new holder's revision
                    # (back), which would make the next controller start over from an older one.
                    holder, token = self.lease_fence
                    stored = session.connection().execute(
                        update(ControllerStateRow)
                        .where(
                            ControllerStateRow.name == CONTROLLER_NAME,
                            ControllerStateRow.holder == holder,
                            ControllerStateRow.fencing_token == token,
                        )
                        .values(sync_revision=revision, update_time=now)
                    )
                    return bool(stored.rowcount == 1)
                state = session.get(ControllerStateRow, CONTROLLER_NAME)
                if state is None:
                    session.add(ControllerStateRow(name=CONTROLLER_NAME, sync_revision=revision, update_time=now))
                else:
                    state.sync_revision = revision
                    state.update_time = now
                return True

        if not retry_transient(transaction):
            if not self._fenced_out:
                self._fenced_out = True
                log.warning("controller lease taken over: revision %s and later not stored", revision)
            return
        self._persisted_revision = revision
        self._last_persist = time.monotonic()
        self.metrics.controller_revision.set(revision)

    # --- mirror caches ----------------------------------------------------------------------------------------

    def _cache_vm(self, vm: sync_service_pb2.Vm, removed: bool) -> bool:
        """Updates the VM cache; False when the change is older than what the cache holds."""
        known = self.vms.get(vm.uuid)
        if known is not None and vm.revision and known.revision > vm.revision:
            return False
        if removed:
            self.vms.pop(vm.uuid, None)
            if self.vm_by_name.get((vm.cluster_id, vm.name)) == vm.uuid:
                del self.vm_by_name[(vm.cluster_id, vm.name)]
        else:
            if known is not None and (known.cluster_id, known.name) != (vm.cluster_id, vm.name):
                self.vm_by_name.pop((known.cluster_id, known.name), None)
            self.vms[vm.uuid] = vm
            self.vm_by_name[(vm.cluster_id, vm.name)] = vm.uuid
        return True

    def _host_views(self) -> dict[str, dm.HostView]:
        return {uuid: dm.HostView(host.live, self.host_since.get(uuid)) for uuid, host in self.hosts.items()}

    def _cache_host(self, host: sync_service_pb2.Host, removed: bool) -> bool | None:
        """Updates the host cache; the new liveness when it changed, else None."""
        known = self.hosts.get(host.uuid)
        if known is not None and host.revision and known.revision > host.revision:
            return None
        if removed or host.removed:
            self.hosts.pop(host.uuid, None)
            return None
        self.hosts[host.uuid] = host
        if known is None:
            self.host_since.setdefault(host.uuid, None)
            return None if host.live else False
        if known.live != host.live:
            self.host_since[host.uuid] = self.clock()
            return host.live
        return None

    # --- events from the stream -------------------------------------------------------------------------------

    def _on_snapshot(self, snapshot: _Snapshot) -> None:
        self.snapshots_taken += 1
        self.pools = {p.cluster_id: p for p in snapshot.pools}
        known_dead = {uuid for uuid, host in self.hosts.items() if not host.live}
        newly_dead = [
            host for host in snapshot.hosts if not host.live and not host.removed and host.uuid not in known_dead
        ]
        for host in snapshot.hosts:
            self._cache_host(host, False)
        listed = {vm.uuid for vm in snapshot.vms}
        for vm in snapshot.vms:
            self._cache_vm(vm, vm.removed)
        for uuid in [u for u in self.vms if u not in listed]:
            self._cache_vm(self.vms[uuid], True)
        if snapshot.process:
            self._run_all(
                [partial(self._observe_in, vm=vm, removed=vm.removed) for vm in snapshot.vms],
                [vm.uuid for vm in snapshot.vms],
            )
            # Managed VMs that vanished while nobody watched.
            with self.sessions() as session:
                gone = [
                    (row.cluster_id, row.instance_name, row.vm_uuid)
                    for row in session.execute(
                        select(ManagedVmRow).where(ManagedVmRow.present.is_(True), ManagedVmRow.vm_uuid.is_not(None))
                    ).scalars()
                    if row.vm_uuid not in listed
                ]
            vanished = [
                sync_service_pb2.Vm(uuid=gone_uuid, name=name, cluster_id=cluster_id)
                for cluster_id, name, gone_uuid in gone
                if gone_uuid is not None
            ]
            self._run_all(
                [partial(self._observe_in, vm=vm, removed=True) for vm in vanished], [vm.uuid for vm in vanished]
            )
            # A host that died while nobody watched: its VMs that did not change since are not among the VMs
            # observed above, so reconcile them as its death would have (idempotent for those already handled).
            for host in newly_dead:
                self._on_host_died(host)
            self.processed_revision = snapshot.revision
        else:
            # Resuming: the watch from the persisted revision replays what happened meanwhile, in order; a death
            # among it must still count as one although the listing already shows the host dead (_on_change).
            self._dead_at_listing = {host.uuid for host in newly_dead}
        self._check_fencing_all()

    def _on_change(self, change: sync_service_pb2.Change) -> None:
        """A host or pool change (VM changes go to _on_vm_items)."""
        removed = change.type == sync_service_pb2.CHANGE_TYPE_REMOVED
        if change.HasField("host"):
            liveness = self._cache_host(change.host, removed)
            listed_dead = change.host.uuid in self._dead_at_listing
            self._dead_at_listing.discard(change.host.uuid)
            if liveness is False or (listed_dead and not removed and not change.host.live):
                self._on_host_died(change.host)
        elif change.HasField("pool"):
            if removed:
                self.pools.pop(change.pool.cluster_id, None)
            else:
                self.pools[change.pool.cluster_id] = change.pool
            self._check_fencing(change.pool.cluster_id or change.cluster_id)
        self._processed(change)

    def _processed(self, change: sync_service_pb2.Change) -> None:
        self.processed_revision = max(self.processed_revision, change.revision)
        if change.HasField("commit_time"):
            self.metrics.controller_lag.set(max(0.0, time.time() - cv.timestamp_seconds(change.commit_time)))

    def _on_vm_items(self, items: Sequence[object]) -> None:
        """VM changes and decisions, in order, reconciled in shared transactions (see _run_all). Each item updates
        the caches before the next one is looked at, exactly as one by one; reconciles read none of them."""
        units: list[Callable[[Session], _Work]] = []
        uuids: list[str] = []
        changes: list[sync_service_pb2.Change] = []
        for item in items:
            if isinstance(item, sync_service_pb2.Change):
                removed = item.type == sync_service_pb2.CHANGE_TYPE_REMOVED or item.vm.removed
                self._cache_vm(item.vm, removed)
                units.append(partial(self._observe_in, vm=item.vm, removed=removed))
                uuids.append(item.vm.uuid)
                changes.append(item)
            elif isinstance(item, tuple) and item[0] == "decision":
                decision = self._decision_unit(str(item[1]), str(item[2]))
                if decision is not None:
                    units.append(decision[0])
                    uuids.append(decision[1])
        self._run_all(units, uuids)
        for change in changes:
            self._processed(change)

    def _decision_unit(self, cluster_id: str, instance_name: str) -> tuple[Callable[[Session], _Work], str] | None:
        """The unit that observes a decided VM the mirror already knows, and that VM's uuid; None if it knows none."""
        uuid = self.vm_by_name.get((cluster_id, instance_name))
        if uuid is None or uuid not in self.vms:
            return None
        return partial(self._observe_in, vm=self.vms[uuid], removed=False), uuid

    def _on_host_died(self, host: sync_service_pb2.Host) -> None:
        with self.sessions() as session:
            ids = list(
                session.execute(
                    select(ManagedVmRow.id).where(
                        ManagedVmRow.ever_present.is_(True),
                        or_(
                            ManagedVmRow.observed_host_uuid == host.uuid,
                            ManagedVmRow.last_running_host_uuid == host.uuid,
                        ),
                    )
                ).scalars()
            )
        self._run_all([partial(self._reconcile_again, row_id=row_id) for row_id in ids], ids)

    # --- reconcile --------------------------------------------------------------------------------------------

    def _run(self, work: Callable[[Session], _Work]) -> None:
        """One transaction of `work`, its events published, then its SetVmHaConfig calls."""
        self._run_all([work])

    def _run_all(self, units: Sequence[Callable[[Session], _Work]], rows: Sequence[UnitRow] | None = None) -> None:
        """Each unit as `_run` would, in order, with the units sharing transactions (up to _UNITS_PER_TRANSACTION):
        per-transaction cost is paid once per burst rather than once per VM. A transaction's events are written
        together at its end (one revision allocation, one insert); each unit's actions are visible to the units
        after it in the same transaction (see _pending_kinds), so deduplication is exactly as one by one. The
        events of a transaction are published once, after its commit. A unit that decides SetVmHaConfig calls ends
        its transaction, so they are made before the next unit runs, as one by one. A unit that fails (other than
        transiently) is logged and left out, and the transaction runs again without it: one VM's error does not
        lose the others'. When the shared write at the end fails (other than transiently), no one unit is to blame
        yet: the same units run again one at a time, each unit's events and rows written before the next runs, which
        names the one at fault. `rows`, when given, is the row each unit reconciles (see _prefetch)."""
        start = 0
        failed: set[int] = set()
        one_at_a_time = False
        while start < len(units):
            try:
                start, events, applies = retry_transient(
                    partial(self._units_transaction, units, start, failed, one_at_a_time=one_at_a_time, rows=rows)
                )
            except _UnitFailedError as failure:
                log.error("controller failed to reconcile one VM; the others go on", exc_info=failure.__cause__)
                failed.add(failure.index)
                continue
            except _SharedWriteFailedError as failure:
                log.warning(
                    "controller failed to write a shared transaction; running its VMs one at a time",
                    exc_info=failure.__cause__,
                )
                one_at_a_time = True
                continue
            one_at_a_time = False
            self._published(events)
            for apply in applies:
                self._apply(apply)

    def _units_transaction(
        self,
        units: Sequence[Callable[[Session], _Work]],
        start: int,
        failed: set[int],
        *,
        one_at_a_time: bool,
        rows: Sequence[UnitRow] | None = None,
    ) -> tuple[int, list[ha_service_pb2.HaEvent], list[_Apply]]:
        """Runs units from `start` in one transaction; the index after the last one run, its events and applies.

        Together (the usual way), the units' rows are flushed and their events written once, at the end; a database
        error then, or during a unit (whose reads may flush an earlier unit's rows), is not known to be one unit's,
        and raises _SharedWriteFailedError. One at a time, each unit's events and rows are written before the next
        unit runs, so any error is the unit's own."""
        events: list[ha_service_pb2.HaEvent] = []
        deferred: list[NewAction | NewNotification] = []
        applies: list[_Apply] = []
        with write_transaction(self.sessions) as session:
            session.info[_PENDING_ADDED_KEY] = {}
            if rows is not None and not one_at_a_time:
                self._prefetch(session, rows[start : start + _UNITS_PER_TRANSACTION])
            index, ran = start, 0
            while index < len(units) and ran < _UNITS_PER_TRANSACTION and not applies:
                if index in failed:
                    index += 1
                    continue
                try:
                    done = units[index](session)
                    if one_at_a_time:
                        if done.events:
                            events += append_events(session, done.events, self.clock())
                        session.flush()
                except Exception as error:
                    if is_transient_db_error(error):
                        raise
                    if isinstance(error, SQLAlchemyError) and not one_at_a_time:
                        raise _SharedWriteFailedError() from error
                    raise _UnitFailedError(index) from error
                deferred += done.events
                _note_pending(session, done.events)
                index, ran, applies = index + 1, ran + 1, done.applies
            if not one_at_a_time:
                try:
                    if deferred:
                        events = append_events(session, deferred, self.clock())
                    session.flush()
                except Exception as error:
                    if is_transient_db_error(error):
                        raise
                    raise _SharedWriteFailedError() from error
        return index, events, applies

    @staticmethod
    def _prefetch(session: Session, unit_rows: Sequence[UnitRow]) -> None:
        """Reads the units' rows (by VM uuid or row id) and their pending action kinds (_Prefetched)."""
        uuids = sorted({key for key in unit_rows if isinstance(key, str)})
        ids = sorted({key for key in unit_rows if isinstance(key, int)})
        by_uuid: dict[str, ManagedVmRow] = {}
        by_id: dict[int, ManagedVmRow] = {}
        pending: dict[tuple[str, str], list[str]] = {}
        for row in _read(session, _ROWS_BY_UUIDS_OR_IDS, {"uuids": uuids, "ids": ids}).scalars():
            by_id[row.id] = row
            if row.vm_uuid is not None:
                by_uuid[row.vm_uuid] = row
            pending[(row.cluster_id, row.instance_name)] = []
        # At most _UNITS_PER_TRANSACTION names (under _NAME_CHUNK): one statement.
        names = sorted({name for _, name in pending})
        if names:
            for found in _read(session, _PENDING_KINDS_BY_NAMES, {"names": names}):
                kinds = pending.get((found.cluster_id, found.instance_name))
                if kinds is not None:
                    kinds.append(found.kind)
        session.info[_PREFETCHED_KEY] = _Prefetched(set(uuids), by_uuid, by_id, pending)

    def _published(self, events: Sequence[ha_service_pb2.HaEvent]) -> None:
        if not events:
            return
        for event in events:
            if event.HasField("action"):
                self.metrics.actions.labels(kind=ha_service_pb2.HaActionKind.Name(event.action.kind)).inc()
            else:
                kind = ha_service_pb2.HaNotificationKind.Name(event.notification.kind)
                self.metrics.notifications.labels(kind=kind).inc()
        self.bus.publish(events[-1].revision)

    def _observe_in(self, session: Session, vm: sync_service_pb2.Vm, removed: bool) -> _Work:
        # Rows bound to a new VM by this transaction's units: their new uuid is not flushed yet (see _read).
        bound: dict[str, ManagedVmRow] = session.info.setdefault(_BOUND_KEY, {})
        prefetched: _Prefetched | None = session.info.get(_PREFETCHED_KEY)
        row = bound.get(vm.uuid)
        if row is None and prefetched is not None and vm.uuid in prefetched.uuids:
            row = prefetched.rows_by_uuid.get(vm.uuid)
        elif row is None:
            row = _read(session, _ROW_BY_UUID, {"vm_uuid": vm.uuid}).scalar_one_or_none()
        if row is not None and row.vm_uuid != vm.uuid:
            row = None  # bound to another VM by an earlier unit
        if row is None and not removed:
            by_name = {"cluster_id": vm.cluster_id, "name": vm.name}
            candidate = _read(session, _ROW_BY_NAME, by_name).scalar_one_or_none()
            # Bind by name a VM decided before it existed, or re-bind one whose old VM is gone.
            if candidate is not None and (candidate.vm_uuid is None or not candidate.present):
                row = candidate
                if row.vm_uuid != vm.uuid:
                    if row.vm_uuid is not None:
                        self._forget_previous_vm(row)
                    row.vm_uuid = vm.uuid
                    row.observed_revision = 0
                    bound[vm.uuid] = row
        if row is None:
            return _Work()
        if vm.revision and vm.revision <= row.observed_revision:
            return _Work()
        if removed and not row.ever_present:
            return _Work()
        now = self.clock()
        power = cv.XAPI_POWER_TO_NAME.get(vm.xapi_power_state)
        observation = dm.VmObservation(
            at=now,
            present=not removed,
            power_state=dm.XapiPowerState.parse(power) if power and not removed else None,
            resident_host=(vm.resident_host_uuid or None) if not removed else None,
            ha=None if removed else dm.HaConfig(vm.ha_restart_priority, vm.order, vm.start_delay_seconds),
        )
        if vm.revision:
            row.observed_revision = vm.revision
        return self._reconcile(session, row, observation, now)

    @staticmethod
    def _forget_previous_vm(row: ManagedVmRow) -> None:
        """A new VM under a decided name: its predecessor's outage, hosts and confirmed config are not its own."""
        row.ever_present = False
        row.was_running = False
        row.observed_power_state = ""
        row.observed_host_uuid = ""
        row.observed_since = None
        row.last_running_host_uuid = ""
        row.down_since = None
        row.host_failed = False
        row.actions_requested = ""
        row.overdue_notified = False
        row.config_confirmed = False
        row.drift_reported = ""
        row.next_protection_attempt = None
        if row.protection_state == "PROTECTED":
            row.protection_state = "PENDING"

    def _reconcile_again(self, session: Session, row_id: int) -> _Work:
        prefetched: _Prefetched | None = session.info.get(_PREFETCHED_KEY)
        row = prefetched.rows_by_id.get(row_id) if prefetched is not None else None
        if row is None:
            row = _read(session, _ROW_BY_ID, {"row_id": row_id}).scalar_one()
        now = self.clock()
        return self._reconcile(session, row, self._last_observation(row, now), now)

    @staticmethod
    def _last_observation(row: ManagedVmRow, now: float) -> dm.VmObservation:
        return dm.VmObservation(
            at=now,
            present=row.present,
            power_state=dm.XapiPowerState.parse(row.observed_power_state) if row.observed_power_state else None,
            resident_host=row.observed_host_uuid or None,
            ha=dm.HaConfig(row.observed_priority, row.observed_order, row.observed_start_delay_s)
            if row.present
            else None,
        )

    @staticmethod
    def _settings(session: Session) -> HaSettings:
        """Read once per transaction: units sharing one see the same settings, as if each ran alone at its start."""
        cached = session.info.get(_SETTINGS_KEY)
        if not isinstance(cached, HaSettings):
            cached = session.info[_SETTINGS_KEY] = load_settings(session)[0]
        return cached

    @staticmethod
    def _pending_kinds(session: Session, cluster_id: str, instance_name: str) -> list[str]:
        """The VM's pending action kinds: those committed, and those of earlier units of this transaction (written
        at its end, see _units_transaction)."""
        prefetched: _Prefetched | None = session.info.get(_PREFETCHED_KEY)
        if prefetched is not None and (cluster_id, instance_name) in prefetched.pending:
            kinds = list(prefetched.pending[(cluster_id, instance_name)])
        else:
            kinds = list(_read(session, _PENDING_KINDS, {"cluster_id": cluster_id, "name": instance_name}).scalars())
        added: dict[tuple[str, str], set[str]] = session.info.get(_PENDING_ADDED_KEY, {})
        kinds += sorted(added.get((cluster_id, instance_name), set()).difference(kinds))
        return kinds

    @staticmethod
    def _cluster_migrating(session: Session, cluster_id: str) -> bool:
        """Read once per cluster and transaction, like the settings."""
        migrating: dict[str, bool] = session.info.setdefault(_MIGRATING_KEY, {})
        if cluster_id not in migrating:
            migrating[cluster_id] = cluster_migrating(session, cluster_id)
        return migrating[cluster_id]

    def _reconcile(self, session: Session, row: ManagedVmRow, observation: dm.VmObservation, now: float) -> _Work:
        settings = self._settings(session)
        work = _Work()
        was_running = row.was_running
        wanted = (
            dm.WantedState.STOPPED_ON_PURPOSE
            if row.wanted_state == "STOPPED"
            else dm.WantedState.RUNNING
            if row.wanted_state == "RUNNING" and was_running
            else dm.WantedState.UNKNOWN
        )
        decided = dm.HaConfig(row.ha_restart_priority, row.ha_order, row.start_delay_s)
        refusal = (
            unprotected_reason_for_error(row.unprotected_reason.split(":", 1)[0])
            if row.protection_state == "UNPROTECTED"
            else None
        )
        vm = dm.ManagedVm(
            vm_uuid=row.vm_uuid or "",
            cluster_id=row.cluster_id,
            vm_type=dm.VmType(row.vm_type),
            ha_enabled=row.offering_ha_enabled,
            mode=dm.HaMode(row.mode),
            wanted=wanted,
            decided=decided,
            redundant_router=row.redundant_router,
            unprotected_reason=refusal,
            config_confirmed=row.config_confirmed,
        )
        memory = dm.VmMemory(
            last=self._last_observation(row, row.observed_since or now) if row.ever_present else None,
            last_running_host=row.last_running_host_uuid or None,
            down_since=row.down_since,
            host_failed=row.host_failed,
            actions_requested=_split_kinds(row.actions_requested),
            overdue_notified=row.overdue_notified,
            drift_reported=_config_from_key(row.drift_reported),
        )
        pending = [
            dm.PendingAction(dm.ActionKind(kind), dm.ActionCause.HALTED)
            for kind in self._pending_kinds(session, row.cluster_id, row.instance_name)
        ]
        agent = (
            dm.AgentState(dm.AgentStatus(row.agent_status), row.agent_status_time)
            if row.agent_status and row.agent_status_time is not None
            else None
        )
        # R8: while the cluster migrates, each VM is owned by its actual config and nothing is "repaired".
        migrating = self._cluster_migrating(session, row.cluster_id)
        result = reconcile_vm(
            dm.ReconcileInput(
                vm=vm,
                current=observation,
                now=now,
                memory=memory,
                hosts=self._host_views(),
                agent=agent,
                pending_actions=tuple(pending),
                grace=dm.GracePeriods(
                    ha_restart_overdue_seconds=settings.restart_overdue_grace,
                    agent_disconnected_seconds=settings.agent_disconnected_grace,
                ),
                drift_repair_enabled=settings.drift_repair_enabled,
                cluster_migrating=migrating,
                pool_ha_enabled=self._pool_ha_enabled(row.cluster_id),
            )
        )
        vm_type = cv.VM_TYPE_TO_PROTO[dm.VmType(row.vm_type)]
        for action in result.actions:
            work.events.append(
                NewAction(
                    kind=str(action.kind),
                    cluster_id=row.cluster_id,
                    instance_name=row.instance_name,
                    vm_uuid=row.vm_uuid or "",
                    vm_type=vm_type,
                    message=action.message.replace(action.vm_uuid, f"{row.instance_name} ({action.vm_uuid})", 1),
                    cause=_CAUSE_TO_PROTO.get(action.cause, ha_service_pb2.RESTART_CAUSE_UNSPECIFIED),
                    # As mirrored: a host the mirror does not (or no longer) know is unknown, not a hint.
                    host_uuid=action.host_uuid if action.host_uuid in self.hosts else "",
                )
            )
        for notice in result.notifications:
            work.events.append(self._notification(row, notice))
        # Persist the observation and the memory.
        mem = result.memory
        if observation.present:
            row.ever_present = True
        row.present = observation.present
        row.observed_power_state = str(observation.power_state) if observation.power_state else ""
        row.observed_host_uuid = observation.resident_host or ""
        if observation.ha is not None:
            row.observed_priority = observation.ha.ha_restart_priority
            row.observed_order = observation.ha.order
            row.observed_start_delay_s = observation.ha.start_delay
        row.observed_since = observation.at
        if observation.present and observation.power_state is dm.XapiPowerState.Running:
            row.was_running = True
        elif wanted is dm.WantedState.STOPPED_ON_PURPOSE and observation.power_state is dm.XapiPowerState.Halted:
            row.was_running = False  # deployed-but-stopped again: its next Halted is not an outage
        row.last_running_host_uuid = mem.last_running_host or ""
        row.down_since = mem.down_since
        row.host_failed = mem.host_failed
        row.actions_requested = ",".join(sorted(str(k) for k in mem.actions_requested))
        row.overdue_notified = mem.overdue_notified
        row.update_time = now
        # Config sync: first application, retries of refused writes, drift (R5, R11).
        if observation.present and observation.ha is not None:
            mismatch = ha_config_drift(decided, observation.ha)
            if mismatch is None:
                self._mark_confirmed(row)
            elif migrating:
                pass  # the migration writes this VM's config; its decision follows when the step commits
            elif not row.config_confirmed or row.protection_state == "UNPROTECTED":
                due = row.next_protection_attempt is None or row.next_protection_attempt <= now
                if due and (row.protection_state != "UNPROTECTED" or row.next_protection_attempt is not None):
                    row.next_protection_attempt = now + settings.unprotected_retry_interval
                    work.applies.append(_Apply(row.id, row.vm_uuid or "", decided))
                row.drift_reported = ""
            elif result.drift is not None:
                row.drift_reported = _config_key(mem.drift_reported)
                if result.drift.response is dm.DriftResponse.REPAIR:
                    work.applies.append(_Apply(row.id, row.vm_uuid or "", decided, result.drift.notification))
                else:
                    work.events.append(self._notification(row, result.drift.notification))
            else:
                row.drift_reported = _config_key(mem.drift_reported)
        return work

    @classmethod
    def _mark_confirmed(cls, row: ManagedVmRow) -> None:
        """The mirror reports the decided config."""
        row.config_confirmed = True
        row.drift_reported = ""
        row.next_protection_attempt = None
        cls._mark_protected(row)

    @staticmethod
    def _mark_protected(row: ManagedVmRow) -> None:
        """XAPI holds the decided config."""
        row.protection_attempts = 0
        row.unprotected_reason = ""
        row.protection_state = "PROTECTED" if row.ha_restart_priority == dm.RESTART_PRIORITY else "NOT_APPLICABLE"

    def _pool_ha_enabled(self, cluster_id: str) -> bool:
        pool = self.pools.get(cluster_id)
        return pool is not None and pool.ha.ha_enabled

    @staticmethod
    def _notification(row: ManagedVmRow, notice: dm.Notification) -> NewNotification:
        message = notice.message
        if row.vm_uuid:
            message = message.replace(row.vm_uuid, f"{row.instance_name} ({row.vm_uuid})", 1)
        return NewNotification(
            kind=str(notice.kind),
            cluster_id=row.cluster_id,
            message=message,
            instance_name=row.instance_name,
            vm_uuid=row.vm_uuid or "",
            old_host_uuid=notice.old_host_uuid or "",
            new_host_uuid=notice.new_host_uuid or "",
            downtime_seconds=notice.downtime_seconds,
        )

    # --- HA config writes -------------------------------------------------------------------------------------

    def _apply(self, apply: _Apply) -> None:
        try:
            vm = self.sync.set_vm_ha_config(
                apply.vm_uuid, apply.config.ha_restart_priority, apply.config.order, apply.config.start_delay
            )
        except XapiRefusedError as refusal:
            self.metrics.ha_config_writes.labels(outcome="refused").inc()
            self._run(partial(self._after_refusal, apply=apply, refusal=refusal))
            return
        except SyncError as error:
            self.metrics.ha_config_writes.labels(outcome="error").inc()
            log.warning("SetVmHaConfig(%s) failed, retried later: %s", apply.vm_uuid, error)
            return
        self.metrics.ha_config_writes.labels(outcome="ok").inc()
        # Not into the mirror cache: the reply carries post-write content under the pre-write revision, and
        # observing it would confirm the config before the mirror's older changes (without it) arrive as drift.
        self._run(lambda session: self._after_write(session, apply, vm))

    def _after_write(self, session: Session, apply: _Apply, vm: sync_service_pb2.Vm) -> _Work:
        row = session.execute(_ROW_BY_ID, {"row_id": apply.row_id}).scalar_one_or_none()
        work = _Work()
        if row is None or row.vm_uuid != apply.vm_uuid:
            return work
        # XAPI's reply, not the mirror's view: the observed_* columns (what re-reconciles read) wait for the mirror.
        observed = dm.HaConfig(vm.ha_restart_priority, vm.order, vm.start_delay_seconds)
        decided = dm.HaConfig(row.ha_restart_priority, row.ha_order, row.start_delay_s)
        if ha_config_drift(decided, observed) is None:
            # XAPI took it. config_confirmed (and drift_reported) wait for the mirror's own report of the config:
            # changes the mirror made before this write may still arrive, and they are neither drift nor new drift.
            self._mark_protected(row)
            if apply.repair_notice is not None:
                work.events.append(self._notification(row, apply.repair_notice))
        return work

    def _after_refusal(self, session: Session, apply: _Apply, refusal: XapiRefusedError) -> _Work:
        row = session.execute(_ROW_BY_ID, {"row_id": apply.row_id}).scalar_one_or_none()
        work = _Work()
        if row is None or row.vm_uuid != apply.vm_uuid:
            return work
        settings = self._settings(session)
        now = self.clock()
        newly = row.protection_state != "UNPROTECTED"
        row.protection_attempts += 1
        row.next_protection_attempt = now + settings.unprotected_retry_interval
        row.drift_reported = ""
        if row.ha_restart_priority == dm.RESTART_PRIORITY:
            row.protection_state = "UNPROTECTED"
            row.unprotected_reason = f"{refusal.xapi_code}: {refusal}"
            if newly:
                work.events.append(
                    NewNotification(
                        kind="VM_UNPROTECTED",
                        cluster_id=row.cluster_id,
                        message=f"XAPI refused ha_restart_priority=restart for {row.instance_name} ({row.vm_uuid}): "
                        f"{refusal.xapi_code}. The VM runs unprotected; ha_service retries every "
                        f"{settings.unprotected_retry_interval:g} s. Add capacity or fix the pool's failover plan.",
                        instance_name=row.instance_name,
                        vm_uuid=row.vm_uuid or "",
                    )
                )
        else:
            log.warning("XAPI refused HA config %s for %s: %s", apply.config, row.instance_name, refusal)
        return work

    # --- periodic tick ----------------------------------------------------------------------------------------

    def _tick(self) -> None:
        """The time rules, the retries and the periodic checks, from one read of a few statements: under load every
        statement costs the worker a wait for the GIL, whatever the statement, so a tick reads what it needs at
        once rather than check by check."""
        now = self.clock()
        full_resync = now >= self._next_full_resync
        synced = self._synced_pools()
        with self.sessions() as session:
            settings, overrides, _ = load_settings(session)
            row_ids = list(session.execute(union_all(*self._tick_selections(now, full_resync, settings))).scalars())
            unbound = self._unbound_decisions(session)
            fencing = self._fencing_reads(session, settings, overrides) if synced else None
            current, floor = counter_values(session, EVENT_REVISION_COUNTER, EVENT_FLOOR_COUNTER)
        again = list(dict.fromkeys(row_ids))
        units: list[Callable[[Session], _Work]] = [partial(self._reconcile_again, row_id=row_id) for row_id in again]
        rows: list[UnitRow] = list(again)
        for cluster_id, name in unbound:
            decision = self._decision_unit(cluster_id, name)
            if decision is not None:
                units.append(decision[0])
                rows.append(decision[1])
        self._run_all(units, rows)
        if full_resync:
            self._next_full_resync = now + self.config.full_resync_interval
        if fencing is not None:
            self._check_fencing_all(synced, fencing)
        self._prune(current, floor)

    def _tick_selections(self, now: float, full_resync: bool, settings: HaSettings) -> list[Select[int]]:
        """The managed VMs a tick reconciles again (ids; a VM may be selected twice).

        Down VMs: every change of the mirror reconciles its VM at once; what a tick adds is what time, an agent
        report or an ack can change. So between full resyncs only these: a VM a host death took down whose
        HA_RESTART_OVERDUE grace has run out; a system VM whose agent has been Disconnected beyond its grace; a VM
        whose agent was reported lately (either way); and a down VM one of whose actions was acknowledged lately (a
        follow-up may be due). A full resync takes every down VM, as a level-triggered controller should.
        Protection: VMs whose HA config is not (yet) confirmed, when their next attempt is due.
        Each selection is served by an index, so a tick costs what it selects, not the table.
        """
        present = ManagedVmRow.ever_present.is_(True)
        down: list[ColumnElement[bool]]
        if full_resync:
            down = [ManagedVmRow.down_since.is_not(None), ManagedVmRow.agent_status == "Disconnected"]
        else:
            down = [
                and_(
                    ManagedVmRow.down_since <= now - settings.restart_overdue_grace,
                    ManagedVmRow.host_failed.is_(True),
                    ManagedVmRow.overdue_notified.is_(False),
                ),
                and_(
                    ManagedVmRow.agent_status == "Disconnected",
                    ManagedVmRow.agent_status_time <= now - settings.agent_disconnected_grace,
                ),
                # Every status named, so the (agent_status, agent_status_time) index serves it.
                and_(
                    ManagedVmRow.agent_status.in_([str(status) for status in dm.AgentStatus]),
                    ManagedVmRow.agent_status_time >= now - _RECENT_SECONDS,
                ),
            ]
        selections = [select(ManagedVmRow.id).where(present, condition) for condition in down]
        if not full_resync:
            selections.append(
                select(ManagedVmRow.id)
                .join(
                    HaEventRow,
                    and_(
                        HaEventRow.cluster_id == ManagedVmRow.cluster_id,
                        HaEventRow.instance_name == ManagedVmRow.instance_name,
                    ),
                )
                .where(
                    # Only actions are acknowledged; the ack_time index serves this.
                    HaEventRow.ack_time >= now - _RECENT_SECONDS,
                    present,
                    or_(ManagedVmRow.down_since.is_not(None), ManagedVmRow.agent_status == "Disconnected"),
                )
            )
        attempt_due = or_(ManagedVmRow.next_protection_attempt.is_(None), ManagedVmRow.next_protection_attempt <= now)
        selections += [
            select(ManagedVmRow.id).where(
                ManagedVmRow.present.is_(True),
                ManagedVmRow.protection_state.in_(("UNPROTECTED", "PENDING")),
                attempt_due,
            ),
            select(ManagedVmRow.id).where(
                ManagedVmRow.present.is_(True),
                ManagedVmRow.protection_state == "NOT_APPLICABLE",
                ManagedVmRow.config_confirmed.is_(False),
                attempt_due,
            ),
        ]
        return selections

    def _unbound_decisions(self, session: Session) -> list[tuple[str, str]]:
        """Decisions not yet bound to a VM, among the names the mirror has (only those can bind, see
        _decision_unit): looked up by name rather than scanning every unbound decision, whose number grows with
        deployments that never produced a VM and made each tick slower."""
        names_by_cluster: dict[str, list[str]] = {}
        for cluster_id, name in self.vm_by_name:
            names_by_cluster.setdefault(cluster_id, []).append(name)
        unbound: list[tuple[str, str]] = []
        for cluster_id, names in names_by_cluster.items():
            for start in range(0, len(names), _NAME_CHUNK):
                unbound.extend(
                    (row.cluster_id, row.instance_name)
                    for row in session.execute(
                        select(ManagedVmRow.cluster_id, ManagedVmRow.instance_name).where(
                            ManagedVmRow.cluster_id == cluster_id,
                            ManagedVmRow.instance_name.in_(names[start : start + _NAME_CHUNK]),
                            ManagedVmRow.ever_present.is_(False),
                        )
                    )
                )
        return unbound

    def _check_fencing(self, cluster_id: str) -> None:
        """POOL_UNFENCED once when a NATIVE cluster's pool HA is off; re-armed when it is fenced again."""
        pool = self.pools.get(cluster_id)
        if pool is None or not cv.pool_synced(pool):
            return
        self._run(lambda session: self._check_fencing_in(session, cluster_id, pool))

    def _synced_pools(self) -> dict[str, sync_service_pb2.Pool]:
        return {cluster_id: pool for cluster_id, pool in self.pools.items() if cv.pool_synced(pool)}

    @staticmethod
    def _fencing_reads(session: Session, settings: HaSettings, overrides: Mapping[str, bool]) -> _FencingReads:
        notified = {
            cluster_id: bool(flag)
            for cluster_id, flag in session.execute(
                select(ClusterStateRow.cluster_id, ClusterStateRow.unfenced_notified)
            )
        }
        return _FencingReads(settings, overrides, load_pins(session), notified)

    def _check_fencing_all(
        self, synced: Mapping[str, sync_service_pb2.Pool] | None = None, reads: _FencingReads | None = None
    ) -> None:
        """Every synced pool's fencing check, from one read; only a pool whose fencing state changes takes a write
        transaction (which checks again), so an idle tick writes nothing however many pools there are."""
        if synced is None:
            synced = self._synced_pools()
        if not synced:
            return
        if reads is None:
            with self.sessions() as session:
                settings, overrides, _ = load_settings(session)
                reads = self._fencing_reads(session, settings, overrides)
        for cluster_id, pool in synced.items():
            unfenced = self._unfenced(pool, reads.settings, reads.overrides.get(cluster_id), reads.pins.get(cluster_id))
            if unfenced != reads.notified.get(cluster_id, False):
                self._run(partial(self._check_fencing_in, cluster_id=cluster_id, pool=pool))

    @staticmethod
    def _unfenced(
        pool: sync_service_pb2.Pool, settings: HaSettings, override: bool | None, pin: ClusterPinRow | None
    ) -> bool:
        """A NATIVE cluster whose pool HA is off: nothing fences its hosts."""
        resolution = effective_mode(
            native_ha_supported(cv.version_facts(pool.version)),
            dm.HaMode(pin.mode) if pin is not None else None,
            None if override is None else (dm.HaMode.NATIVE if override else dm.HaMode.CLOUDSTACK),
            settings.native_ha_enabled,
        )
        return resolution.mode is dm.HaMode.NATIVE and not pool.ha.ha_enabled

    def _check_fencing_in(self, session: Session, cluster_id: str, pool: sync_service_pb2.Pool) -> _Work:
        settings, overrides, _ = load_settings(session)
        unfenced = self._unfenced(pool, settings, overrides.get(cluster_id), load_pins(session).get(cluster_id))
        state = session.get(ClusterStateRow, cluster_id)
        notified = state is not None and state.unfenced_notified
        work = _Work()
        if unfenced == notified:
            return work
        now = self.clock()
        if state is None:
            state = ClusterStateRow(cluster_id=cluster_id, unfenced_notified=unfenced, update_time=now)
            session.add(state)
        state.unfenced_notified = unfenced
        state.update_time = now
        if unfenced:
            work.events.append(
                NewNotification(
                    kind="POOL_UNFENCED",
                    cluster_id=cluster_id,
                    message=f"Cluster {cluster_id} is NATIVE but its pool HA is off: no mechanism fences its hosts "
                    "(the storage heartbeat is retired in NATIVE mode). Enable pool HA "
                    "(xe pool-ha-enable heartbeat-sr-uuids=<shared SR>).",
                )
            )
        return work

    def _prune(self, current: int, floor: int) -> None:
        """Keeps the newest `event_retention` events (and every pending action); raises the floor. `current` and
        `floor`: the revision and floor counters as the tick read them."""
        cutoff = current - self.config.event_retention
        if cutoff <= floor:
            return

        def transaction() -> None:
            with write_transaction(self.sessions) as session:
                session.execute(
                    delete(HaEventRow).where(
                        HaEventRow.revision <= cutoff,
                        or_(HaEventRow.action_state.is_(None), HaEventRow.action_state != PENDING),
                    )
                )
                session.execute(update(CounterRow).where(CounterRow.name == EVENT_FLOOR_COUNTER).values(value=cutoff))

        retry_transient(transaction)


__all__ = ["Controller", "ControllerConfig"]

# Referenced for type checkers only.
_ = common_pb2
