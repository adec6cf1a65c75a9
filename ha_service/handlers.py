"""The data plane of HaPolicyService: each RPC's work (validated request in, response proto out).

Policy comes from ha_service.domain; this module reads and writes the tables and talks to sync_service. Errors are
raised as xsha_common.errors.ServiceError.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Final, cast

import grpc
from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ha_service import converters as cv
from ha_service.domain import model as dm
from ha_service.domain.policy import (
    HA_MODE_PINNED,
    check_settings_update,
    decide_deployment,
    effective_mode,
    fencing_policy,
    pool_ha_warnings,
)
from ha_service.domain.versions import native_ha_supported
from ha_service.events import ACTION, PENDING, EventBus, action_from_row, counter_value, watch_events
from ha_service.metrics import HaMetrics
from ha_service.settings import HaSettings, mode_settings, settings_problems
from ha_service.store.models import (
    EVENT_REVISION_COUNTER,
    SETTINGS_ROW_ID,
    ClusterOverrideRow,
    ClusterPinRow,
    HaEventRow,
    ManagedVmRow,
    MigrationRow,
    RequestRow,
    SettingsRow,
)
from ha_service.sync_client import SyncClient, SyncError, SyncNotFoundError, SyncUnavailableError
from ha_service.validation import Violations
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.db import is_transient_db_error, retry_transient, write_transaction
from xsha_common.driver_sql import DriverSql, InListQuery
from xsha_common.errors import ServiceError, aborted, failed_precondition, not_found, unavailable
from xsha_common.group_commit import GroupCommit

log = logging.getLogger(__name__)

WARNING_SYNC_UNAVAILABLE = "SYNC_SERVICE_UNAVAILABLE"
WARNING_VERSION_UNKNOWN = "VERSION_UNKNOWN"


# --- settings rows ----------------------------------------------------------------------------------------------


def settings_from_row(row: SettingsRow) -> HaSettings:
    return HaSettings(
        native_ha_enabled=row.native_ha_enabled,
        drift_repair_mode=row.drift_repair_mode,
        restart_overdue_grace=row.restart_overdue_grace_s,
        agent_disconnected_grace=row.agent_disconnected_grace_s,
        heartbeat_interval=row.heartbeat_interval_s,
        heartbeat_timeout=row.heartbeat_timeout_s,
        unprotected_retry_interval=row.unprotected_retry_interval_s,
    )


def write_settings_row(row: SettingsRow, settings: HaSettings) -> None:
    row.native_ha_enabled = settings.native_ha_enabled
    row.drift_repair_mode = settings.drift_repair_mode
    row.restart_overdue_grace_s = settings.restart_overdue_grace
    row.agent_disconnected_grace_s = settings.agent_disconnected_grace
    row.heartbeat_interval_s = settings.heartbeat_interval
    row.heartbeat_timeout_s = settings.heartbeat_timeout
    row.unprotected_retry_interval_s = settings.unprotected_retry_interval


def ensure_settings_row(sessions: sessionmaker[Session], defaults: HaSettings, now: float) -> None:
    """Creates the settings row with `defaults` on a fresh database (concurrent starters: one wins)."""
    with sessions() as session:
        if session.get(SettingsRow, SETTINGS_ROW_ID) is not None:
            return
    try:
        with write_transaction(sessions) as session:
            row = SettingsRow(id=SETTINGS_ROW_ID, version=1, update_time=now)
            write_settings_row(row, defaults)
            session.add(row)
    except IntegrityError:
        pass


def load_settings(session: Session, *, lock: str | None = None) -> tuple[HaSettings, dict[str, bool], int]:
    query = select(SettingsRow).where(SettingsRow.id == SETTINGS_ROW_ID)
    if lock == "share":
        query = query.with_for_update(read=True)
    elif lock == "update":
        query = query.with_for_update()
    row = session.execute(query).scalar_one()
    overrides = {o.cluster_id: o.native_ha_enabled for o in session.execute(select(ClusterOverrideRow)).scalars()}
    return settings_from_row(row), overrides, row.version


def load_pins(session: Session) -> dict[str, ClusterPinRow]:
    return {pin.cluster_id: pin for pin in session.execute(select(ClusterPinRow)).scalars()}


# --- pool facts -------------------------------------------------------------------------------------------------


@dataclass
class PoolView:
    """What sync_service says about a cluster's pool; `reachable` False when sync_service is down. A view is not
    changed once made (a newer one replaces it), so what is derived from it is worked out once: a cached view
    serves every decision of its cluster."""

    pool: sync_service_pb2.Pool | None
    reachable: bool
    error: str = ""

    @functools.cached_property
    def synced(self) -> bool:
        return cv.pool_synced(self.pool)

    @functools.cached_property
    def version(self) -> common_pb2.HypervisorVersion | None:
        return self.pool.version if self.pool is not None and self.synced else None

    @functools.cached_property
    def pool_ha(self) -> dm.PoolHaFacts | None:
        return cv.pool_ha_facts(self.pool) if self.pool is not None and self.synced else None

    @functools.cached_property
    def verdict(self) -> dm.VersionVerdict | None:
        """R3's verdict on the pool's version; None when the view has no version."""
        return _native_ha_verdict(cv.version_facts(self.version)) if self.version is not None else None


@functools.lru_cache(maxsize=256)
def _native_ha_verdict(facts: dm.VersionFacts | None) -> dm.VersionVerdict:
    """R3's verdict, once per distinct version: a pool's version is the same for every decision of its cluster,
    and parsing it again was a visible share of each decision."""
    return native_ha_supported(facts)


class PoolViewCache:
    """DecideVmDeployment's pool facts per cluster, so a decision needs no GetPool round trip.

    A decision reads only the pool's version and HA facts, which change only through sync_service's change log:
    the controller's WatchChanges stream invalidates an entry when its pool changes (and everything when the
    stream reconnects), and the TTL bounds staleness should an invalidation be missed. Only synced views are
    kept, and only while `live()` says the invalidating stream is connected; a fetch that raced an invalidation
    is not stored.
    """

    def __init__(
        self,
        ttl: float = 0.0,
        live: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._live = live
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[PoolView, float]] = {}
        self._generation = 0

    def peek(self, cluster_id: str) -> PoolView | None:
        """The cached view if there is a current one, without fetching."""
        if self.ttl <= 0 or not self._live():
            return None
        with self._lock:
            entry = self._entries.get(cluster_id)
        if entry is not None and entry[1] > self._monotonic():
            return entry[0]
        return None

    def get(self, cluster_id: str, fetch: Callable[[], PoolView]) -> PoolView:
        if self.ttl <= 0 or not self._live():
            return fetch()
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(cluster_id)
            generation = self._generation
        if entry is not None and entry[1] > now:
            return entry[0]
        view = fetch()
        if view.reachable and view.synced:
            with self._lock:
                if self._generation == generation:
                    self._entries[cluster_id] = (view, now + self.ttl)
        return view

    def invalidate(self, cluster_id: str | None = None) -> None:
        """Forget `cluster_id`'s entry (None: every entry)."""
        with self._lock:
            self._generation += 1
            if cluster_id is None:
                self._entries.clear()
            else:
                self._entries.pop(cluster_id, None)


