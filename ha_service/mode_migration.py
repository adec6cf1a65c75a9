"""R8: planning and applying the move of a cluster between HA modes (CLOUDSTACK <-> NATIVE).

The pure decisions are ha_service.domain.migration's (`plan_migration`, `vm_step_needed`,
`migration_target_config`); this module stores plans and runs the apply as a small state machine over the stored
steps:

    migration: PLANNED | FAILED | APPLYING --apply--> APPLYING --> SUCCEEDED (all steps done; mode pinned)
                                                               \\-> FAILED    (some VM step failed; not pinned)
    VM step:   PENDING | FAILED --> APPLYING (committed before SetVmHaConfig) --> SUCCEEDED | FAILED | SKIPPED

* Idempotent: SUCCEEDED and SKIPPED steps are never applied again; a VM already at its target config is SKIPPED
  without a call to XAPI.
* Resumable: a step is marked APPLYING in its own commit before SetVmHaConfig. A later apply finds it APPLYING,
  reads the VM through GetVm and, when the VM already carries the target config, marks it SUCCEEDED without
  calling again, so a crash between the XAPI write and its record never leads to a second write.
* Re-checked at apply time: every VM's target is recomputed from its current HA flag and type (managed VM row) and
  its current hypervisor config (GetVm), never copied from the plan, so nothing set since the plan is clobbered.
  A VM gone since the plan is SKIPPED ("gone"). VMs created (or changed so that they now need a step) since the
  plan are found by listing the cluster again after the planned VM steps; steps are added for them and applied
  in the same run (listed after the plan's steps, `added at apply time`).
* Failures: a refused VM (e.g. HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN) is FAILED with XAPI's code and the apply
  goes on; the migration ends FAILED, unpinned; applying again retries only FAILED/PENDING steps.
* Fencing and pin: only when every VM step succeeded or was skipped, the fencing step, the pin (replaced by the
  target mode, with the migration id as its source) and the rewrite of every managed VM's decision commit in one
  transaction. GetHostFencingPolicy follows the effective mode, so it changes exactly then.
* One apply per cluster, across replicas: a lease row per cluster (ha_migration_leases) taken under a row lock,
  renewed and checked (holder and token) in every step's commit. A crashed apply's lease expires after
  `lease_seconds`; until then another apply is refused with ABORTED / MIGRATION_IN_PROGRESS.
* While a migration of a cluster is APPLYING, the controller treats each VM by its actual hypervisor config
  (`cluster_migrating`), so no VM has two captains or none, and does not repair drift there.

Mirror VMs that ha_service does not manage are treated as non-HA user VMs: their only step is clearing a stray
priority.
"""

from __future__ import annotations

import json
import logging
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ha_service import converters as cv
from ha_service.domain import model as dm
from ha_service.domain.migration import (
    MigrationPlan,
    MigrationStepKind,
    MigrationVm,
    migration_target_config,
    plan_migration,
    vm_step_needed,
)
from ha_service.domain.policy import effective_mode, fencing_policy, ha_config_drift, restarter_for
from ha_service.domain.versions import native_ha_supported
from ha_service.handlers import load_settings
from ha_service.store.models import (
    ClusterOverrideRow,
    ClusterPinRow,
    ManagedVmRow,
    MigrationLeaseRow,
    MigrationRow,
    MigrationStepRow,
)
from ha_service.sync_client import (
    SyncClient,
    SyncError,
    SyncNotFoundError,
    SyncUnavailableError,
    XapiRefusedError,
)
from xsha_api.v1 import common_pb2, sync_service_pb2
from xsha_common.db import retry_transient, write_transaction
from xsha_common.errors import ServiceError, aborted, failed_precondition, not_found, unavailable

log = logging.getLogger(__name__)

# Migration states (stored names; the proto's MigrationState without the prefix).
PLANNED = "PLANNED"
BLOCKED = "BLOCKED"
APPLYING = "APPLYING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
# Step states: PENDING, APPLYING (about to call / calling XAPI), SUCCEEDED, SKIPPED, FAILED.
PENDING = "PENDING"
SKIPPED = "SKIPPED"
STEP_FINISHED = frozenset({SUCCEEDED, SKIPPED, FAILED})
STEP_TO_RUN = (PENDING, APPLYING, FAILED)
# Step kinds (stored names; the proto's MigrationStepKind without the prefix).
KIND_VM = "SET_VM_HA_PRIORITY"
KIND_FENCING = "CHANGE_HOST_FENCING"
KIND_PIN = "PIN_MODE"
_KIND_OF: dict[MigrationStepKind, str] = {
    MigrationStepKind.SET_VM_HA_CONFIG: KIND_VM,
    MigrationStepKind.SET_HOST_FENCING: KIND_FENCING,
    MigrationStepKind.PIN_CLUSTER: KIND_PIN,
}

MIGRATION_IN_PROGRESS = "MIGRATION_IN_PROGRESS"
MIGRATION_NOT_FOUND = "MIGRATION_NOT_FOUND"
GONE = "gone: the VM no longer exists on the hypervisor"


