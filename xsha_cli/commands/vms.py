"""`xsha vms`: VMs as the mirror sees them (filters, paging), managed VMs and their HA decisions, wanted state."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_cli.client import Client
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_bool, fmt_bytes, fmt_time, or_dash, short_uuid
from xsha_cli.parsing import parse_enum, parse_enums

app = typer.Typer(help="VMs as XAPI reports them, managed VMs with their HA decisions, and wanted state.")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def host_names(client: Client, cluster_id: str = "") -> dict[str, str]:
    """host uuid -> name, to show hosts by name."""
    hosts, _ = client.paged(
        client.sync.ListHosts, sync_service_pb2.ListHostsRequest(cluster_id=cluster_id, include_removed=True), "hosts"
    )
    return {host.uuid: host.name for host in hosts}


def resolve_host(client: Client, cluster_id: str, host: str) -> str:
    """A host uuid from a uuid or a host name."""
    if _UUID.match(host):
        return host
    matches = [uuid for uuid, name in host_names(client, cluster_id).items() if name == host]
    if len(matches) != 1:
        problem = "no host" if not matches else "several hosts"
        raise typer.BadParameter(f"{problem} named {host!r}; give the host uuid (see `xsha hosts list`)")
    return matches[0]


def priority_label(priority: str) -> str:
    return priority if priority else "(none)"


@app.command("list")
def list_vms(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    host: Annotated[str, typer.Option(help="Only VMs resident on this host (uuid or name).")] = "",
    power_state: Annotated[
        list[str] | None,
        typer.Option(help="CloudStack power state: power-on, power-off, power-unknown, power-report-missing."),
    ] = None,
    xapi_power_state: Annotated[
        list[str] | None, typer.Option(help="XAPI power state: running, halted, paused, suspended.")
    ] = None,
    priority: Annotated[
        list[str] | None, typer.Option(help="ha_restart_priority: restart, best-effort, or none (not set).")
    ] = None,
    name_prefix: Annotated[str, typer.Option(help="Only VMs whose name starts with this.")] = "",
    include_removed: Annotated[bool, typer.Option(help="Include VMs gone from XAPI.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many VMs.")] = None,
) -> None:
    """List VMs, filtered; every page is fetched."""
    state = get_state(ctx)
    client = state.client
    request = sync_service_pb2.ListVmsRequest(
        cluster_id=cluster,
        resident_host_uuid=resolve_host(client, cluster, host) if host else "",
        power_states=parse_enums(common_pb2.PowerState, power_state, option="--power-state"),
        xapi_power_states=parse_enums(common_pb2.XapiPowerState, xapi_power_state, option="--xapi-power-state"),
        ha_restart_priorities=["" if item.lower() in ("none", "") else item for item in priority or []],
        name_prefix=name_prefix,
        include_removed=include_removed,
    )
    vms, revision = client.paged(client.sync.ListVms, request, "vms", limit=limit)
    names = host_names(client, cluster) if vms and not state.output.json else {}
    rows = [
        (
            vm.name,
            vm.cluster_id,
            enum_label(common_pb2.XapiPowerState, vm.xapi_power_state),
            enum_label(common_pb2.PowerState, vm.power_state),
            names.get(vm.resident_host_uuid, short_uuid(vm.resident_host_uuid)),
            priority_label(vm.ha_restart_priority),
            str(vm.order),
            fmt_bytes(vm.memory_static_max_bytes),
            vm.uuid,
        )
        for vm in vms
    ]
    columns = ("name", "cluster", "XAPI state", "power", "host", "HA priority", "order", "memory", "uuid")
    state.output.table(f"VMs (revision {revision})", columns, rows, vms, empty="no VM matches")


@app.command("get")
def get_vm(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="VM uuid, or its name with --cluster.")],
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Look the VM up by name in this cluster.")] = "",
) -> None:
    """Show one VM from the mirror."""
    state = get_state(ctx)
    client = state.client
    if cluster:
        request = sync_service_pb2.GetVmRequest(name=sync_service_pb2.VmNameKey(cluster_id=cluster, name=key))
    else:
        request = sync_service_pb2.GetVmRequest(uuid=key)
    vm = client.call(client.sync.GetVm, request).vm
    fields = [
        ("name", vm.name),
        ("uuid", vm.uuid),
        ("cluster", vm.cluster_id),
        ("XAPI power state", enum_label(common_pb2.XapiPowerState, vm.xapi_power_state)),
        ("power state", enum_label(common_pb2.PowerState, vm.power_state)),
        ("resident host", or_dash(vm.resident_host_uuid)),
        ("HA priority", priority_label(vm.ha_restart_priority)),
        ("order / start delay", f"{vm.order} / {vm.start_delay_seconds}s"),
        ("memory", fmt_bytes(vm.memory_static_max_bytes)),
        ("power state changed", f"{fmt_time(vm.power_state_update_time)} ({vm.power_state_update_count} changes)"),
        ("removed", fmt_bool(vm.removed)),
        ("revision", str(vm.revision)),
    ]
    state.output.record(f"VM {vm.name}", fields, vm)


@app.command("managed")
def managed(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    protection: Annotated[
        list[str] | None,
        typer.Option(help="Protection state: not-applicable, pending, protected, unprotected."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many VMs.")] = None,
) -> None:
    """List the VMs ha_service manages: their decision, wanted state and protection."""
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.ListManagedVmsRequest(
        cluster_id=cluster,
        protection_states=parse_enums(ha_service_pb2.ProtectionState, protection, option="--protection"),
    )
    vms, _ = client.paged(client.ha.ListManagedVms, request, "vms", limit=limit)
    rows = [
        (
            vm.decision.instance_name,
            vm.decision.cluster_id,
            enum_label(common_pb2.VmType, vm.decision.vm_type),
            enum_label(common_pb2.HaMode, vm.decision.mode),
            enum_label(ha_service_pb2.Restarter, vm.decision.restarter),
            priority_label(vm.decision.ha_restart_priority),
            enum_label(ha_service_pb2.WantedState, vm.wanted_state),
            enum_label(ha_service_pb2.ProtectionState, vm.protection_state)
            + (f" ({vm.unprotected_reason})" if vm.unprotected_reason else ""),
            enum_label(common_pb2.XapiPowerState, vm.observed_power_state) if vm.present_on_hypervisor else "absent",
        )
        for vm in vms
    ]
    columns = ("instance", "cluster", "type", "mode", "restarter", "priority", "wanted", "protection", "observed")
    state.output.table("Managed VMs", columns, rows, vms, empty="no managed VM")


@app.command("wanted")
def wanted(
    ctx: typer.Context,
    cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")],
    instance_name: Annotated[str, typer.Argument(help="CloudStack instance name, e.g. i-2-10-VM.")],
    wanted_state: Annotated[str, typer.Argument(help="running or stopped (stopped on purpose: never restarted).")],
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Tell ha_service whether a VM should be running (what the orchestrator does on start/stop)."""
    state = get_state(ctx)
    client = state.client
    request = ha_service_pb2.SetVmWantedStateRequest(
        cluster_id=cluster_id,
        instance_name=instance_name,
        wanted_state=parse_enum(ha_service_pb2.WantedState, wanted_state, option="WANTED_STATE"),
        request_id=request_id or "",
    )
    vm = client.call(client.ha.SetVmWantedState, request).vm
    fields = [
        ("instance", vm.decision.instance_name),
        ("cluster", vm.decision.cluster_id),
        ("wanted state", enum_label(ha_service_pb2.WantedState, vm.wanted_state)),
        ("protection", enum_label(ha_service_pb2.ProtectionState, vm.protection_state)),
    ]
    state.output.record(f"Managed VM {vm.decision.instance_name}", fields, vm)
