"""`xsha fencing`: who fences a cluster's failed hosts (XenServer HA, CloudStack's storage heartbeat, nobody)."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_duration, or_dash


def fencing(ctx: typer.Context, cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")]) -> None:
    """Show a cluster's host fencing policy (whether CloudStack runs the storage heartbeat)."""
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.GetHostFencingPolicyRequest(cluster_id=cluster_id)
    policy = client.call(client.ha.GetHostFencingPolicy, request).policy
    fields = [
        ("cluster", policy.cluster_id),
        ("mode", enum_label(common_pb2.HaMode, policy.mode)),
        ("fenced by", enum_label(ha_service_pb2.FencingMechanism, policy.mechanism)),
        ("storage heartbeat", fmt_bool(policy.storage_heartbeat_enabled)),
        ("heartbeat interval", fmt_duration(policy.heartbeat_interval)),
        ("heartbeat timeout", fmt_duration(policy.heartbeat_timeout)),
        ("UNFENCED", fmt_bool(policy.unfenced)),
        ("message", or_dash(policy.message)),
    ]  # fmt: skip
    state.output.record(f"Host fencing of cluster {policy.cluster_id}", fields, policy)