@dataclass(frozen=True)
class MigrationConfig:
    # How long an apply holds its cluster without renewing (each step renews). A crashed apply blocks others
    # that long; it must exceed the longest SetVmHaConfig call (call timeout x retries).
    lease_seconds: float = 60.0


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    how_to_fix: str
    blocking: bool

    def as_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "how_to_fix": self.how_to_fix, "blocking": self.blocking}


def problems_from_json(text: str) -> list[Problem]:
    return [
        Problem(str(p["code"]), str(p["message"]), str(p["how_to_fix"]), bool(p["blocking"]))
        for p in json.loads(text or "[]")
    ]


def problems_to_json(problems: Sequence[Problem]) -> str:
    return json.dumps([p.as_json() for p in problems])


# --- queries shared with the controller and handlers -------------------------------------------------------------


def active_migration_id(session: Session, cluster_id: str) -> str | None:
    """The migration APPLYING on the cluster, if any (R8 ownership: VMs are then owned by their actual config)."""
    return session.execute(
        select(MigrationRow.migration_id)
        .where(MigrationRow.cluster_id == cluster_id, MigrationRow.state == APPLYING)
        .order_by(MigrationRow.id)
        .limit(1)
    ).scalar_one_or_none()


def cluster_migrating(session: Session, cluster_id: str) -> bool:
    return active_migration_id(session, cluster_id) is not None


