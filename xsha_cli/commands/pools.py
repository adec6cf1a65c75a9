"""`xsha pools`: registered XenServer pools, their sync status, registration and deregistration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xsha_api.v1 import sync_service_pb2
from xsha_cli.client import ExitCode, fail
from xsha_cli.commands.clusters import pool_ha_label, version_label
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_duration, fmt_time, or_dash

app = typer.Typer(help="Registered pools and their sync status; register and deregister pools.")


def sync_label(status: sync_service_pb2.SyncStatus) -> str:
    return enum_label(sync_service_pb2.SyncState, status.state)


@app.command("list")
def list_pools(ctx: typer.Context) -> None:
    """List the registered pools with their sync status."""
    state = get_state(ctx)
    client = state.client
    pools, _ = client.paged(client.sync.ListPools, sync_service_pb2.ListPoolsRequest(), "pools")
    rows = [
        (
            pool.cluster_id,
            or_dash(pool.name),
            pool.master_url,
            version_label(pool.version),
            pool_ha_label(pool.ha),
            sync_label(pool.sync_status),
            enum_label(sync_service_pb2.WireFormat, pool.sync_status.wire_format),
            fmt_duration(pool.sync_status.lag),
            fmt_time(pool.sync_status.last_event_time),
            or_dash(pool.sync_status.last_error),
        )
        for pool in pools
    ]
    columns = ("cluster", "pool", "master URL", "version", "pool HA", "sync", "wire", "lag", "last event", "last error")
    state.output.table("Pools", columns, rows, pools, empty="no pool registered; use `xsha pools register`")


def show_pool(ctx: typer.Context, pool: sync_service_pb2.Pool) -> None:
    sync = pool.sync_status
    fields = [
        ("cluster", pool.cluster_id),
        ("pool", f"{or_dash(pool.name)} ({or_dash(pool.pool_uuid)})"),
        ("master URL", pool.master_url),
        ("master host", or_dash(pool.master_host_uuid)),
        ("credentials stored", fmt_bool(pool.has_credentials)),
        ("TLS verification", or_dash(pool.tls.WhichOneof("verification") or "")),
        ("version", version_label(pool.version)),
        ("pool HA", pool_ha_label(pool.ha)),
        ("sync state", sync_label(sync)),
        ("connected", f"{fmt_bool(sync.connected)} {sync.connected_url}".strip()),
        ("wire format", enum_label(sync_service_pb2.WireFormat, sync.wire_format)),
        ("last event", fmt_time(sync.last_event_time)),
        ("lag", fmt_duration(sync.lag)),
        ("last full sync", fmt_time(sync.last_full_sync_time)),
        ("events applied", str(sync.events_applied)),
        ("reconnects", str(sync.reconnects)),
        (
            "last error",
            f"{or_dash(sync.last_error)} {fmt_time(sync.last_error_time) if sync.last_error else ''}".strip(),
        ),
        ("owner", or_dash(sync.owner)),
        ("revision", str(pool.revision)),
    ]
    get_state(ctx).output.record(f"Pool of cluster {pool.cluster_id}", fields, pool)


@app.command("get")
def get_pool(ctx: typer.Context, cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")]) -> None:
    """Show one pool with its full sync status."""
    client = get_state(ctx).client
    show_pool(ctx, client.call(client.sync.GetPool, sync_service_pb2.GetPoolRequest(cluster_id=cluster_id)).pool)


@app.command("register")
def register(
    ctx: typer.Context,
    cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id the pool backs.")],
    master_url: Annotated[str, typer.Argument(help="http(s)://host[:port] of the pool master (any member works).")],
    username: Annotated[str, typer.Option(envvar="XSHA_XAPI_USERNAME", help="XAPI user.")] = "root",
    password: Annotated[
        str | None,
        typer.Option(
            envvar="XSHA_XAPI_PASSWORD", help="XAPI password; prompted for when not given.", show_default=False
        ),
    ] = None,
    password_file: Annotated[Path | None, typer.Option(help="Read the XAPI password from this file.")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(help="PEM CA bundle that signed the hosts' certificates.")] = None,
    fingerprint: Annotated[str | None, typer.Option(help="SHA-256 fingerprint of the host certificate.")] = None,
    insecure_skip_verify: Annotated[bool, typer.Option(help="Do not verify the XAPI TLS certificate.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key: a retry with it returns the pool.")] = None,
) -> None:
    """Register a pool for a cluster; sync_service starts watching it."""
    if sum(bool(choice) for choice in (ca_bundle, fingerprint, insecure_skip_verify)) > 1:
        raise typer.BadParameter("give at most one of --ca-bundle, --fingerprint, --insecure-skip-verify")
    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").strip()
    if password is None:
        password = typer.prompt(f"XAPI password for {username}", hide_input=True)
    tls = sync_service_pb2.XapiTlsOptions()
    if ca_bundle is not None:
        tls.ca_bundle_pem = ca_bundle.read_text(encoding="utf-8")
    elif fingerprint:
        tls.certificate_sha256_fingerprint = fingerprint
    elif insecure_skip_verify:
        tls.insecure_skip_verify = True
    request = sync_service_pb2.RegisterPoolRequest(
        cluster_id=cluster_id,
        master_url=master_url,
        credentials=sync_service_pb2.XapiCredentials(username=username, password=password),
        request_id=request_id or "",
    )
    if tls.WhichOneof("verification"):
        request.tls.CopyFrom(tls)
    client = get_state(ctx).client
    pool = client.call(client.sync.RegisterPool, request).pool
    get_state(ctx).output.line(f"registered the pool of cluster {pool.cluster_id} at {pool.master_url}")
    show_pool(ctx, pool)


@app.command("deregister")
def deregister(
    ctx: typer.Context,
    cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Stop watching a pool and remove its mirror."""
    if not yes and not typer.confirm(f"Deregister the pool of cluster {cluster_id} and drop its mirror?"):
        fail("deregistration cancelled", ExitCode.USAGE)
    client = get_state(ctx).client
    client.call(
        client.sync.DeregisterPool,
        sync_service_pb2.DeregisterPoolRequest(cluster_id=cluster_id, request_id=request_id or ""),
    )
    get_state(ctx).output.line(f"deregistered the pool of cluster {cluster_id}")
    if get_state(ctx).output.json:
        get_state(ctx).output.emit_json({"cluster_id": cluster_id, "deregistered": True})


@app.command("resync")
def resync(ctx: typer.Context, cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")]) -> None:
    """Force a full re-list of a pool and a diff against the mirror."""
    client = get_state(ctx).client
    show_pool(ctx, client.call(client.sync.ResyncPool, sync_service_pb2.ResyncPoolRequest(cluster_id=cluster_id)).pool)
