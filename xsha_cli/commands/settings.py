"""`xsha settings`: xenserver.native.ha.enabled, the other global HA settings, and per-cluster overrides."""

from __future__ import annotations

from typing import Annotated

import typer

from xsha_api.v1 import ha_service_pb2
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_duration, message_to_dict
from xsha_cli.parsing import duration_proto, parse_assignment, parse_bool, parse_enum

app = typer.Typer(help="Global HA settings (xenserver.native.ha.enabled, grace periods, heartbeat) and overrides.")


def show_settings(
    ctx: typer.Context, settings: ha_service_pb2.Settings, left_unchanged: list[str] | None = None
) -> None:
    output = get_state(ctx).output
    if output.json:
        payload = message_to_dict(settings)
        if left_unchanged is not None:
            payload = {"settings": payload, "clusters_left_unchanged": left_unchanged}
        output.emit_json(payload)
        return
    glob: ha_service_pb2.GlobalSettings = getattr(settings, "global")  # "global" is a Python keyword
    fields = [
        ("xenserver.native.ha.enabled", fmt_bool(glob.native_ha_enabled)),
        ("drift repair mode", enum_label(ha_service_pb2.DriftRepairMode, glob.drift_repair_mode)),
        ("restart overdue grace", fmt_duration(glob.restart_overdue_grace)),
        ("agent disconnected grace", fmt_duration(glob.agent_disconnected_grace)),
        ("xenserver.heartbeat.interval", fmt_duration(glob.heartbeat_interval)),
        ("xenserver.heartbeat.timeout", fmt_duration(glob.heartbeat_timeout)),
        ("unprotected retry interval", fmt_duration(glob.unprotected_retry_interval)),
        ("version", str(settings.version)),
    ]
    fields += [
        (f"override {override.cluster_id}", f"native HA {'enabled' if override.native_ha_enabled else 'disabled'}")
        for override in settings.cluster_overrides
    ]
    output.record("Settings", fields, settings)
    if left_unchanged:
        output.line(f"pinned clusters left as they were: {', '.join(left_unchanged)}", style="yellow")


@app.command("get")
def get_settings(ctx: typer.Context) -> None:
    """Show the global settings and the cluster overrides."""
    client = get_state(ctx).client
    show_settings(ctx, client.call(client.ha.GetSettings, ha_service_pb2.GetSettingsRequest()).settings)


@app.command("set")
def set_settings(
    ctx: typer.Context,
    native_ha: Annotated[
        bool | None,
        typer.Option("--native-ha/--no-native-ha", help="xenserver.native.ha.enabled (global).", show_default=False),
    ] = None,
    drift_repair_mode: Annotated[str | None, typer.Option(help="repair or report-only.")] = None,
    restart_overdue_grace: Annotated[str | None, typer.Option(help="e.g. 120s, 2m.")] = None,
    agent_disconnected_grace: Annotated[str | None, typer.Option(help="e.g. 120s.")] = None,
    heartbeat_interval: Annotated[str | None, typer.Option(help="xenserver.heartbeat.interval, e.g. 60s.")] = None,
    heartbeat_timeout: Annotated[str | None, typer.Option(help="xenserver.heartbeat.timeout, e.g. 120s.")] = None,
    unprotected_retry_interval: Annotated[str | None, typer.Option(help="e.g. 60s.")] = None,
    cluster_override: Annotated[
        list[str] | None,
        typer.Option(help="CLUSTER=true|false: a cluster's own xenserver.native.ha.enabled (repeatable)."),
    ] = None,
    clear_override: Annotated[list[str] | None, typer.Option(help="Remove a cluster's override (repeatable).")] = None,
    apply_to_unpinned_only: Annotated[
        bool, typer.Option(help="Apply to unpinned clusters only; pinned ones are listed and left as they are.")
    ] = False,
    expected_version: Annotated[
        int | None, typer.Option(help="Refuse (ABORTED) unless the settings are still at this version.")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Change settings; options left out are left as they are."""
    patch = ha_service_pb2.GlobalSettingsPatch()
    if native_ha is not None:
        patch.native_ha_enabled = native_ha
    if drift_repair_mode is not None:
        patch.drift_repair_mode = parse_enum(
            ha_service_pb2.DriftRepairMode, drift_repair_mode, option="--drift-repair-mode"
        )
    durations = {
        "restart_overdue_grace": (restart_overdue_grace, "--restart-overdue-grace"),
        "agent_disconnected_grace": (agent_disconnected_grace, "--agent-disconnected-grace"),
        "heartbeat_interval": (heartbeat_interval, "--heartbeat-interval"),
        "heartbeat_timeout": (heartbeat_timeout, "--heartbeat-timeout"),
        "unprotected_retry_interval": (unprotected_retry_interval, "--unprotected-retry-interval"),
    }
    for field_name, (text, option) in durations.items():
        if text is not None:
            getattr(patch, field_name).CopyFrom(duration_proto(text, option=option))
    overrides = []
    for item in cluster_override or []:
        cluster_id, value = parse_assignment(item, option="--cluster-override")
        overrides.append(
            ha_service_pb2.ClusterOverride(
                cluster_id=cluster_id, native_ha_enabled=parse_bool(value, option="--cluster-override")
            )
        )
    request = ha_service_pb2.UpdateSettingsRequest(
        set_cluster_overrides=overrides,
        clear_cluster_overrides=clear_override or [],
        apply_to_unpinned_only=apply_to_unpinned_only,
        request_id=request_id or "",
    )
    getattr(request, "global").CopyFrom(patch)
    if expected_version is not None:
        request.expected_version = expected_version
    client = get_state(ctx).client
    response = client.call(client.ha.UpdateSettings, request)
    show_settings(ctx, response.settings, list(response.clusters_left_unchanged))