@dataclass
class _DecisionJob:
    """One DecideVmDeployment on its way through the group commit, with what it needs from outside the database."""

    request: ha_service_pb2.DecideVmDeploymentRequest
    vm_type: dm.VmType
    verdict: dm.VersionVerdict
    pool_ha: dm.PoolHaFacts | None
    extra_warnings: list[dm.HaWarning]
    unavailable_error: ServiceError | None


# A decision's response, and whether this call made (committed) the decision rather than found it.
_Decided = tuple[ha_service_pb2.DecideVmDeploymentResponse, bool]

_MANAGED_VMS: Final = cast(Table, ManagedVmRow.__table__)
# What a decision's proto is made of (cv.decision_to_proto).
_DECISION_COLUMNS: Final = tuple(
    _MANAGED_VMS.c[name]
    for name in (
        "cluster_id",
        "instance_name",
        "vm_uuid",
        "vm_type",
        "mode",
        "ha_restart_priority",
        "ha_order",
        "start_delay_s",
        "restarter",
        "warnings_json",
        "pinned_cluster",
        "decide_time",
    )
)

_SETTINGS_TABLE: Final = cast(Table, SettingsRow.__table__)
_OVERRIDES_TABLE: Final = cast(Table, ClusterOverrideRow.__table__)
_PINS_TABLE: Final = cast(Table, ClusterPinRow.__table__)
# The group commit's statements. The settings row is read with a shared lock (see _decide_together).
_SETTINGS_SHARED: Final = (
    select(_SETTINGS_TABLE).where(_SETTINGS_TABLE.c.id == SETTINGS_ROW_ID).with_for_update(read=True)
)
_ALL_OVERRIDES: Final = select(_OVERRIDES_TABLE.c.cluster_id, _OVERRIDES_TABLE.c.native_ha_enabled)
_PIN_OF: Final = select(_PINS_TABLE).where(_PINS_TABLE.c.cluster_id == bindparam("cluster_id"))
_REQUESTS_TABLE: Final = cast(Table, RequestRow.__table__)
_INSERT_MANAGED_VM: Final = insert(_MANAGED_VMS)
_INSERT_REQUEST: Final = insert(_REQUESTS_TABLE)
_STORED_RESPONSE: Final = select(_REQUESTS_TABLE.c.response).where(
    _REQUESTS_TABLE.c.method == bindparam("method"), _REQUESTS_TABLE.c.request_id == bindparam("request_id")
)
_INSERT_PIN: Final = insert(_PINS_TABLE)
# The group's lookups by IN list, run as driver SQL (see xsha_common.driver_sql).
_STORED_RESPONSES: Final = InListQuery(
    lambda ids: select(_REQUESTS_TABLE.c.request_id, _REQUESTS_TABLE.c.response).where(
        _REQUESTS_TABLE.c.method == bindparam("method"), _REQUESTS_TABLE.c.request_id.in_(ids)
    ),
    "request_id",
)
_EXISTING_DECISIONS: Final = InListQuery(
    lambda names: select(*_DECISION_COLUMNS).where(
        _MANAGED_VMS.c.cluster_id == bindparam("cluster_id"), _MANAGED_VMS.c.instance_name.in_(names)
    ),
    "instance_name",
)


class _ConflictError(Exception):
    """The VM or request id was decided by a concurrent call: answer with what it stored."""


