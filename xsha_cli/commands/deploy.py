"""`xsha decide`: ask ha_service for a VM's HA configuration before deploying it (what the orchestrator does)."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_time, or_dash
from xsha_cli.parsing import parse_enum


def decide(
    ctx: typer.Context,
    cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")],
    instance_name: Annotated[str, typer.Argument(help="CloudStack instance name (XAPI name_label), e.g. i-2-10-VM.")],
    vm_type: Annotated[
        str, typer.Option("--type", help="VM type: user, domain-router, console-proxy, secondary-storage-vm, ...")
    ] = "user",
    ha: Annotated[bool, typer.Option("--ha/--no-ha", help="The service offering's HA flag.")] = False,
    vm_uuid: Annotated[str, typer.Option(help="XAPI VM uuid when already known.")] = "",
    redundant_router: Annotated[bool, typer.Option(help="A router that is part of a redundant pair.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Decide a VM's HA configuration before it is deployed (records it; the VM becomes managed)."""
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.DecideVmDeploymentRequest(
        cluster_id=cluster_id,
        instance_name=instance_name,
        vm_uuid=vm_uuid,
        vm_type=parse_enum(common_pb2.VmType, vm_type, option="--type"),
        offering_ha_enabled=ha,
        redundant_router=redundant_router,
        request_id=request_id or "",
    )
    decision = client.call(client.ha.DecideVmDeployment, request).decision
    fields = [
        ("cluster", decision.cluster_id),
        ("instance", decision.instance_name),
        ("vm uuid", or_dash(decision.vm_uuid)),
        ("type", enum_label(common_pb2.VmType, decision.vm_type)),
        ("mode", enum_label(common_pb2.HaMode, decision.mode)),
        ("ha_restart_priority", decision.ha_restart_priority or "(not set)"),
        ("order / start delay", f"{decision.order} / {decision.start_delay_seconds}s"),
        ("restarted by", enum_label(ha_service_pb2.Restarter, decision.restarter)),
        ("pinned the cluster", fmt_bool(decision.pinned_cluster)),
        ("decided", fmt_time(decision.decide_time)),
    ]
    fields += [(f"warning {warning.code}", warning.message) for warning in decision.warnings]
    state.output.record(f"Deployment decision for {decision.instance_name}", fields, decision)
