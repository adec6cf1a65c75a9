"""HaPolicyService over gRPC: a thin layer over `Handlers` (validation, data plane and errors live there).

Served by the asyncio server (`build_server(..., concurrency="asyncio")`): DecideVmDeployment, the hot path, is a
coroutine; the other methods run on its worker threads.

Migration RPCs go to `MigrationHandlers` (R8); without them they answer UNIMPLEMENTED (MIGRATIONS_NOT_IMPLEMENTED).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from ha_service.handlers import Handlers
from ha_service.migration_handlers import MigrationHandlers
from xsha_api.v1 import ha_service_pb2, ha_service_pb2_grpc
from xsha_common.errors import ServiceError

SERVICE_NAME = "cloudstack.xsha.v1.HaPolicyService"


def _migrations_unimplemented() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        "Migrations between HA modes are not implemented by this ha_service version yet; a pinned cluster keeps its "
        "mode until they are.",
        "MIGRATIONS_NOT_IMPLEMENTED",
    )


class HaPolicyServicer(ha_service_pb2_grpc.HaPolicyServiceServicer):
    def __init__(self, handlers: Handlers, migrations: MigrationHandlers | None = None) -> None:
        self.handlers = handlers
        self.migrations = migrations

    def _migration_handlers(self) -> MigrationHandlers:
        if self.migrations is None:
            raise _migrations_unimplemented()
        return self.migrations

    def GetSettings(  # noqa: N802
        self, request: ha_service_pb2.GetSettingsRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.GetSettingsResponse:
        return self.handlers.get_settings()

    def UpdateSettings(  # noqa: N802
        self, request: ha_service_pb2.UpdateSettingsRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.UpdateSettingsResponse:
        return self.handlers.update_settings(request)

    def GetClusterHaStatus(  # noqa: N802
        self, request: ha_service_pb2.GetClusterHaStatusRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.GetClusterHaStatusResponse:
        return self.handlers.get_cluster_ha_status(request)

    def ListClusterHaStatuses(  # noqa: N802
        self, request: ha_service_pb2.ListClusterHaStatusesRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.ListClusterHaStatusesResponse:
        return self.handlers.list_cluster_ha_statuses(request)

    async def DecideVmDeployment(  # noqa: N802
        self, request: ha_service_pb2.DecideVmDeploymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ha_service_pb2.DecideVmDeploymentResponse:
        # A coroutine: on the asyncio server it waits for its group commit without holding a thread.
        return await self.handlers.decide_vm_deployment(request)

    def GetManagedVm(  # noqa: N802
        self, request: ha_service_pb2.GetManagedVmRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.GetManagedVmResponse:
        return self.handlers.get_managed_vm(request)

    def ListManagedVms(  # noqa: N802
        self, request: ha_service_pb2.ListManagedVmsRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.ListManagedVmsResponse:
        return self.handlers.list_managed_vms(request)

    def SetVmWantedState(  # noqa: N802
        self, request: ha_service_pb2.SetVmWantedStateRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.SetVmWantedStateResponse:
        return self.handlers.set_vm_wanted_state(request)

    def ReportAgentState(  # noqa: N802
        self, request: ha_service_pb2.ReportAgentStateRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.ReportAgentStateResponse:
        return self.handlers.report_agent_state(request)

    def WatchHaEvents(  # noqa: N802
        self, request: ha_service_pb2.WatchHaEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[ha_service_pb2.WatchHaEventsResponse]:
        return self.handlers.watch_ha_events(request, context.is_active)

    def ListHaActions(  # noqa: N802
        self, request: ha_service_pb2.ListHaActionsRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.ListHaActionsResponse:
        return self.handlers.list_ha_actions(request)

    def AckHaAction(  # noqa: N802
        self, request: ha_service_pb2.AckHaActionRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.AckHaActionResponse:
        return self.handlers.ack_ha_action(request)

    def GetHostFencingPolicy(  # noqa: N802
        self, request: ha_service_pb2.GetHostFencingPolicyRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.GetHostFencingPolicyResponse:
        return self.handlers.get_host_fencing_policy(request)

    def PlanMigration(  # noqa: N802
        self, request: ha_service_pb2.PlanMigrationRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.PlanMigrationResponse:
        return self._migration_handlers().plan_migration(request)

    def ApplyMigration(  # noqa: N802
        self, request: ha_service_pb2.ApplyMigrationRequest, context: grpc.ServicerContext
    ) -> Iterator[ha_service_pb2.ApplyMigrationResponse]:
        return self._migration_handlers().apply_migration(request)

    def GetMigration(  # noqa: N802
        self, request: ha_service_pb2.GetMigrationRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.GetMigrationResponse:
        return self._migration_handlers().get_migration(request)

    def ListMigrations(  # noqa: N802
        self, request: ha_service_pb2.ListMigrationsRequest, context: grpc.ServicerContext
    ) -> ha_service_pb2.ListMigrationsResponse:
        return self._migration_handlers().list_migrations(request)
