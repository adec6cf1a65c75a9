"""`xsha hosts`: the hosts of the registered pools."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import sync_service_pb2
from xsha_cli.commands.clusters import version_label
from xsha_cli.context import get_state
from xsha_cli.output import fmt_bool, fmt_bytes, fmt_time

app = typer.Typer(help="Hosts of the registered pools: liveness, master, memory, version.")


@app.command("list")
def list_hosts(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    include_removed: Annotated[bool, typer.Option(help="Include hosts gone from the pool.")] = False,
) -> None:
    """List hosts."""
    state = get_state(ctx)
    client = state.client
    request = sync_service_pb2.ListHostsRequest(cluster_id=cluster, include_removed=include_removed)
    hosts, revision = client.paged(client.sync.ListHosts, request, "hosts")
    rows = [
        (
            host.name,
            host.cluster_id,
            "live" if host.live else "DEAD",
            fmt_bool(host.enabled),
            "master" if host.is_master else "",
            f"{fmt_bytes(host.memory_free_bytes)} / {fmt_bytes(host.memory_total_bytes)}",
            version_label(host.version),
            host.address,
            host.uuid,
            fmt_time(host.update_time),
        )
        for host in hosts
    ]
    columns = ("name", "cluster", "live", "enabled", "role", "free / total", "version", "address", "uuid", "updated")
    state.output.table(f"Hosts (revision {revision})", columns, rows, hosts, empty="no host known")
