"""`xsha actions`: HA actions for the orchestrator (restart VM, restart/recreate/replace system VM), and acks."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_time, or_dash, short_uuid
from xsha_cli.parsing import parse_enum, parse_enums

app = typer.Typer(help="HA actions the orchestrator carries out, and their acknowledgement.")

_ACK_OUTCOMES = ("SUCCEEDED", "FAILED", "SKIPPED")


def action_row(action: ha_service_pb2.HaAction) -> tuple[str, ...]:
    cause = enum_label(ha_service_pb2.RestartCause, action.cause)
    return (
        action.action_id,
        enum_label(ha_service_pb2.HaActionKind, action.kind),
        cause,
        enum_label(ha_service_pb2.HaActionState, action.state),
        action.cluster_id,
        action.instance_name,
        enum_label(common_pb2.VmType, action.vm_type),
        short_uuid(action.host_uuid),
        fmt_time(action.create_time),
        or_dash(action.message),
    )


ACTION_COLUMNS = ("id", "kind", "cause", "state", "cluster", "instance", "type", "host", "created", "message")


@app.command("list")
def list_actions(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    state_filter: Annotated[
        list[str] | None, typer.Option("--state", help="pending, succeeded, failed, skipped (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many actions.")] = None,
) -> None:
    """List HA actions."""
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.ListHaActionsRequest(
        cluster_id=cluster, states=parse_enums(ha_service_pb2.HaActionState, state_filter, option="--state")
    )
    actions, revision = client.paged(client.ha.ListHaActions, request, "actions", limit=limit)
    state.output.table(
        f"HA actions (event revision {revision})", ACTION_COLUMNS, [action_row(a) for a in actions], actions,
        empty="no HA action",
    )  # fmt: skip


@app.command("ack")
def ack(
    ctx: typer.Context,
    action_id: Annotated[str, typer.Argument(help="The action's id (see `xsha actions list`).")],
    outcome: Annotated[str, typer.Option(help="succeeded, failed or skipped.")] = "succeeded",
    message: Annotated[str, typer.Option(help="What was done, for the record.")] = "",
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Acknowledge an action with its outcome."""
    value = parse_enum(ha_service_pb2.HaActionState, outcome, option="--outcome")
    if enum_label(ha_service_pb2.HaActionState, value) not in _ACK_OUTCOMES:
        raise typer.BadParameter("use succeeded, failed or skipped", param_hint="--outcome")
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.AckHaActionRequest(
        action_id=action_id,
        outcome=value,
        message=message,
        request_id=request_id or "",
    )
    action = client.call(client.ha.AckHaAction, request).action
    state.output.record(
        f"Action {action.action_id}",
        [*zip(ACTION_COLUMNS, action_row(action), strict=True), ("acknowledged", fmt_time(action.ack_time))],
        action,
    )
