"""`xsha clusters`: the HA status of clusters (effective mode and why, pin, pool HA, fencing, VM counts)."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_time, or_dash

app = typer.Typer(help="Cluster HA status: effective mode and why, pin, pool HA, fencing, protected VMs.")


def version_label(version: common_pb2.HypervisorVersion) -> str:
    if not (version.product_brand or version.product_version or version.api_version_major):
        return "unknown"
    product = " ".join(part for part in (version.product_brand, version.product_version) if part)
    return f"{product} (API {version.api_version_major}.{version.api_version_minor})".strip()


def pool_ha_label(facts: common_pb2.PoolHaFacts) -> str:
    if not facts.ha_enabled:
        return "off"
    label = f"on, tolerates {facts.ha_host_failures_to_tolerate}"
    return label + (", OVERCOMMITTED" if facts.ha_overcommitted else "")


@app.command("status")
def status(
    ctx: typer.Context,
    cluster_id: Annotated[str | None, typer.Argument(help="One cluster in detail; all clusters when left out.")] = None,
) -> None:
    """Show every cluster's HA status, or one cluster's in detail."""
    state = get_state(ctx)
    client, output = state.client, state.output
    if cluster_id is not None:
        response = client.call(
            client.ha.GetClusterHaStatus, ha_service_pb2.GetClusterHaStatusRequest(cluster_id=cluster_id)
        )
        show_status(ctx, response.status)
        return
    statuses, _ = client.paged(
        client.ha.ListClusterHaStatuses, ha_service_pb2.ListClusterHaStatusesRequest(), "statuses"
    )
    rows = [
        (
            item.cluster_id,
            enum_label(common_pb2.HaMode, item.effective_mode),
            enum_label(ha_service_pb2.ModeReason, item.mode_reason),
            enum_label(common_pb2.HaMode, item.pinned_mode) if item.pinned else "no",
            version_label(item.version),
            pool_ha_label(item.pool_ha),
            enum_label(ha_service_pb2.FencingMechanism, item.fencing.mechanism),
            f"{item.protected_vm_count}/{item.ha_vm_count}",
            str(item.managed_vm_count),
            ", ".join(warning.code for warning in item.warnings) or "-",
        )
        for item in statuses
    ]
    columns = (
        "cluster",
        "mode",
        "why",
        "pinned",
        "version",
        "pool HA",
        "fencing",
        "protected/HA",
        "managed",
        "warnings",
    )
    output.table("Clusters", columns, rows, statuses, empty="no cluster known yet; register a pool")


def show_status(ctx: typer.Context, item: ha_service_pb2.ClusterHaStatus) -> None:
    output = get_state(ctx).output
    pinned = (
        f"{enum_label(common_pb2.HaMode, item.pinned_mode)} since {fmt_time(item.pin_time)}" if item.pinned else "no"
    )
    fields = [
        ("cluster", item.cluster_id),
        ("effective mode", enum_label(common_pb2.HaMode, item.effective_mode)),
        ("why", f"{enum_label(ha_service_pb2.ModeReason, item.mode_reason)}: {or_dash(item.mode_explanation)}"),
        ("pinned", pinned),
        ("version", version_label(item.version)),
        ("pool synced", fmt_bool(item.pool_synced)),
        ("pool HA", pool_ha_label(item.pool_ha)),
        ("fencing", f"{enum_label(ha_service_pb2.FencingMechanism, item.fencing.mechanism)}"
                    f"{' (UNFENCED)' if item.fencing.unfenced else ''}"),
        ("managed VMs", str(item.managed_vm_count)),
        ("HA VMs", str(item.ha_vm_count)),
        ("protected / unprotected", f"{item.protected_vm_count} / {item.unprotected_vm_count}"),
        ("active migration", or_dash(item.active_migration_id)),
    ]  # fmt: skip
    fields += [(f"warning {warning.code}", warning.message) for warning in item.warnings]
    output.record(f"Cluster {item.cluster_id}", fields, item)