@dataclass
class Handlers:
    sessions: sessionmaker[Session]
    sync: SyncClient
    bus: EventBus
    clock: Callable[[], float]
    metrics: HaMetrics
    bookmark_interval_default: float = 5.0
    # Called after a decision commits, so the controller applies it at once if the VM is already in the mirror.
    on_decision: Callable[[str, str], None] = field(default=lambda cluster, name: None)
    pool_cache: PoolViewCache = field(default_factory=PoolViewCache)
    _decisions: GroupCommit[_DecisionJob, _Decided] = field(init=False, repr=False)
    _engine: Engine = field(init=False, repr=False)
    _sql: DriverSql = field(init=False, repr=False)
    _overrides_cache: tuple[int, Mapping[str, bool]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._decisions = GroupCommit(self._decide_batch)
        engine = self.sessions.kw.get("bind")
        if not isinstance(engine, Engine):
            raise TypeError("Handlers needs a sessionmaker bound to an Engine")
        self._engine = engine
        self._sql = DriverSql(engine.dialect)

    # --- helpers ---------------------------------------------------------------------------------------------

    def pool_view(self, cluster_id: str) -> PoolView:
        try:
            return PoolView(self.sync.get_pool(cluster_id), True)
        except SyncNotFoundError:
            return PoolView(None, True)
        except SyncUnavailableError as error:
            return PoolView(None, False, str(error))
        except SyncError as error:
            log.warning("GetPool(%s) failed: %s", cluster_id, error)
            return PoolView(None, False, str(error))

    def _stored_response(self, method: str, request_id: str) -> bytes | None:
        if not request_id:
            return None
        # A Core read: this runs before every mutation that carries a request id.
        with self._engine.connect() as connection:
            response = connection.execute(_STORED_RESPONSE, {"method": method, "request_id": request_id}).scalar()
            return None if response is None else bytes(response)

    @staticmethod
    def _store_response(session: Session, method: str, request_id: str, response: bytes, now: float) -> None:
        if not request_id:
            return
        try:
            with session.begin_nested():
                session.add(RequestRow(method=method, request_id=request_id, response=response, create_time=now))
        except IntegrityError as error:
            raise _ConflictError from error

    # --- settings --------------------------------------------------------------------------------------------

    def get_settings(self) -> ha_service_pb2.GetSettingsResponse:
        with self.sessions() as session:
            settings, overrides, version = load_settings(session)
        return ha_service_pb2.GetSettingsResponse(settings=cv.settings_to_proto(settings, overrides, version))

    def update_settings(self, request: ha_service_pb2.UpdateSettingsRequest) -> ha_service_pb2.UpdateSettingsResponse:
        method = "UpdateSettings"
        check = Violations()
        check.request_id(request.request_id)
        patch = getattr(request, "global")
        changes: dict[str, object] = {}
        if patch.HasField("native_ha_enabled"):
            changes["native_ha_enabled"] = patch.native_ha_enabled
        if patch.drift_repair_mode != ha_service_pb2.DRIFT_REPAIR_MODE_UNSPECIFIED:
            if patch.drift_repair_mode not in cv.DRIFT_TO_NAME:
                check.add(
                    "global.drift_repair_mode", "must be DRIFT_REPAIR_MODE_REPAIR or DRIFT_REPAIR_MODE_REPORT_ONLY"
                )
            else:
                changes["drift_repair_mode"] = cv.DRIFT_TO_NAME[patch.drift_repair_mode]
        for name in (
            "restart_overdue_grace",
            "agent_disconnected_grace",
            "heartbeat_interval",
            "heartbeat_timeout",
            "unprotected_retry_interval",
        ):
            if patch.HasField(name):
                changes[name] = cv.duration_seconds(getattr(patch, name))
        set_overrides: dict[str, bool] = {}
        for index, override in enumerate(request.set_cluster_overrides):
            check.cluster_id(override.cluster_id, f"set_cluster_overrides[{index}].cluster_id")
            if override.cluster_id in set_overrides:
                check.add(f"set_cluster_overrides[{index}].cluster_id", "names a cluster twice")
            set_overrides[override.cluster_id] = override.native_ha_enabled
        clear = list(request.clear_cluster_overrides)
        for index, cluster in enumerate(clear):
            check.cluster_id(cluster, f"clear_cluster_overrides[{index}]")
            if cluster in set_overrides:
                check.add(f"clear_cluster_overrides[{index}]", "is also in set_cluster_overrides; pick one")
        check.raise_if_any()

        stored = self._stored_response(method, request.request_id)
        if stored is not None:
            return ha_service_pb2.UpdateSettingsResponse.FromString(stored)

        version_gated = self._version_gated_clusters()

        def transaction() -> ha_service_pb2.UpdateSettingsResponse:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                current, overrides, version = load_settings(session, lock="update")
                if request.HasField("expected_version") and request.expected_version != version:
                    raise aborted(
                        f"The settings are at version {version}, not {request.expected_version}: someone changed "
                        "them. Read them again (GetSettings) and retry with the new version.",
                        "SETTINGS_VERSION_MISMATCH",
                        metadata={"current_version": str(version), "expected_version": str(request.expected_version)},
                    )
                proposed = current.with_changes(**changes)
                problems = settings_problems(proposed)
                if problems:
                    violations = Violations()
                    for name, text in problems:
                        violations.add(f"global.{name}", text)
                    violations.raise_if_any()
                new_overrides = {k: v for k, v in overrides.items() if k not in clear}
                new_overrides.update(set_overrides)
                pins = {cluster: dm.HaMode(pin.mode) for cluster, pin in load_pins(session).items()}
                verdict = check_settings_update(
                    mode_settings(current, overrides),
                    mode_settings(proposed, new_overrides),
                    pins,
                    apply_to_unpinned_only=request.apply_to_unpinned_only,
                    version_gated_clusters=version_gated,
                )
                if not verdict.allowed:
                    names = [c.cluster_id for c in verdict.conflicts]
                    raise failed_precondition(
                        verdict.message,
                        HA_MODE_PINNED,
                        metadata={
                            "clusters": ",".join(names),
                            **{f"cluster.{c.cluster_id}": str(c.pinned_mode) for c in verdict.conflicts},
                        },
                    )
                row = session.get(SettingsRow, SETTINGS_ROW_ID)
                assert row is not None
                write_settings_row(row, proposed)
                row.version = version + 1
                row.update_time = now
                for cluster in clear:
                    existing = session.get(ClusterOverrideRow, cluster)
                    if existing is not None:
                        session.delete(existing)
                for cluster, native in set_overrides.items():
                    existing = session.get(ClusterOverrideRow, cluster)
                    if existing is None:
                        session.add(ClusterOverrideRow(cluster_id=cluster, native_ha_enabled=native, update_time=now))
                    else:
                        existing.native_ha_enabled = native
                        existing.update_time = now
                response = ha_service_pb2.UpdateSettingsResponse(
                    settings=cv.settings_to_proto(proposed, new_overrides, version + 1),
                    clusters_left_unchanged=list(verdict.clusters_left_as_they_were),
                )
                self._store_response(session, method, request.request_id, response.SerializeToString(), now)
                return response

        try:
            return retry_transient(transaction)
        except _ConflictError:
            stored = self._stored_response(method, request.request_id)
            assert stored is not None
            return ha_service_pb2.UpdateSettingsResponse.FromString(stored)

    def _version_gated_clusters(self) -> frozenset[str]:
        """Clusters whose pool is older than 6.2 (never flipped by a settings change). Empty when sync is down:
        then every pinned cluster counts, which can only refuse more, never flip one."""
        try:
            pools, _ = self.sync.list_pools()
        except SyncError:
            return frozenset()
        return frozenset(
            p.cluster_id
            for p in pools
            if cv.pool_synced(p)
            and native_ha_supported(cv.version_facts(p.version)).support is dm.VersionSupport.UNSUPPORTED
        )

    # --- deployment decisions ----------------------------------------------------------------------------------

    async def decide_vm_deployment(
        self, request: ha_service_pb2.DecideVmDeploymentRequest
    ) -> ha_service_pb2.DecideVmDeploymentResponse:
        """A coroutine that never blocks its event loop: the group commit's transaction, on its own thread, decides
        (and answers a repeated request id from its stored response); pool facts come from the cache, or from
        sync_service on a worker thread."""
        self._check_decision_request(request)
        view = self.pool_cache.peek(request.cluster_id)
        if view is None:
            view = await asyncio.to_thread(
                self.pool_cache.get, request.cluster_id, lambda: self.pool_view(request.cluster_id)
            )
        response, decided = await self._decisions.submit_async(self._decision_job(request, view))
        if decided:
            self.on_decision(request.cluster_id, request.instance_name)
        return response

    @staticmethod
    def _check_decision_request(request: ha_service_pb2.DecideVmDeploymentRequest) -> None:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.instance_name(request.instance_name)
        check.vm_uuid(request.vm_uuid)
        check.request_id(request.request_id)
        if request.vm_type == common_pb2.VM_TYPE_UNSPECIFIED:
            check.add("vm_type", "is required: VM_TYPE_USER for user VMs, or the system VM's type")
        elif request.vm_type not in cv.VM_TYPE_TO_DOMAIN:
            check.add("vm_type", f"unknown VmType value {request.vm_type}")
        if request.redundant_router and request.vm_type != common_pb2.VM_TYPE_DOMAIN_ROUTER:
            check.add("redundant_router", "only applies to VM_TYPE_DOMAIN_ROUTER")
        if request.HasField("hypervisor_version"):
            given = request.hypervisor_version
            if given.api_version_major < 0 or given.api_version_minor < 0:
                check.add("hypervisor_version", "API version numbers cannot be negative")
        check.raise_if_any()

    @staticmethod
    def _decision_job(request: ha_service_pb2.DecideVmDeploymentRequest, view: PoolView) -> _DecisionJob:
        extra_warnings: list[dm.HaWarning] = []
        unavailable_error: ServiceError | None = None
        request_version = (
            request.hypervisor_version
            if request.HasField("hypervisor_version") and cv.version_known(request.hypervisor_version)
            else None
        )
        if not view.reachable:
            if request_version is None:
                # Raised only if the VM has no decision yet (an existing one is still answered).
                unavailable_error = unavailable(
                    f"sync_service is unreachable ({view.error}) and the request carries no hypervisor_version, so "
                    "the pool's version is unknown. Retry later, or pass hypervisor_version.",
                    "SYNC_SERVICE_UNAVAILABLE",
                    retry_delay=2.0,
                )
            extra_warnings.append(
                dm.HaWarning(
                    WARNING_SYNC_UNAVAILABLE,  # type: ignore[arg-type]
                    "sync_service was unreachable: decided from the version in the request, without the pool's HA "
                    "facts. Check the cluster's HA status once sync_service is back.",
                )
            )
        verdict = view.verdict or _native_ha_verdict(
            cv.version_facts(request_version) if request_version is not None else None
        )
        return _DecisionJob(
            request=request,
            vm_type=cv.VM_TYPE_TO_DOMAIN[request.vm_type],
            verdict=verdict,
            pool_ha=view.pool_ha,
            extra_warnings=extra_warnings,
            unavailable_error=unavailable_error,
        )

    def _decide_batch(self, jobs: Sequence[_DecisionJob]) -> list[_Decided | BaseException]:
        """Decides `jobs` in one transaction (one BEGIN/COMMIT, one settings read, one lookup of existing
        decisions for all). Should that transaction fail other than transiently (e.g. a concurrent replica decided
        the same VM), each job is decided on its own, as it would have been without grouping."""
        try:
            outcomes = retry_transient(lambda: self._decide_together(jobs))
        except Exception as error:
            if is_transient_db_error(error):
                return [error for _ in jobs]
            log.debug("grouped decision failed (%s); deciding one by one", error)
            alone: list[_Decided | BaseException] = []
            for job in jobs:
                try:
                    alone.append(self._decide_alone(job))
                except Exception as single_error:
                    alone.append(single_error)
            return alone
        results: list[_Decided | BaseException] = []
        new_by_mode: dict[str, int] = {}
        for outcome, mode in outcomes:
            if isinstance(outcome, ServiceError):
                results.append(outcome)
            else:
                results.append((outcome, mode is not None))
                if mode is not None:
                    new_by_mode[mode] = new_by_mode.get(mode, 0) + 1
        for mode, count in new_by_mode.items():
            self.metrics.decisions.labels(mode=mode).inc(count)
        return results

    def _decide_together(
        self, jobs: Sequence[_DecisionJob]
    ) -> list[tuple[ha_service_pb2.DecideVmDeploymentResponse | ServiceError, str | None]]:
        """Each job's response (or refusal) and, for a new decision, its mode. Raises on a database error."""
        method = "DecideVmDeployment"
        now = self.clock()
        outcomes: list[tuple[ha_service_pb2.DecideVmDeploymentResponse | ServiceError, str | None]] = []
        with write_transaction(self._engine) as connection:
            # A shared lock on the settings row: concurrent decisions proceed together, a concurrent
            # UpdateSettings (exclusive lock) waits, so a pin is always made from the settings it was checked on.
            # Driver SQL compiled once (xsha_common.driver_sql) in a Core transaction, not the ORM: under load most
            # groups hold one or two decisions, so the per-transaction and per-statement work of the ORM, and then
            # of Connection.execute, was most of a decision. The rows carry the model's attribute names.
            sql = self._sql
            settings_row = cast(SettingsRow, sql.fetch_one(connection, _SETTINGS_SHARED))
            settings = settings_from_row(settings_row)
            overrides = self._overrides_at(connection, settings_row.version)
            decided: dict[tuple[str, str], ha_service_pb2.DecideVmDeploymentResponse] = {}
            names_by_cluster: dict[str, set[str]] = {}
            for job in jobs:
                names_by_cluster.setdefault(job.request.cluster_id, set()).add(job.request.instance_name)
            for cluster_id, names in names_by_cluster.items():
                query, values = _EXISTING_DECISIONS.bind(sorted(names), cluster_id=cluster_id)
                for existing in sql.fetch(connection, query, values):
                    decided[(cluster_id, existing.instance_name)] = ha_service_pb2.DecideVmDeploymentResponse(
                        decision=cv.decision_to_proto(cast(ManagedVmRow, existing))
                    )
            request_ids = sorted({job.request.request_id for job in jobs if job.request.request_id})
            stored: dict[str, bytes] = {}
            if request_ids:
                query, values = _STORED_RESPONSES.bind(request_ids, method=method)
                stored = {row.request_id: row.response for row in sql.fetch(connection, query, values)}
            pins: dict[str, ClusterPinRow | None] = {}  # rows with ClusterPinRow's attributes
            new_vms: list[dict[str, Any]] = []
            new_requests: list[dict[str, Any]] = []
            for job in jobs:
                request = job.request
                key = (request.cluster_id, request.instance_name)
                if request.request_id in stored:
                    outcomes.append(
                        (ha_service_pb2.DecideVmDeploymentResponse.FromString(stored[request.request_id]), None)
                    )
                    continue
                if key in decided:
                    outcomes.append((decided[key], None))
                    continue
                if job.unavailable_error is not None:
                    outcomes.append((job.unavailable_error, None))
                    continue
                if request.cluster_id not in pins:
                    pin_row = sql.fetch_optional(connection, _PIN_OF, {"cluster_id": request.cluster_id})
                    pins[request.cluster_id] = cast(ClusterPinRow | None, pin_row)
                pin = pins[request.cluster_id]
                try:
                    decision = self._decide(request, job.vm_type, job.verdict, settings, overrides, pin, job.pool_ha)
                except ServiceError as refusal:
                    outcomes.append((refusal, None))
                    continue
                pinned_now = False
                if decision.pins_cluster:
                    assert decision.mode is not None
                    pin_values = {
                        "cluster_id": request.cluster_id,
                        "mode": str(decision.mode),
                        "pinned_by": request.instance_name,
                        "pin_time": now,
                        "migration_id": None,
                    }
                    # A concurrent replica's pin makes this raise: the batch is then decided job by job.
                    sql.executemany(connection, _INSERT_PIN, [pin_values])
                    pin = cast(ClusterPinRow, SimpleNamespace(**pin_values))
                    pins[request.cluster_id] = pin
                    pinned_now = True
                warnings = [*job.verdict.warnings, *decision.warnings, *job.extra_warnings]
                values = self._managed_vm_values(job, decision, warnings, pinned_now, now)
                response = ha_service_pb2.DecideVmDeploymentResponse(
                    decision=cv.new_decision_to_proto(values, job.vm_type, decision, warnings)
                )
                new_vms.append(values)
                decided[key] = response
                if request.request_id:
                    serialized = response.SerializeToString()
                    stored[request.request_id] = serialized
                    new_requests.append(
                        {"method": method, "request_id": request.request_id, "response": serialized, "create_time": now}
                    )
                outcomes.append((response, str(decision.mode)))
            # Duplicates (a concurrent replica decided the same VM or request) raise: the batch goes one by one.
            # Through the driver: SQLAlchemy's building of every row's parameters was a visible share of a decision.
            if new_vms:
                sql.executemany(connection, _INSERT_MANAGED_VM, new_vms)
            if new_requests:
                sql.executemany(connection, _INSERT_REQUEST, new_requests)
        return outcomes

    def _overrides_at(self, connection: Connection, settings_version: int) -> Mapping[str, bool]:
        """The cluster overrides, read again only when the settings version moved: UpdateSettings, their only
        writer, changes them under the settings row's exclusive lock and bumps its version, and the caller holds
        the shared lock, so the version it read names exactly the overrides in the database."""
        cached = self._overrides_cache
        if cached is not None and cached[0] == settings_version:
            return cached[1]
        overrides = {row.cluster_id: row.native_ha_enabled for row in self._sql.fetch(connection, _ALL_OVERRIDES)}
        self._overrides_cache = (settings_version, overrides)
        return overrides

    @staticmethod
    def _managed_vm_values(
        job: _DecisionJob,
        decision: dm.DeploymentDecision,
        warnings: Sequence[dm.HaWarning],
        pinned_now: bool,
        now: float,
    ) -> dict[str, Any]:
        """A new decision's ha_managed_vms row (the other columns take their defaults)."""
        request = job.request
        return {
            "cluster_id": request.cluster_id,
            "instance_name": request.instance_name,
            "vm_uuid": request.vm_uuid or None,
            "vm_type": str(job.vm_type),
            "offering_ha_enabled": request.offering_ha_enabled,
            "redundant_router": request.redundant_router,
            "mode": str(decision.mode),
            "ha_restart_priority": decision.ha_restart_priority,
            "ha_order": decision.order,
            "start_delay_s": decision.start_delay,
            "restarter": str(decision.restarter),
            "warnings_json": cv.warnings_to_json(warnings),
            "pinned_cluster": pinned_now,
            "decide_time": now,
            "decision_request_id": request.request_id or None,
            "wanted_state": "RUNNING",
            "protection_state": "PENDING" if decision.ha_restart_priority == dm.RESTART_PRIORITY else "NOT_APPLICABLE",
            "unprotected_reason": "",
            "config_confirmed": False,
            "protection_attempts": 0,
            "drift_reported": "",
            "update_time": now,
        }

    def _decide_alone(self, job: _DecisionJob) -> tuple[ha_service_pb2.DecideVmDeploymentResponse, bool]:
        """One decision in its own transaction (the path without grouping); True when it made a new decision."""
        method = "DecideVmDeployment"
        request = job.request
        stored = self._stored_response(method, request.request_id)
        if stored is not None:
            return ha_service_pb2.DecideVmDeploymentResponse.FromString(stored), False
        existing = self._decision_of(request.cluster_id, request.instance_name)
        if existing is not None:
            return existing, False
        if job.unavailable_error is not None:
            raise job.unavailable_error

        def transaction() -> ha_service_pb2.DecideVmDeploymentResponse:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                settings, overrides, _ = load_settings(session, lock="share")
                pin = session.get(ClusterPinRow, request.cluster_id)
                decision = self._decide(request, job.vm_type, job.verdict, settings, overrides, pin, job.pool_ha)
                pinned_now = False
                if decision.pins_cluster:
                    assert decision.mode is not None
                    try:
                        with session.begin_nested():
                            session.add(
                                ClusterPinRow(
                                    cluster_id=request.cluster_id,
                                    mode=str(decision.mode),
                                    pinned_by=request.instance_name,
                                    pin_time=now,
                                )
                            )
                        pinned_now = True
                    except IntegrityError:
                        # Lost the race: decide with the winner's pin.
                        winner = session.execute(
                            select(ClusterPinRow).where(ClusterPinRow.cluster_id == request.cluster_id)
                        ).scalar_one()
                        decision = self._decide(
                            request, job.vm_type, job.verdict, settings, overrides, winner, job.pool_ha
                        )
                warnings = [*job.verdict.warnings, *decision.warnings, *job.extra_warnings]
                row = ManagedVmRow(**self._managed_vm_values(job, decision, warnings, pinned_now, now))
                try:
                    with session.begin_nested():
                        session.add(row)
                except IntegrityError as error:
                    raise _ConflictError from error
                response = ha_service_pb2.DecideVmDeploymentResponse(decision=cv.decision_to_proto(row))
                self._store_response(session, method, request.request_id, response.SerializeToString(), now)
                self.metrics.decisions.labels(mode=str(decision.mode)).inc()
                return response

        try:
            return retry_transient(transaction), True
        except _ConflictError:
            stored = self._stored_response(method, request.request_id)
            if stored is not None:
                return ha_service_pb2.DecideVmDeploymentResponse.FromString(stored), False
            existing = self._decision_of(request.cluster_id, request.instance_name)
            assert existing is not None
            return existing, False

    def _decide(
        self,
        request: ha_service_pb2.DecideVmDeploymentRequest,
        vm_type: dm.VmType,
        verdict: dm.VersionVerdict,
        settings: HaSettings,
        overrides: Mapping[str, bool],
        pin: ClusterPinRow | None,
        pool_ha: dm.PoolHaFacts | None,
    ) -> dm.DeploymentDecision:
        override = overrides.get(request.cluster_id)
        resolution = effective_mode(
            verdict,
            dm.HaMode(pin.mode) if pin is not None else None,
            None if override is None else (dm.HaMode.NATIVE if override else dm.HaMode.CLOUDSTACK),
            settings.native_ha_enabled,
        )
        if resolution.mode is None:
            raise failed_precondition(
                f"Cannot decide VM {request.instance_name}'s HA config: {resolution.detail} Register the pool with "
                "sync_service and wait for it to sync, or pass hypervisor_version in the request.",
                "HYPERVISOR_VERSION_UNKNOWN",
                metadata={"cluster_id": request.cluster_id},
            )
        decision = decide_deployment(
            dm.DeploymentRequest(
                mode=resolution.mode,
                vm_type=vm_type,
                offering_ha=request.offering_ha_enabled,
                pool_ha=pool_ha,
                cluster_pinned=pin is not None,
                redundant_router=request.redundant_router,
            )
        )
        return decision

    def _decision_of(self, cluster_id: str, instance_name: str) -> ha_service_pb2.DecideVmDeploymentResponse | None:
        with self.sessions() as session:
            row = self._managed_row(session, cluster_id, instance_name)
            if row is None:
                return None
            return ha_service_pb2.DecideVmDeploymentResponse(decision=cv.decision_to_proto(row))

    @staticmethod
    def _managed_row(
        session: Session, cluster_id: str, instance_name: str, *, lock: bool = False
    ) -> ManagedVmRow | None:
        query = select(ManagedVmRow).where(
            ManagedVmRow.cluster_id == cluster_id, ManagedVmRow.instance_name == instance_name
        )
        if lock:
            query = query.with_for_update()
        return session.execute(query).scalar_one_or_none()

    # --- managed VMs -------------------------------------------------------------------------------------------

    @staticmethod
    def _vm_not_found(cluster_id: str, instance_name: str) -> ServiceError:
        return not_found(
            "managed VM",
            f"{cluster_id}/{instance_name}",
            reason="MANAGED_VM_NOT_FOUND",
            hint="ha_service only knows VMs it decided: call DecideVmDeployment for it first, or list them with "
            "ListManagedVms",
        )

    def get_managed_vm(self, request: ha_service_pb2.GetManagedVmRequest) -> ha_service_pb2.GetManagedVmResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.instance_name(request.instance_name)
        check.raise_if_any()
        with self.sessions() as session:
            row = self._managed_row(session, request.cluster_id, request.instance_name)
            if row is None:
                raise self._vm_not_found(request.cluster_id, request.instance_name)
            return ha_service_pb2.GetManagedVmResponse(vm=cv.managed_vm_to_proto(row))

    def list_managed_vms(self, request: ha_service_pb2.ListManagedVmsRequest) -> ha_service_pb2.ListManagedVmsResponse:
        check = Violations()
        check.cluster_id(request.cluster_id, required=False)
        size = check.page_size(request.page_size)
        after = check.int_page_token(request.page_token)
        states = check.enum_filter(
            "protection_states", request.protection_states, cv.PROTECTION_TO_NAME, "ProtectionState"
        )
        check.raise_if_any()
        query = select(ManagedVmRow).where(ManagedVmRow.id > after).order_by(ManagedVmRow.id).limit(size + 1)
        if request.cluster_id:
            query = query.where(ManagedVmRow.cluster_id == request.cluster_id)
        if states:
            query = query.where(ManagedVmRow.protection_state.in_(states))
        with self.sessions() as session:
            rows = list(session.execute(query).scalars())
        more = len(rows) > size
        rows = rows[:size]
        return ha_service_pb2.ListManagedVmsResponse(
            vms=[cv.managed_vm_to_proto(r) for r in rows], next_page_token=str(rows[-1].id) if more else ""
        )

    def set_vm_wanted_state(
        self, request: ha_service_pb2.SetVmWantedStateRequest
    ) -> ha_service_pb2.SetVmWantedStateResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.instance_name(request.instance_name)
        check.request_id(request.request_id)
        if request.wanted_state not in (ha_service_pb2.WANTED_STATE_RUNNING, ha_service_pb2.WANTED_STATE_STOPPED):
            check.add("wanted_state", "must be WANTED_STATE_RUNNING or WANTED_STATE_STOPPED")
        check.raise_if_any()

        def transaction() -> ha_service_pb2.SetVmWantedStateResponse:
            with write_transaction(self.sessions) as session:
                row = self._managed_row(session, request.cluster_id, request.instance_name, lock=True)
                if row is None:
                    raise self._vm_not_found(request.cluster_id, request.instance_name)
                wanted = cv.WANTED_TO_NAME[request.wanted_state]
                if row.wanted_state != wanted:
                    row.wanted_state = wanted
                    row.update_time = self.clock()
                    if wanted == "RUNNING":
                        # R7: only a VM seen running since it was wanted running can die; the mirror may still
                        # show the stop that preceded this start.
                        row.was_running = False
                return ha_service_pb2.SetVmWantedStateResponse(vm=cv.managed_vm_to_proto(row))

        return retry_transient(transaction)

    def report_agent_state(
        self, request: ha_service_pb2.ReportAgentStateRequest
    ) -> ha_service_pb2.ReportAgentStateResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.instance_name(request.instance_name)
        check.request_id(request.request_id)
        if request.status not in cv.AGENT_TO_NAME:
            check.add("status", "must be an AgentStatus other than UNSPECIFIED (e.g. AGENT_STATUS_DISCONNECTED)")
        check.raise_if_any()
        observed = cv.timestamp_seconds(request.observe_time) if request.HasField("observe_time") else None

        def transaction() -> ha_service_pb2.ReportAgentStateResponse:
            with write_transaction(self.sessions) as session:
                row = self._managed_row(session, request.cluster_id, request.instance_name, lock=True)
                if row is None:
                    raise self._vm_not_found(request.cluster_id, request.instance_name)
                if not dm.VmType(row.vm_type).is_system:
                    raise failed_precondition(
                        f"{request.instance_name} is a user VM; agent states are reported for system VMs only.",
                        "NOT_A_SYSTEM_VM",
                        metadata={"cluster_id": request.cluster_id, "instance_name": request.instance_name},
                    )
                status = cv.AGENT_TO_NAME[request.status]
                at = observed if observed is not None else self.clock()
                stale = row.agent_status_time is not None and at < row.agent_status_time
                if not stale and row.agent_status != status:
                    # The time the status *became* this value: the grace period counts from there.
                    row.agent_status = status
                    row.agent_status_time = at
                    row.agent_replace_emitted = False
                    row.update_time = self.clock()
                return ha_service_pb2.ReportAgentStateResponse(vm=cv.managed_vm_to_proto(row))

        return retry_transient(transaction)

    # --- HA events ---------------------------------------------------------------------------------------------

    def watch_ha_events(
        self, request: ha_service_pb2.WatchHaEventsRequest, is_active: Callable[[], bool]
    ) -> Iterator[ha_service_pb2.WatchHaEventsResponse]:
        check = Violations()
        check.cluster_id(request.cluster_id, required=False)
        if request.since_revision < 0:
            check.add("since_revision", "must be 0 or a revision from a previous answer")
        interval = self.bookmark_interval_default
        if request.HasField("bookmark_interval"):
            interval = cv.duration_seconds(request.bookmark_interval)
            if not 0.1 <= interval <= 3600:
                check.add("bookmark_interval", "must be between 100 ms and 1 h")
        check.raise_if_any()
        return watch_events(
            self.sessions, request, self.bus, is_active=is_active, clock=self.clock, bookmark_interval=interval
        )

    def list_ha_actions(self, request: ha_service_pb2.ListHaActionsRequest) -> ha_service_pb2.ListHaActionsResponse:
        check = Violations()
        check.cluster_id(request.cluster_id, required=False)
        size = check.page_size(request.page_size)
        after = check.int_page_token(request.page_token)
        states = check.enum_filter("states", request.states, cv.ACTION_STATE_TO_NAME, "HaActionState")
        check.raise_if_any()
        query = (
            select(HaEventRow)
            .where(HaEventRow.category == ACTION, HaEventRow.revision > after)
            .order_by(HaEventRow.revision)
            .limit(size + 1)
        )
        if request.cluster_id:
            query = query.where(HaEventRow.cluster_id == request.cluster_id)
        if states:
            query = query.where(HaEventRow.action_state.in_(states))
        with self.sessions() as session:
            # The revision first: every action up to it is in the answer (or a later page).
            revision = counter_value(session, EVENT_REVISION_COUNTER)
            rows = list(session.execute(query.where(HaEventRow.revision <= revision)).scalars())
        more = len(rows) > size
        rows = rows[:size]
        return ha_service_pb2.ListHaActionsResponse(
            actions=[action_from_row(r) for r in rows],
            next_page_token=str(rows[-1].revision) if more else "",
            revision=revision,
        )

    def ack_ha_action(self, request: ha_service_pb2.AckHaActionRequest) -> ha_service_pb2.AckHaActionResponse:
        check = Violations()
        if not request.action_id:
            check.add("action_id", "is required: the action_id of the HaAction being acknowledged")
        elif len(request.action_id) > 64:
            check.add("action_id", "is not an action id this server gave out")
        if request.outcome not in (
            ha_service_pb2.HA_ACTION_STATE_SUCCEEDED,
            ha_service_pb2.HA_ACTION_STATE_FAILED,
            ha_service_pb2.HA_ACTION_STATE_SKIPPED,
        ):
            check.add("outcome", "must be HA_ACTION_STATE_SUCCEEDED, HA_ACTION_STATE_FAILED or HA_ACTION_STATE_SKIPPED")
        check.message(request.message)
        check.request_id(request.request_id)
        check.raise_if_any()
        outcome = cv.ACTION_STATE_TO_NAME[request.outcome]

        def transaction() -> ha_service_pb2.AckHaActionResponse:
            with write_transaction(self.sessions) as session:
                row = session.execute(
                    select(HaEventRow)
                    .where(HaEventRow.event_id == request.action_id, HaEventRow.category == ACTION)
                    .with_for_update()
                ).scalar_one_or_none()
                if row is None:
                    raise not_found(
                        "HA action",
                        request.action_id,
                        reason="HA_ACTION_NOT_FOUND",
                        hint="use an action_id from WatchHaEvents or ListHaActions",
                    )
                if row.action_state == PENDING:
                    row.action_state = outcome
                    row.ack_time = self.clock()
                    row.ack_message = request.message
                    row.pending_key = None
                elif row.action_state != outcome:
                    raise failed_precondition(
                        f"Action {request.action_id} was already acknowledged as {row.action_state}; it cannot be "
                        f"acknowledged again as {outcome}.",
                        "HA_ACTION_ALREADY_ACKNOWLEDGED",
                        metadata={"action_id": request.action_id, "state": row.action_state or ""},
                    )
                return ha_service_pb2.AckHaActionResponse(action=action_from_row(row))

        return retry_transient(transaction)

    # --- cluster status and fencing ----------------------------------------------------------------------------

    def _known_clusters(self, session: Session, pools: Mapping[str, sync_service_pb2.Pool]) -> list[str]:
        names = set(pools)
        names.update(session.execute(select(ClusterPinRow.cluster_id)).scalars())
        names.update(session.execute(select(ClusterOverrideRow.cluster_id)).scalars())
        names.update(session.execute(select(ManagedVmRow.cluster_id).distinct()).scalars())
        return sorted(names)

    def _status(
        self, session: Session, cluster_id: str, view: PoolView, settings: HaSettings, overrides: Mapping[str, bool]
    ) -> ha_service_pb2.ClusterHaStatus:
        pin = session.get(ClusterPinRow, cluster_id)
        version = view.version
        verdict = native_ha_supported(cv.version_facts(version) if version is not None else None)
        override = overrides.get(cluster_id)
        resolution = effective_mode(
            verdict,
            dm.HaMode(pin.mode) if pin is not None else None,
            None if override is None else (dm.HaMode.NATIVE if override else dm.HaMode.CLOUDSTACK),
            settings.native_ha_enabled,
        )
        pinned_value: Any = cv.MODE_TO_PROTO[dm.HaMode(pin.mode)] if pin is not None else common_pb2.HA_MODE_UNSPECIFIED
        mode_value: Any = cv.MODE_TO_PROTO[resolution.mode] if resolution.mode else common_pb2.HA_MODE_UNSPECIFIED
        status = ha_service_pb2.ClusterHaStatus(
            cluster_id=cluster_id,
            effective_mode=mode_value,
            mode_reason=cv.MODE_REASON_TO_PROTO[resolution.reason],
            mode_explanation=resolution.detail
            if pin is None
            else f"{resolution.detail} Pinned to {pin.mode} by {pin.pinned_by}.",
            pinned=pin is not None,
            pinned_mode=pinned_value,
            pool_synced=view.synced,
        )
        active = session.execute(  # R8: the migration being applied on this cluster, if any
            select(MigrationRow.migration_id)
            .where(MigrationRow.cluster_id == cluster_id, MigrationRow.state == "APPLYING")
            .limit(1)
        ).scalar_one_or_none()
        status.active_migration_id = active or ""
        if pin is not None:
            status.pin_time.CopyFrom(cv.stamp(pin.pin_time))
        if version is not None:
            status.version.CopyFrom(version)
        if view.pool is not None and view.synced:
            status.pool_ha.CopyFrom(view.pool.ha)
        warnings: list[common_pb2.Warning] = list(cv.warning_protos(verdict.warnings))
        if not view.reachable:
            warnings.append(common_pb2.Warning(code=WARNING_SYNC_UNAVAILABLE, message=f"sync_service: {view.error}"))
        elif not view.synced:
            warnings.append(
                common_pb2.Warning(
                    code=str(dm.WarningCode.POOL_NOT_SYNCED),
                    message="sync_service has not synced this cluster's pool: register it (RegisterPool) or wait.",
                )
            )
        if resolution.mode is None:
            warnings.append(common_pb2.Warning(code=WARNING_VERSION_UNKNOWN, message=resolution.detail))
        else:
            policy = fencing_policy(resolution.mode, view.pool_ha, settings.fencing(), cluster_id)
            status.fencing.CopyFrom(self._fencing_proto(cluster_id, policy, settings))
            if resolution.mode is dm.HaMode.NATIVE and view.pool_ha is not None:
                warnings.extend(cv.warning_protos(pool_ha_warnings(view.pool_ha)))
            warnings.extend(
                cv.warning_protos(w for w in policy.warnings if w.code is not dm.WarningCode.POOL_NOT_SYNCED)
            )
        counts = session.execute(
            select(ManagedVmRow.protection_state, ManagedVmRow.restarter, func.count())
            .where(ManagedVmRow.cluster_id == cluster_id)
            .group_by(ManagedVmRow.protection_state, ManagedVmRow.restarter)
        ).all()
        for protection, restarter, count in counts:
            status.managed_vm_count += count
            if restarter == str(dm.Restarter.HYPERVISOR) or protection in ("PROTECTED", "UNPROTECTED", "PENDING"):
                status.ha_vm_count += count
            if protection == "PROTECTED":
                status.protected_vm_count += count
            elif protection == "UNPROTECTED":
                status.unprotected_vm_count += count
        ha_user_cloudstack = session.execute(
            select(func.count()).where(
                ManagedVmRow.cluster_id == cluster_id,
                ManagedVmRow.restarter == str(dm.Restarter.CLOUDSTACK),
                ManagedVmRow.vm_type == str(dm.VmType.User),
            )
        ).scalar_one()
        status.ha_vm_count += ha_user_cloudstack
        if status.unprotected_vm_count:
            warnings.append(
                common_pb2.Warning(
                    code=str(dm.WarningCode.VM_UNPROTECTED),
                    message=f"{status.unprotected_vm_count} VM(s) are not protected by XenServer HA; see "
                    "ListManagedVms with PROTECTION_STATE_UNPROTECTED for the reasons.",
                )
            )
        status.warnings.extend(warnings)
        return status

    @staticmethod
    def _fencing_proto(
        cluster_id: str, policy: dm.FencingPolicy, settings: HaSettings
    ) -> ha_service_pb2.HostFencingPolicy:
        message = ha_service_pb2.HostFencingPolicy(
            cluster_id=cluster_id,
            mode=cv.MODE_TO_PROTO[policy.mode],
            mechanism=cv.FENCER_TO_PROTO[policy.fenced_by],
            storage_heartbeat_enabled=policy.storage_heartbeat_enabled,
            unfenced=policy.unfenced,
        )
        if policy.storage_heartbeat_enabled:
            message.heartbeat_interval.CopyFrom(cv.duration(settings.heartbeat_interval))
            message.heartbeat_timeout.CopyFrom(cv.duration(settings.heartbeat_timeout))
            message.message = (
                "CLOUDSTACK mode: run the storage heartbeat (xenheartbeat.sh) on the cluster's hosts with these "
                "interval and timeout."
            )
        elif policy.unfenced:
            message.message = policy.warnings[0].message if policy.warnings else "No host fencing."
        else:
            message.message = "NATIVE mode: XenServer pool HA fences failed hosts; do not run the storage heartbeat."
            if policy.warnings:
                message.message += " " + " ".join(w.message for w in policy.warnings)
        return message

    def _cluster_not_found(self, cluster_id: str) -> ServiceError:
        return not_found(
            "cluster",
            cluster_id,
            reason="CLUSTER_NOT_FOUND",
            hint="register its pool with sync_service (RegisterPool), decide a VM in it, or set a cluster override",
        )

    def get_cluster_ha_status(
        self, request: ha_service_pb2.GetClusterHaStatusRequest
    ) -> ha_service_pb2.GetClusterHaStatusResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.raise_if_any()
        view = self.pool_view(request.cluster_id)
        with self.sessions() as session:
            settings, overrides, _ = load_settings(session)
            if view.pool is None and request.cluster_id not in self._known_clusters(session, {}):
                raise self._cluster_not_found(request.cluster_id)
            return ha_service_pb2.GetClusterHaStatusResponse(
                status=self._status(session, request.cluster_id, view, settings, overrides)
            )

    def list_cluster_ha_statuses(
        self, request: ha_service_pb2.ListClusterHaStatusesRequest
    ) -> ha_service_pb2.ListClusterHaStatusesResponse:
        check = Violations()
        size = check.page_size(request.page_size)
        after = check.page_token(request.page_token)
        check.raise_if_any()
        try:
            pools = {p.cluster_id: p for p in self.sync.list_pools()[0]}
            reachable, error = True, ""
        except SyncError as failure:
            pools, reachable, error = {}, False, str(failure)
        with self.sessions() as session:
            settings, overrides, _ = load_settings(session)
            clusters = [c for c in self._known_clusters(session, pools) if c > after]
            page = clusters[:size]
            statuses = [
                self._status(session, cluster, PoolView(pools.get(cluster), reachable, error), settings, overrides)
                for cluster in page
            ]
        return ha_service_pb2.ListClusterHaStatusesResponse(
            statuses=statuses, next_page_token=page[-1] if len(clusters) > size else ""
        )

    def get_host_fencing_policy(
        self, request: ha_service_pb2.GetHostFencingPolicyRequest
    ) -> ha_service_pb2.GetHostFencingPolicyResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.raise_if_any()
        view = self.pool_view(request.cluster_id)
        with self.sessions() as session:
            settings, overrides, _ = load_settings(session)
            if view.pool is None and request.cluster_id not in self._known_clusters(session, {}):
                raise self._cluster_not_found(request.cluster_id)
            status = self._status(session, request.cluster_id, view, settings, overrides)
        if not status.HasField("fencing"):
            raise failed_precondition(
                f"Cluster {request.cluster_id}'s HA mode depends on its pool's version, which is unknown "
                f"({status.mode_explanation}). Register the pool with sync_service and wait for it to sync; keep the "
                "current fencing until then.",
                "HYPERVISOR_VERSION_UNKNOWN",
                metadata={"cluster_id": request.cluster_id},
            )
        return ha_service_pb2.GetHostFencingPolicyResponse(policy=status.fencing)


def sync_unavailable_code(error: SyncError) -> grpc.StatusCode | None:
    return error.code
