"""The migration RPCs of HaPolicyService (R8): validation, the Migration messages, and the calls into
ha_service.mode_migration (planner and apply engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ha_service import converters as cv
from ha_service.domain import model as dm
from ha_service.mode_migration import (
    MigrationApplier,
    MigrationConfig,
    MigrationPlanner,
    PlanRequest,
    Progress,
    StepView,
    migration_not_found,
    problems_from_json,
    step_counts,
)
from ha_service.store.models import MigrationRow, MigrationStepRow
from ha_service.sync_client import SyncClient
from ha_service.validation import Violations
from xsha_api.v1 import common_pb2, ha_service_pb2

# --- conversions --------------------------------------------------------------------------------------------------

MIGRATION_STATE_TO_PROTO: dict[str, Any] = {
    "PLANNED": ha_service_pb2.MIGRATION_STATE_PLANNED,
    "BLOCKED": ha_service_pb2.MIGRATION_STATE_BLOCKED,
    "APPLYING": ha_service_pb2.MIGRATION_STATE_APPLYING,
    "SUCCEEDED": ha_service_pb2.MIGRATION_STATE_SUCCEEDED,
    "FAILED": ha_service_pb2.MIGRATION_STATE_FAILED,
}
STEP_KIND_TO_PROTO: dict[str, Any] = {
    "SET_VM_HA_PRIORITY": ha_service_pb2.MIGRATION_STEP_KIND_SET_VM_HA_PRIORITY,
    "CHANGE_HOST_FENCING": ha_service_pb2.MIGRATION_STEP_KIND_CHANGE_HOST_FENCING,
    "PIN_MODE": ha_service_pb2.MIGRATION_STEP_KIND_PIN_MODE,
}
# APPLYING is internal (the write is in flight, or was when ha_service stopped): the contract calls it PENDING.
STEP_STATE_TO_PROTO: dict[str, Any] = {
    "PENDING": ha_service_pb2.MIGRATION_STEP_STATE_PENDING,
    "APPLYING": ha_service_pb2.MIGRATION_STEP_STATE_PENDING,
    "SUCCEEDED": ha_service_pb2.MIGRATION_STEP_STATE_SUCCEEDED,
    "SKIPPED": ha_service_pb2.MIGRATION_STEP_STATE_SKIPPED,
    "FAILED": ha_service_pb2.MIGRATION_STEP_STATE_FAILED,
}


def _mode_proto(name: str) -> Any:
    return cv.MODE_TO_PROTO[dm.HaMode(name)] if name else common_pb2.HA_MODE_UNSPECIFIED


def step_to_proto(step: StepView) -> ha_service_pb2.MigrationStep:
    message = ha_service_pb2.MigrationStep(
        index=step.index,
        kind=STEP_KIND_TO_PROTO[step.kind],
        instance_name=step.instance_name,
        vm_uuid=step.vm_uuid,
        from_ha_restart_priority=step.from_priority,
        to_ha_restart_priority=step.to_priority,
        state=STEP_STATE_TO_PROTO[step.state],
        message=step.message,
    )
    if step.finish_time is not None:
        message.finish_time.CopyFrom(cv.stamp(step.finish_time))
    return message


def migration_to_proto(
    row: MigrationRow, counts: Mapping[str, int], steps: list[StepView] | None
) -> ha_service_pb2.Migration:
    message = ha_service_pb2.Migration(
        migration_id=row.migration_id,
        cluster_id=row.cluster_id,
        source_mode=_mode_proto(row.source_mode),
        target_mode=_mode_proto(row.target_mode),
        state=MIGRATION_STATE_TO_PROTO[row.state],
        mirror_revision=row.mirror_revision,
        problems=[
            ha_service_pb2.MigrationProblem(
                code=p.code, message=p.message, how_to_fix=p.how_to_fix, blocking=p.blocking
            )
            for p in problems_from_json(row.problems_json)
        ],
        steps=[step_to_proto(s) for s in steps or ()],
        steps_total=sum(counts.values()),
        steps_succeeded=counts.get("SUCCEEDED", 0),
        steps_skipped=counts.get("SKIPPED", 0),
        steps_failed=counts.get("FAILED", 0),
    )
    message.create_time.CopyFrom(cv.stamp(row.create_time))
    if row.start_time is not None:
        message.start_time.CopyFrom(cv.stamp(row.start_time))
    if row.finish_time is not None:
        message.finish_time.CopyFrom(cv.stamp(row.finish_time))
    return message


def progress_to_proto(progress: Progress) -> ha_service_pb2.ApplyMigrationResponse:
    message = ha_service_pb2.ApplyMigrationResponse(
        state=MIGRATION_STATE_TO_PROTO[progress.state],
        steps_done=progress.steps_done,
        steps_total=progress.steps_total,
        steps_failed=progress.steps_failed,
    )
    if progress.step is not None:
        message.step.CopyFrom(step_to_proto(progress.step))
    return message


# --- RPCs ---------------------------------------------------------------------------------------------------------

_TARGETS = (common_pb2.HA_MODE_CLOUDSTACK, common_pb2.HA_MODE_NATIVE)
_MIGRATION_ID_MAX = 64


@dataclass
class MigrationHandlers:
    sessions: sessionmaker[Session]
    sync: SyncClient
    clock: Callable[[], float]
    config: MigrationConfig = field(default_factory=MigrationConfig)

    def __post_init__(self) -> None:
        self.planner = MigrationPlanner(self.sessions, self.sync, self.clock)
        self.applier = MigrationApplier(self.sessions, self.sync, self.clock, self.config)

    def _migration(self, migration_id: str, *, with_steps: bool) -> ha_service_pb2.Migration:
        with self.sessions() as session:
            row = session.execute(
                select(MigrationRow).where(MigrationRow.migration_id == migration_id)
            ).scalar_one_or_none()
            if row is None:
                raise migration_not_found(migration_id)
            steps = None
            if with_steps:
                steps = [
                    StepView.of(s)
                    for s in session.execute(
                        select(MigrationStepRow)
                        .where(MigrationStepRow.migration_id == migration_id)
                        .order_by(MigrationStepRow.step_index)
                    ).scalars()
                ]
            return migration_to_proto(row, step_counts(session, migration_id), steps)

    @staticmethod
    def _check_migration_id(check: Violations, value: str) -> None:
        if not value:
            check.add("migration_id", "is required: the migration_id PlanMigration returned")
        elif len(value) > _MIGRATION_ID_MAX or not value.isprintable():
            check.add("migration_id", "is not a migration id this server gave out")

    def plan_migration(self, request: ha_service_pb2.PlanMigrationRequest) -> ha_service_pb2.PlanMigrationResponse:
        check = Violations()
        check.cluster_id(request.cluster_id)
        check.request_id(request.request_id)
        if request.target_mode not in _TARGETS:
            check.add("target_mode", "must be HA_MODE_CLOUDSTACK or HA_MODE_NATIVE: the mode to move the cluster to")
        check.raise_if_any()
        migration_id = self.planner.plan(
            PlanRequest(request.cluster_id, cv.MODE_TO_DOMAIN[request.target_mode], request.request_id)
        )
        return ha_service_pb2.PlanMigrationResponse(migration=self._migration(migration_id, with_steps=True))

    def apply_migration(
        self, request: ha_service_pb2.ApplyMigrationRequest
    ) -> Iterator[ha_service_pb2.ApplyMigrationResponse]:
        """Checks and takes the cluster's lease before the first message; then streams progress per step."""
        check = Violations()
        self._check_migration_id(check, request.migration_id)
        check.request_id(request.request_id)
        check.raise_if_any()
        run = self.applier.start(request.migration_id)
        return (progress_to_proto(progress) for progress in run)

    def get_migration(self, request: ha_service_pb2.GetMigrationRequest) -> ha_service_pb2.GetMigrationResponse:
        check = Violations()
        self._check_migration_id(check, request.migration_id)
        check.raise_if_any()
        return ha_service_pb2.GetMigrationResponse(
            migration=self._migration(request.migration_id, with_steps=not request.omit_steps)
        )

    def list_migrations(self, request: ha_service_pb2.ListMigrationsRequest) -> ha_service_pb2.ListMigrationsResponse:
        """Newest first, without steps (GetMigration has them)."""
        check = Violations()
        check.cluster_id(request.cluster_id, required=False)
        size = check.page_size(request.page_size)
        before = check.int_page_token(request.page_token)
        check.raise_if_any()
        query = select(MigrationRow).order_by(MigrationRow.id.desc()).limit(size + 1)
        if before:
            query = query.where(MigrationRow.id < before)
        if request.cluster_id:
            query = query.where(MigrationRow.cluster_id == request.cluster_id)
        with self.sessions() as session:
            rows = list(session.execute(query).scalars())
            more = len(rows) > size
            rows = rows[:size]
            migrations = [migration_to_proto(r, step_counts(session, r.migration_id), None) for r in rows]
        return ha_service_pb2.ListMigrationsResponse(
            migrations=migrations, next_page_token=str(rows[-1].id) if more else ""
        )