def last_succeeded(session: Session, cluster_id: str) -> str | None:
    """The cluster's most recently finished SUCCEEDED migration."""
    return session.execute(
        select(MigrationRow.migration_id)
        .where(MigrationRow.cluster_id == cluster_id, MigrationRow.state == SUCCEEDED)
        .order_by(MigrationRow.finish_time.desc(), MigrationRow.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def migration_not_found(migration_id: str) -> ServiceError:
    return not_found(
        "migration",
        migration_id,
        reason=MIGRATION_NOT_FOUND,
        hint="use a migration_id from PlanMigration or ListMigrations",
    )


def step_counts(session: Session, migration_id: str) -> dict[str, int]:
    rows = session.execute(
        select(MigrationStepRow.state, func.count())
        .where(MigrationStepRow.migration_id == migration_id)
        .group_by(MigrationStepRow.state)
    ).all()
    return {str(state): int(count) for state, count in rows}


# --- planning -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterFacts:
    """What a plan or an apply needs to know about a cluster's pool (None values: not known)."""

    pool: sync_service_pb2.Pool | None

    @property
    def synced(self) -> bool:
        return cv.pool_synced(self.pool)

    @property
    def verdict(self) -> dm.VersionVerdict:
        return native_ha_supported(
            cv.version_facts(self.pool.version) if self.pool is not None and self.synced else None
        )

    @property
    def pool_ha(self) -> dm.PoolHaFacts | None:
        return cv.pool_ha_facts(self.pool) if self.pool is not None and self.synced else None


def _sync_unavailable(error: SyncError, doing: str) -> ServiceError:
    return unavailable(
        f"sync_service did not answer while {doing} ({error}). Nothing was changed by this call; retry once "
        "sync_service is reachable.",
        "SYNC_SERVICE_UNAVAILABLE",
        retry_delay=2.0,
    )


def cluster_facts(sync: SyncClient, cluster_id: str, doing: str) -> ClusterFacts:
    try:
        return ClusterFacts(sync.get_pool(cluster_id))
    except SyncNotFoundError:
        return ClusterFacts(None)
    except SyncError as error:
        raise _sync_unavailable(error, doing) from error


def cluster_vms(sync: SyncClient, cluster_id: str, doing: str) -> tuple[list[sync_service_pb2.Vm], int]:
    """The cluster's VMs in the mirror (every page) and the mirror revision of the list."""
    try:
        vms, revision = sync.list_vms(cluster_id)
    except SyncError as error:
        raise _sync_unavailable(error, doing) from error
    return [vm for vm in vms if vm.cluster_id == cluster_id and not vm.removed], revision


def _observed(vm: sync_service_pb2.Vm) -> dm.HaConfig:
    return dm.HaConfig(vm.ha_restart_priority, vm.order, vm.start_delay_seconds)


def _managed_index(session: Session, cluster_id: str) -> tuple[dict[str, ManagedVmRow], dict[str, ManagedVmRow]]:
    rows = list(session.execute(select(ManagedVmRow).where(ManagedVmRow.cluster_id == cluster_id)).scalars())
    return {r.vm_uuid: r for r in rows if r.vm_uuid}, {r.instance_name: r for r in rows}


def _managed_for(
    vm: sync_service_pb2.Vm, by_uuid: dict[str, ManagedVmRow], by_name: dict[str, ManagedVmRow]
) -> ManagedVmRow | None:
    row = by_uuid.get(vm.uuid)
    if row is None:
        candidate = by_name.get(vm.name)
        # Bound by name only while not bound to another VM (a decision made before the VM existed).
        if candidate is not None and (candidate.vm_uuid is None or candidate.vm_uuid == vm.uuid):
            row = candidate
    return row


def migration_vm(vm: sync_service_pb2.Vm, managed: ManagedVmRow | None) -> MigrationVm:
    """The domain's view of a mirror VM; an unmanaged VM counts as a non-HA user VM (only stray priorities go)."""
    if managed is None:
        return MigrationVm(vm.uuid, dm.VmType.User, False, _observed(vm))
    return MigrationVm(vm.uuid, dm.VmType(managed.vm_type), managed.offering_ha_enabled, _observed(vm))


def _plan_problems(plan: MigrationPlan, session: Session, cluster_id: str, source: dm.HaMode | None) -> list[Problem]:
    problems = [Problem(str(p.code), p.message, p.fix, True) for p in plan.problems]
    problems.extend(
        Problem(
            str(w.code),
            w.message,
            "Not blocking; fix it for full protection (see the cluster's HA status).",
            False,
        )
        for w in plan.warnings
    )
    running = active_migration_id(session, cluster_id)
    if running is not None:
        problems.append(
            Problem(
                MIGRATION_IN_PROGRESS,
                f"Migration {running} is being applied on cluster {cluster_id}.",
                f"Let it finish (GetMigration {running}) or apply it again to resume it; then plan again.",
                False,
            )
        )
    pin = session.get(ClusterPinRow, cluster_id)
    if source is plan.target_mode and pin is not None and pin.mode == str(plan.target_mode):
        problems.append(
            Problem(
                "ALREADY_IN_TARGET_MODE",
                f"Cluster {cluster_id} is already pinned to {plan.target_mode}; the plan only corrects VMs whose HA "
                "config does not match that mode.",
                "Nothing to fix.",
                False,
            )
        )
    return problems


@dataclass
class PlanRequest:
    cluster_id: str
    target: dm.HaMode
    request_id: str = ""


class MigrationPlanner:
    def __init__(self, sessions: sessionmaker[Session], sync: SyncClient, clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.sync = sync
        self.clock = clock

    def existing_plan(self, request_id: str) -> str | None:
        if not request_id:
            return None
        with self.sessions() as session:
            return session.execute(
                select(MigrationRow.migration_id).where(MigrationRow.plan_request_id == request_id)
            ).scalar_one_or_none()

    def plan(self, request: PlanRequest) -> str:
        """Stores a plan (PLANNED, or BLOCKED with its problems) and returns its id. Idempotent per request id."""
        existing = self.existing_plan(request.request_id)
        if existing is not None:
            return existing
        cluster_id = request.cluster_id
        facts = cluster_facts(self.sync, cluster_id, "planning the migration")
        if facts.pool is not None:
            vms, revision = cluster_vms(self.sync, cluster_id, "listing the cluster's VMs for the plan")
        else:
            vms, revision = [], 0
        with self.sessions() as session:
            if facts.pool is None and not _cluster_known(session, cluster_id):
                raise not_found(
                    "cluster",
                    cluster_id,
                    reason="CLUSTER_NOT_FOUND",
                    hint="register its pool with sync_service (RegisterPool) and wait for it to sync",
                )
            settings, overrides, _ = load_settings(session)
            pin = session.get(ClusterPinRow, cluster_id)
            override = overrides.get(cluster_id)
            verdict = facts.verdict
            source = effective_mode(
                verdict,
                dm.HaMode(pin.mode) if pin is not None else None,
                None if override is None else (dm.HaMode.NATIVE if override else dm.HaMode.CLOUDSTACK),
                settings.native_ha_enabled,
            ).mode
            by_uuid, by_name = _managed_index(session, cluster_id)
            subjects = [migration_vm(vm, _managed_for(vm, by_uuid, by_name)) for vm in vms]
            plan = plan_migration(
                cluster_id, request.target, subjects, verdict, facts.pool_ha, fencing_settings=settings.fencing()
            )
            problems = _plan_problems(plan, session, cluster_id, source)
            base = last_succeeded(session, cluster_id)
        names = {vm.uuid: vm.name for vm in vms}
        now = self.clock()
        migration_id = str(uuidlib.uuid4())

        def transaction() -> None:
            with write_transaction(self.sessions) as session:
                session.add(
                    MigrationRow(
                        migration_id=migration_id,
                        cluster_id=cluster_id,
                        source_mode=str(source) if source is not None else "",
                        target_mode=str(request.target),
                        state=BLOCKED if any(p.blocking for p in problems) else PLANNED,
                        mirror_revision=revision,
                        problems_json=problems_to_json(problems),
                        plan_request_id=request.request_id or None,
                        base_migration_id=base,
                        create_time=now,
                        update_time=now,
                    )
                )
                session.flush()  # the unique request id is checked before the steps are written
                for index, step in enumerate(plan.steps):
                    session.add(
                        MigrationStepRow(
                            migration_id=migration_id,
                            step_index=index,
                            kind=_KIND_OF[step.kind],
                            instance_name=names.get(step.vm_uuid or "", ""),
                            vm_uuid=step.vm_uuid or "",
                            from_priority=step.from_config.ha_restart_priority if step.from_config else "",
                            to_priority=step.to_config.ha_restart_priority if step.to_config else "",
                            to_order=step.to_config.order if step.to_config else 0,
                            to_start_delay_s=step.to_config.start_delay if step.to_config else 0,
                            state=PENDING,
                            message=step.description,
                            attempts=0,
                            added_at_apply=False,
                        )
                    )

        try:
            retry_transient(transaction)
        except IntegrityError:
            # A concurrent plan with the same request id won: answer with its plan.
            winner = self.existing_plan(request.request_id)
            if winner is None:
                raise
            return winner
        log.info(
            "migration planned",
            extra={"migration_id": migration_id, "cluster_id": cluster_id, "target": str(request.target)},
        )
        return migration_id


def _cluster_known(session: Session, cluster_id: str) -> bool:
    return any(
        session.execute(select(model.cluster_id).where(model.cluster_id == cluster_id).limit(1)).first() is not None
        for model in (ClusterPinRow, ClusterOverrideRow, ManagedVmRow)
    )


# --- applying -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepView:
    """A step as it was committed (detached from the session)."""

    index: int
    kind: str
    instance_name: str
    vm_uuid: str
    from_priority: str
    to_priority: str
    state: str
    message: str
    finish_time: float | None

    @staticmethod
    def of(row: MigrationStepRow) -> StepView:
        return StepView(
            row.step_index,
            row.kind,
            row.instance_name,
            row.vm_uuid,
            row.from_priority,
            row.to_priority,
            row.state,
            row.message,
            row.finish_time,
        )


@dataclass(frozen=True)
class Progress:
    """One progress report of an apply: the step just finished (None on the first and last report)."""

    migration_id: str
    state: str
    step: StepView | None
    steps_done: int
    steps_total: int
    steps_failed: int


class LeaseLostError(Exception):
    """Another apply took the cluster's lease (ours expired): stop without writing anything more."""


def adopt_target(
    row: ManagedVmRow, target: dm.HaMode, config: dm.HaConfig, now: float, observed: sync_service_pb2.Vm | None
) -> None:
    """Makes a managed VM's decision the target mode's; `observed`: the VM as XAPI reports it at that config."""
    vm_type = dm.VmType(row.vm_type)
    row.mode = str(target)
    row.ha_restart_priority = config.ha_restart_priority
    row.ha_order = config.order
    row.start_delay_s = config.start_delay
    row.restarter = str(restarter_for(target, vm_type, row.offering_ha_enabled))
    if observed is not None and (not observed.revision or observed.revision > row.observed_revision):
        row.observed_priority = observed.ha_restart_priority
        row.observed_order = observed.order
        row.observed_start_delay_s = observed.start_delay_seconds
    at_target = (
        row.present
        and ha_config_drift(config, dm.HaConfig(row.observed_priority, row.observed_order, row.observed_start_delay_s))
        is None
    )
    confirmed = observed is not None or at_target
    row.config_confirmed = confirmed
    row.drift_reported = ""
    row.protection_attempts = 0
    row.next_protection_attempt = None
    row.unprotected_reason = ""
    restart = config.ha_restart_priority == dm.RESTART_PRIORITY
    row.protection_state = ("PROTECTED" if confirmed else "PENDING") if restart else "NOT_APPLICABLE"
    row.update_time = now


class MigrationApplier:
    """Starts applies: `start` checks and takes the lease (raising ServiceError), the run yields Progress."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sync: SyncClient,
        clock: Callable[[], float],
        config: MigrationConfig | None = None,
    ) -> None:
        self.sessions = sessions
        self.sync = sync
        self.clock = clock
        self.config = config or MigrationConfig()

    def start(self, migration_id: str) -> ApplyRun:
        with self.sessions() as session:
            row = session.execute(
                select(MigrationRow).where(MigrationRow.migration_id == migration_id)
            ).scalar_one_or_none()
            if row is None:
                raise migration_not_found(migration_id)
            cluster_id, target, state = row.cluster_id, dm.HaMode(row.target_mode), row.state
        if state == BLOCKED:
            raise self._blocked(migration_id, cluster_id, [p for p in self._problems(migration_id) if p.blocking])
        if state == SUCCEEDED:
            return ApplyRun(self, migration_id, cluster_id, target, holder=None, token=0)
        facts = cluster_facts(self.sync, cluster_id, "checking the migration's preconditions")
        if target is dm.HaMode.NATIVE:
            # Preconditions again: pool HA may have been switched off since the plan.
            problems = [
                Problem(str(p.code), p.message, p.fix, True)
                for p in plan_migration(cluster_id, target, (), facts.verdict, facts.pool_ha).problems
            ]
            if problems:
                raise self._blocked(migration_id, cluster_id, problems, now=True)
        holder = f"apply-{uuidlib.uuid4()}"
        token = retry_transient(lambda: self._take(migration_id, holder))
        return ApplyRun(self, migration_id, cluster_id, target, holder=holder, token=token, facts=facts)

    def _problems(self, migration_id: str) -> list[Problem]:
        with self.sessions() as session:
            text = session.execute(
                select(MigrationRow.problems_json).where(MigrationRow.migration_id == migration_id)
            ).scalar_one()
        return problems_from_json(text)

    @staticmethod
    def _blocked(migration_id: str, cluster_id: str, problems: Sequence[Problem], now: bool = False) -> ServiceError:
        listed = "; ".join(f"{p.code}: {p.message} Fix: {p.how_to_fix}" for p in problems)
        when = "now" if now else "when it was planned"
        return failed_precondition(
            f"Migration {migration_id} of cluster {cluster_id} cannot be applied: its preconditions fail {when} "
            f"({listed}). Fix them, then plan again (PlanMigration) and apply the new plan.",
            "MIGRATION_BLOCKED",
            metadata={
                "migration_id": migration_id,
                "cluster_id": cluster_id,
                "problems": ",".join(p.code for p in problems),
            },
        )

    def _take(self, migration_id: str, holder: str) -> int:
        """Checks the migration can be applied now and takes the cluster's lease; the lease token."""
        now = self.clock()
        with write_transaction(self.sessions) as session:
            row = session.execute(
                select(MigrationRow).where(MigrationRow.migration_id == migration_id).with_for_update()
            ).scalar_one()
            cluster_id = row.cluster_id
            lease = session.execute(
                select(MigrationLeaseRow).where(MigrationLeaseRow.cluster_id == cluster_id).with_for_update()
            ).scalar_one_or_none()
            if lease is not None and lease.expire_time > now:
                raise aborted(
                    f"Migration {lease.migration_id} is being applied on cluster {cluster_id} by another call "
                    f"(its lease runs {lease.expire_time - now:.0f} s more unless renewed). Follow it with "
                    f"GetMigration; apply again once it has finished or stopped.",
                    MIGRATION_IN_PROGRESS,
                    metadata={"cluster_id": cluster_id, "migration_id": lease.migration_id},
                    retry_delay=max(1.0, lease.expire_time - now),
                )
            if row.state == SUCCEEDED:
                raise aborted(
                    f"Migration {migration_id} finished while this apply started; nothing more to do.",
                    "MIGRATION_ALREADY_SUCCEEDED",
                    metadata={"migration_id": migration_id},
                )
            other = session.execute(
                select(MigrationRow.migration_id)
                .where(
                    MigrationRow.cluster_id == cluster_id,
                    MigrationRow.state == APPLYING,
                    MigrationRow.migration_id != migration_id,
                )
                .limit(1)
            ).scalar_one_or_none()
            if other is not None:
                raise failed_precondition(
                    f"Migration {other} of cluster {cluster_id} was interrupted and is still APPLYING. Apply "
                    f"{other} again to finish it first, then plan again: one migration at a time per cluster.",
                    MIGRATION_IN_PROGRESS,
                    metadata={"cluster_id": cluster_id, "migration_id": other},
                )
            newer = last_succeeded(session, cluster_id)
            if newer != row.base_migration_id:
                raise failed_precondition(
                    f"Migration {newer} of cluster {cluster_id} succeeded after this plan was made: the plan is "
                    "stale. Plan again (PlanMigration).",
                    "MIGRATION_PLAN_STALE",
                    metadata={"cluster_id": cluster_id, "migration_id": migration_id, "superseded_by": newer or ""},
                )
            expire = now + self.config.lease_seconds
            if lease is None:
                token = 1
                session.add(
                    MigrationLeaseRow(
                        cluster_id=cluster_id,
                        migration_id=migration_id,
                        holder=holder,
                        token=token,
                        expire_time=expire,
                        update_time=now,
                    )
                )
                try:
                    session.flush()
                except IntegrityError as error:
                    raise aborted(
                        f"Another apply took cluster {cluster_id} at the same moment; follow it with GetMigration.",
                        MIGRATION_IN_PROGRESS,
                        metadata={"cluster_id": cluster_id},
                    ) from error
            else:
                token = lease.token + 1
                lease.migration_id, lease.holder, lease.token = migration_id, holder, token
                lease.expire_time, lease.update_time = expire, now
            if row.state != APPLYING:
                row.state = APPLYING
                row.finish_time = None
            if row.start_time is None:
                row.start_time = now
            row.update_time = now
            return token


class ApplyRun:
    """One apply of one migration, run by iterating it (in the caller's thread); releases the lease at the end.

    A run stops early, leaving the migration APPLYING (apply again to resume), when sync_service is unreachable,
    the lease is lost, or the caller stops iterating (client gone).
    """

    def __init__(
        self,
        applier: MigrationApplier,
        migration_id: str,
        cluster_id: str,
        target: dm.HaMode,
        *,
        holder: str | None,
        token: int,
        facts: ClusterFacts | None = None,
    ) -> None:
        self.applier = applier
        self.sessions = applier.sessions
        self.sync = applier.sync
        self.clock = applier.clock
        self.migration_id = migration_id
        self.cluster_id = cluster_id
        self.target = target
        self.holder = holder
        self.token = token
        self.facts = facts
        self.states: dict[int, str] = {}

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _load_states(self) -> None:
        with self.sessions() as session:
            self.states = {
                index: state
                for index, state in session.execute(
                    select(MigrationStepRow.step_index, MigrationStepRow.state).where(
                        MigrationStepRow.migration_id == self.migration_id
                    )
                ).all()
            }

    def _progress(self, state: str, step: StepView | None = None) -> Progress:
        if step is not None:
            self.states[step.index] = step.state
        values = list(self.states.values())
        return Progress(
            self.migration_id,
            state,
            step,
            sum(1 for s in values if s in STEP_FINISHED),
            len(values),
            values.count(FAILED),
        )

    def _hold(self, session: Session, now: float) -> None:
        """Checks this run still holds the cluster's lease (row-locked) and renews it."""
        lease = session.execute(
            select(MigrationLeaseRow).where(MigrationLeaseRow.cluster_id == self.cluster_id).with_for_update()
        ).scalar_one_or_none()
        if lease is None or lease.holder != self.holder or lease.token != self.token:
            raise LeaseLostError
        lease.expire_time = now + self.applier.config.lease_seconds
        lease.update_time = now

    def _release(self) -> None:
        if self.holder is None:
            return

        def transaction() -> None:
            with write_transaction(self.sessions) as session:
                lease = session.execute(
                    select(MigrationLeaseRow).where(MigrationLeaseRow.cluster_id == self.cluster_id).with_for_update()
                ).scalar_one_or_none()
                if lease is not None and lease.holder == self.holder and lease.token == self.token:
                    session.delete(lease)

        try:
            retry_transient(transaction)
        except Exception:  # the lease expires by itself; never hide the run's own outcome
            log.warning("could not release the migration lease of %s", self.cluster_id, exc_info=True)

    def _commit_step(
        self,
        index: int,
        state: str,
        message: str,
        *,
        from_priority: str | None = None,
        to: dm.HaConfig | None = None,
        adopt: tuple[dm.HaConfig, sync_service_pb2.Vm | None] | None = None,
    ) -> StepView:
        """Records a step's new state (and, for a VM at its target, the managed VM's new decision) in one commit."""

        def transaction() -> StepView:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                self._hold(session, now)
                row = session.execute(
                    select(MigrationStepRow)
                    .where(MigrationStepRow.migration_id == self.migration_id, MigrationStepRow.step_index == index)
                    .with_for_update()
                ).scalar_one()
                row.state = state
                row.message = message
                if from_priority is not None:
                    row.from_priority = from_priority
                if to is not None:
                    row.to_priority, row.to_order, row.to_start_delay_s = (
                        to.ha_restart_priority,
                        to.order,
                        to.start_delay,
                    )
                if state == APPLYING:
                    row.attempts += 1
                    row.finish_time = None
                else:
                    row.finish_time = now
                if adopt is not None:
                    managed = self._managed(session, row.vm_uuid, row.instance_name, lock=True)
                    if managed is not None:
                        adopt_target(managed, self.target, adopt[0], now, adopt[1])
                return StepView.of(row)

        return retry_transient(transaction)

    def _managed(self, session: Session, vm_uuid: str, name: str, *, lock: bool = False) -> ManagedVmRow | None:
        query = select(ManagedVmRow).where(ManagedVmRow.cluster_id == self.cluster_id, ManagedVmRow.vm_uuid == vm_uuid)
        row = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        if row is None and name:
            query = select(ManagedVmRow).where(
                ManagedVmRow.cluster_id == self.cluster_id,
                ManagedVmRow.instance_name == name,
                ManagedVmRow.vm_uuid.is_(None),
            )
            row = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        return row

    # --- the run ----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Progress]:
        try:
            yield from self._run()
        except LeaseLostError:
            self.holder = None  # not ours to release
            raise aborted(
                f"This apply of migration {self.migration_id} lost cluster {self.cluster_id}'s lease to another "
                "apply and stopped; follow the other apply with GetMigration.",
                MIGRATION_IN_PROGRESS,
                metadata={"cluster_id": self.cluster_id, "migration_id": self.migration_id},
            ) from None
        finally:
            self._release()

    def _run(self) -> Iterator[Progress]:
        self._load_states()
        if self.holder is None:  # already SUCCEEDED: nothing to apply
            yield self._progress(SUCCEEDED)
            return
        yield self._progress(APPLYING)
        for index in self._steps_to_run():
            yield self._progress(APPLYING, self._vm_step(index))
        for index in self._add_new_vms():
            yield self._progress(APPLYING, self._vm_step(index))
        if any(state != SUCCEEDED and state != SKIPPED for i, state in self._vm_states()):
            self._finish(FAILED)
            yield self._progress(FAILED)
            return
        for step in self._pin():
            yield self._progress(APPLYING, step)
        yield self._progress(SUCCEEDED)

    def _vm_states(self) -> list[tuple[int, str]]:
        with self.sessions() as session:
            return [
                (int(i), str(s))
                for i, s in session.execute(
                    select(MigrationStepRow.step_index, MigrationStepRow.state).where(
                        MigrationStepRow.migration_id == self.migration_id, MigrationStepRow.kind == KIND_VM
                    )
                ).all()
            ]

    def _steps_to_run(self) -> list[int]:
        with self.sessions() as session:
            return list(
                session.execute(
                    select(MigrationStepRow.step_index)
                    .where(
                        MigrationStepRow.migration_id == self.migration_id,
                        MigrationStepRow.kind == KIND_VM,
                        MigrationStepRow.state.in_(STEP_TO_RUN),
                    )
                    .order_by(MigrationStepRow.step_index)
                ).scalars()
            )

    def _vm_step(self, index: int) -> StepView:
        with self.sessions() as session:
            step = session.execute(
                select(MigrationStepRow).where(
                    MigrationStepRow.migration_id == self.migration_id, MigrationStepRow.step_index == index
                )
            ).scalar_one()
            vm_uuid, name, resumed = step.vm_uuid, step.instance_name, step.state == APPLYING
            planned = dm.HaConfig(step.to_priority, step.to_order, step.to_start_delay_s)
            managed = self._managed(session, vm_uuid, name)
            vm_type = dm.VmType(managed.vm_type) if managed is not None else dm.VmType.User
            ha_enabled = managed.offering_ha_enabled if managed is not None else False
            # The controller's view: an outage of a VM CloudStack wants running is in progress (or starting).
            wanted_running = managed is not None and managed.wanted_state == "RUNNING" and managed.was_running
            in_outage = managed is not None and managed.down_since is not None
        try:
            current = self.sync.get_vm(vm_uuid)
        except SyncNotFoundError:
            return self._commit_step(index, SKIPPED, GONE)
        except SyncError as error:
            raise _sync_unavailable(error, f"reading VM {name or vm_uuid}") from error
        if current.removed:
            return self._commit_step(index, SKIPPED, GONE)
        observed = _observed(current)
        wanted = vm_step_needed(MigrationVm(vm_uuid, vm_type, ha_enabled, observed), self.target)
        if wanted is None:
            at = migration_target_config(vm_type, ha_enabled, self.target)
            if resumed:
                # The interrupted apply's write went through: record it, do not write again.
                text = f"ha_restart_priority is {observed.ha_restart_priority!r} (applied before an interruption)."
                return self._commit_step(index, SUCCEEDED, text, to=at, adopt=(at, current))
            text = f"Already ha_restart_priority={observed.ha_restart_priority!r}: nothing to do."
            return self._commit_step(index, SKIPPED, text, to=at, adopt=(at, current))
        changes_owner = (observed.ha_restart_priority == dm.RESTART_PRIORITY) != (
            wanted.ha_restart_priority == dm.RESTART_PRIORITY
        )
        running = current.xapi_power_state == common_pb2.XAPI_POWER_STATE_RUNNING
        if (
            changes_owner
            and vm_type is dm.VmType.User
            and ha_enabled
            and (in_outage or (wanted_running and not running))
        ):
            # Whoever owned the VM when it went down restarts it; handing it over now could leave it to nobody
            # (XenServer only restarts what was protected when the host failed) or to both.
            return self._commit_step(
                index,
                FAILED,
                "VM_IN_OUTAGE: the VM is down while CloudStack wants it running; its current owner restarts it. "
                "Apply the migration again once it runs.",
            )
        note = ""
        if wanted != planned:
            note = (
                f" Recomputed at apply time (planned {planned.ha_restart_priority!r}): the VM's HA flag or type "
                "changed since the plan."
            )
        self._commit_step(
            index,
            APPLYING,
            f"Setting ha_restart_priority {observed.ha_restart_priority!r} -> {wanted.ha_restart_priority!r}.",
            from_priority=observed.ha_restart_priority,
            to=wanted,
        )
        try:
            reported = self.sync.set_vm_ha_config(
                vm_uuid, wanted.ha_restart_priority, wanted.order, wanted.start_delay, request_id=""
            )
        except XapiRefusedError as refusal:
            return self._commit_step(index, FAILED, f"{refusal.xapi_code}: XAPI refused the change ({refusal}).{note}")
        except SyncNotFoundError:
            return self._commit_step(index, SKIPPED, GONE)
        except SyncUnavailableError as error:
            # Unknown whether XAPI applied it: the step stays APPLYING; a later apply checks with GetVm first.
            raise _sync_unavailable(error, f"setting VM {name or vm_uuid}'s HA config") from error
        except SyncError as error:
            return self._commit_step(index, FAILED, f"sync_service refused the change: {error}{note}")
        after = _observed(reported)
        if ha_config_drift(wanted, after) is not None:
            return self._commit_step(
                index,
                FAILED,
                f"XAPI reports ha_restart_priority={after.ha_restart_priority!r} (order {after.order}, start_delay "
                f"{after.start_delay}) after the write, not {wanted.ha_restart_priority!r}.{note}",
            )
        text = f"ha_restart_priority {observed.ha_restart_priority!r} -> {wanted.ha_restart_priority!r}.{note}"
        return self._commit_step(index, SUCCEEDED, text, adopt=(wanted, reported))

    def _add_new_vms(self) -> list[int]:
        """Steps for VMs not in the plan that need one now (created, or changed, since the plan)."""
        vms, _ = cluster_vms(self.sync, self.cluster_id, "listing the cluster's VMs for new ones")
        with self.sessions() as session:
            known = set(
                session.execute(
                    select(MigrationStepRow.vm_uuid).where(
                        MigrationStepRow.migration_id == self.migration_id, MigrationStepRow.kind == KIND_VM
                    )
                ).scalars()
            )
            by_uuid, by_name = _managed_index(session, self.cluster_id)
            fresh: list[tuple[sync_service_pb2.Vm, dm.HaConfig]] = []
            for vm in sorted(vms, key=lambda v: v.uuid):
                if vm.uuid in known:
                    continue
                wanted = vm_step_needed(migration_vm(vm, _managed_for(vm, by_uuid, by_name)), self.target)
                if wanted is not None:
                    fresh.append((vm, wanted))
        if not fresh:
            return []

        def transaction() -> list[int]:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                self._hold(session, now)
                last = session.execute(
                    select(func.max(MigrationStepRow.step_index)).where(
                        MigrationStepRow.migration_id == self.migration_id
                    )
                ).scalar_one()
                indices = []
                for offset, (vm, wanted) in enumerate(fresh, start=1):
                    index = int(last or 0) + offset
                    indices.append(index)
                    session.add(
                        MigrationStepRow(
                            migration_id=self.migration_id,
                            step_index=index,
                            kind=KIND_VM,
                            instance_name=vm.name,
                            vm_uuid=vm.uuid,
                            from_priority=vm.ha_restart_priority,
                            to_priority=wanted.ha_restart_priority,
                            to_order=wanted.order,
                            to_start_delay_s=wanted.start_delay,
                            state=PENDING,
                            message="Added at apply time: the VM appeared (or changed) since the plan.",
                            attempts=0,
                            added_at_apply=True,
                        )
                    )
                return indices

        indices = retry_transient(transaction)
        for index in indices:
            self.states[index] = PENDING
        return indices

    def _finish(self, state: str) -> None:
        def transaction() -> None:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                self._hold(session, now)
                row = session.execute(
                    select(MigrationRow).where(MigrationRow.migration_id == self.migration_id).with_for_update()
                ).scalar_one()
                row.state = state
                row.finish_time = now
                row.update_time = now

        retry_transient(transaction)
        log.info("migration finished", extra={"migration_id": self.migration_id, "state": state})

    def _pin(self) -> list[StepView]:
        """Fencing step, pin step, every managed VM's decision and SUCCEEDED, in one commit."""
        facts = self.facts or cluster_facts(self.sync, self.cluster_id, "pinning the mode")

        def transaction() -> list[StepView]:
            now = self.clock()
            with write_transaction(self.sessions) as session:
                self._hold(session, now)
                settings = load_settings(session)[0]
                policy = fencing_policy(self.target, facts.pool_ha, settings.fencing(), self.cluster_id)
                steps = list(
                    session.execute(
                        select(MigrationStepRow)
                        .where(
                            MigrationStepRow.migration_id == self.migration_id,
                            MigrationStepRow.kind.in_((KIND_FENCING, KIND_PIN)),
                        )
                        .order_by(MigrationStepRow.step_index)
                        .with_for_update()
                    ).scalars()
                )
                for step in steps:
                    step.state = SUCCEEDED
                    step.finish_time = now
                    if step.kind == KIND_FENCING:
                        step.message = (
                            f"Host fencing is now {policy.fenced_by}: "
                            + (
                                f"run the storage heartbeat (interval {policy.heartbeat_interval_seconds} s, timeout "
                                f"{policy.heartbeat_timeout_seconds} s)."
                                if policy.storage_heartbeat_enabled
                                else "no storage heartbeat reboot."
                            )
                            + (" Warning: nothing fences the hosts (pool HA is off)." if policy.unfenced else "")
                        )
                    else:
                        step.message = (
                            f"Cluster {self.cluster_id} pinned to {self.target} by migration {self.migration_id}."
                        )
                pin = session.execute(
                    select(ClusterPinRow).where(ClusterPinRow.cluster_id == self.cluster_id).with_for_update()
                ).scalar_one_or_none()
                source = f"migration {self.migration_id}"
                if pin is None:
                    session.add(
                        ClusterPinRow(
                            cluster_id=self.cluster_id,
                            mode=str(self.target),
                            pinned_by=source,
                            pin_time=now,
                            migration_id=self.migration_id,
                        )
                    )
                else:
                    pin.mode, pin.pinned_by, pin.pin_time, pin.migration_id = (
                        str(self.target),
                        source,
                        now,
                        self.migration_id,
                    )
                for managed in session.execute(
                    select(ManagedVmRow).where(ManagedVmRow.cluster_id == self.cluster_id).with_for_update()
                ).scalars():
                    config = migration_target_config(
                        dm.VmType(managed.vm_type), managed.offering_ha_enabled, self.target
                    )
                    current = dm.HaConfig(managed.ha_restart_priority, managed.ha_order, managed.start_delay_s)
                    if managed.mode != str(self.target) or current != config:
                        adopt_target(managed, self.target, config, now, None)
                row = session.execute(
                    select(MigrationRow).where(MigrationRow.migration_id == self.migration_id).with_for_update()
                ).scalar_one()
                row.state = SUCCEEDED
                row.finish_time = now
                row.update_time = now
                return [StepView.of(step) for step in steps]

        views = retry_transient(transaction)
        log.info(
            "migration succeeded; cluster pinned",
            extra={"migration_id": self.migration_id, "cluster_id": self.cluster_id, "mode": str(self.target)},
        )
        return views


__all__ = [
    "APPLYING",
    "BLOCKED",
    "FAILED",
    "PLANNED",
    "SUCCEEDED",
    "ApplyRun",
    "MigrationApplier",
    "MigrationConfig",
    "MigrationPlanner",
    "PlanRequest",
    "Progress",
    "StepView",
    "active_migration_id",
    "cluster_migrating",
]
