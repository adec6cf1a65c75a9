"""`xsha watch`: follow mirror changes (list, then watch from the list's revision) and HA events live.

Both watches resume from the last revision seen; when the service answers OUT_OF_RANGE (the revision is no longer
retained) they list again and continue from the new revision, as the contract asks of every client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import grpc
import typer

from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_cli.client import Client, Stream
from xsha_cli.context import get_state
from xsha_cli.output import (
    Output,
    enum_label,
    fmt_clock,
    fmt_duration,
    message_to_dict,
    short_uuid,
)
from xsha_cli.parsing import duration_proto, parse_enums, parse_seconds

app = typer.Typer(help="Follow mirror changes and HA events (actions and notifications) live; Ctrl-C stops.")

_OUT_OF_RANGE = frozenset({grpc.StatusCode.OUT_OF_RANGE})
_RECONNECT_PAUSE_SECONDS = 0.5


# --- one line per change / event (also used by the demo's timeline) -----------------------------------------------


def describe_change(change: sync_service_pb2.Change, host_names: dict[str, str]) -> str:
    kind = enum_label(sync_service_pb2.ResourceKind, change.kind).lower()
    head = f"{enum_label(sync_service_pb2.ChangeType, change.type):8} {kind:4} {change.cluster_id}"
    which = change.WhichOneof("object")
    if which == "vm":
        vm = change.vm
        host = host_names.get(vm.resident_host_uuid, short_uuid(vm.resident_host_uuid))
        state = enum_label(common_pb2.XapiPowerState, vm.xapi_power_state)
        return f"{head}  {vm.name}  {state} on {host}  priority {vm.ha_restart_priority or '(none)'}"
    if which == "host":
        host_record = change.host
        liveness = "live" if host_record.live else "DEAD"
        role = " master" if host_record.is_master else ""
        return f"{head}  {host_record.name}  {liveness}{role}"
    if which == "pool":
        pool = change.pool
        ha = "on" if pool.ha.ha_enabled else "off"
        sync = enum_label(sync_service_pb2.SyncState, pool.sync_status.state)
        return f"{head}  {pool.name or pool.pool_uuid}  pool HA {ha}  sync {sync}"
    return head


def describe_ha_event(event: ha_service_pb2.HaEvent, host_names: dict[str, str] | None = None) -> str:
    names = host_names or {}
    redelivered = " (redelivered)" if event.redelivered else ""
    if event.WhichOneof("body") == "action":
        action = event.action
        cause = enum_label(ha_service_pb2.RestartCause, action.cause)
        host = names.get(action.host_uuid, short_uuid(action.host_uuid))
        return (
            f"ACTION {enum_label(ha_service_pb2.HaActionKind, action.kind)}"
            f"{f' ({cause})' if cause != '-' else ''} {enum_label(ha_service_pb2.HaActionState, action.state)}"
            f"  {action.cluster_id}  {action.instance_name}  host {host}  id {action.action_id}{redelivered}"
            f"{f'  {action.message}' if action.message else ''}"
        )
    note = event.notification
    line = f"NOTIFY {enum_label(ha_service_pb2.HaNotificationKind, note.kind)}  {note.cluster_id}  {note.instance_name}"
    if note.old_host_uuid or note.new_host_uuid:
        old = names.get(note.old_host_uuid, short_uuid(note.old_host_uuid))
        new = names.get(note.new_host_uuid, short_uuid(note.new_host_uuid))
        line += f"  {old} -> {new}"
    if note.HasField("downtime"):
        line += f"  down {fmt_duration(note.downtime)}"
    return line + (f"  {note.message}" if note.message else "")


# --- the watch loop shared by both commands -------------------------------------------------------------------------


class _Watch:
    """Runs streams one after another (reconnecting after OUT_OF_RANGE or a clean end) until stopped."""

    def __init__(self, max_items: int | None, duration: float | None) -> None:
        self.max_items = max_items
        self.seen = 0
        self._stopped = threading.Event()
        self._stream: Stream | None = None
        self._timer = threading.Timer(duration, self.stop) if duration else None

    def stop(self) -> None:
        self._stopped.set()
        if self._stream is not None:
            self._stream.cancel()

    def counted(self) -> bool:
        """Count one item; True when the limit is reached (the watch then stops)."""
        self.seen += 1
        if self.max_items is not None and self.seen >= self.max_items:
            self.stop()
            return True
        return False

    def run(
        self,
        open_stream: Callable[[], Stream],
        handle: Callable[[Any], None],
        on_out_of_range: Callable[[], None],
    ) -> None:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        try:
            while not self._stopped.is_set():
                self._stream = open_stream()
                if self._stopped.is_set():
                    self._stream.cancel()
                try:
                    for response in self._stream.responses(allow=_OUT_OF_RANGE):
                        handle(response)
                        if self._stopped.is_set():
                            break
                except grpc.RpcError:
                    on_out_of_range()
                    continue
                if not self._stopped.is_set():
                    time.sleep(_RECONNECT_PAUSE_SECONDS)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            if self._timer is not None:
                self._timer.cancel()


def _emit(output: Output, text: str, payload: dict[str, Any], style: str | None = None) -> None:
    if output.json:
        output.emit_json(payload, compact=True)
    else:
        output.out.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


_CHANGE_STYLES = {
    sync_service_pb2.CHANGE_TYPE_ADDED: "green",
    sync_service_pb2.CHANGE_TYPE_REMOVED: "red",
}


def _snapshot(client: Client, cluster: str, kinds: list[int], host_names: dict[str, str]) -> tuple[int, str]:
    """List what the watch covers; returns the revision to watch from and a summary."""
    wanted = set(kinds) or {
        sync_service_pb2.RESOURCE_KIND_POOL,
        sync_service_pb2.RESOURCE_KIND_HOST,
        sync_service_pb2.RESOURCE_KIND_VM,
    }
    revisions: list[int] = []
    counts: list[str] = []
    # Hosts are always listed: the change lines show hosts by name.
    hosts, host_revision = client.paged(
        client.sync.ListHosts, sync_service_pb2.ListHostsRequest(cluster_id=cluster, include_removed=True), "hosts"
    )
    host_names.update({host.uuid: host.name for host in hosts})
    if sync_service_pb2.RESOURCE_KIND_POOL in wanted:
        pools, revision = client.paged(client.sync.ListPools, sync_service_pb2.ListPoolsRequest(), "pools")
        revisions.append(revision)
        counts.append(f"{sum(1 for pool in pools if not cluster or pool.cluster_id == cluster)} pools")
    if sync_service_pb2.RESOURCE_KIND_HOST in wanted:
        revisions.append(host_revision)
        counts.append(f"{sum(1 for host in hosts if not host.removed)} hosts")
    if sync_service_pb2.RESOURCE_KIND_VM in wanted:
        vms, revision = client.paged(client.sync.ListVms, sync_service_pb2.ListVmsRequest(cluster_id=cluster), "vms")
        revisions.append(revision)
        counts.append(f"{len(vms)} VMs")
    return min(revisions), ", ".join(counts)


@app.command("changes")
def watch_changes(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    kind: Annotated[list[str] | None, typer.Option(help="pool, host or vm (repeatable); all when left out.")] = None,
    since: Annotated[
        int | None, typer.Option(min=0, help="Watch from this revision instead of listing first (0: all retained).")
    ] = None,
    max_changes: Annotated[int | None, typer.Option(min=1, help="Stop after this many changes.")] = None,
    duration: Annotated[str | None, typer.Option(help="Stop after this long, e.g. 30s, 5m.")] = None,
    bookmarks: Annotated[bool, typer.Option(help="Show bookmarks too.")] = False,
    bookmark_interval: Annotated[str, typer.Option(help="How often the service sends bookmarks.")] = "5s",
) -> None:
    """Follow changes of the mirror (pools, hosts, VMs): list, then watch from the list's revision."""
    state = get_state(ctx)
    client, output = state.client, state.output
    kinds = parse_enums(sync_service_pb2.ResourceKind, kind, option="--kind")
    interval = duration_proto(bookmark_interval, option="--bookmark-interval")
    watch = _Watch(max_changes, parse_seconds(duration, option="--duration") if duration else None)
    host_names: dict[str, str] = {}
    position = {"revision": 0}

    def relist() -> None:
        position["revision"], summary = _snapshot(client, cluster, kinds, host_names)
        output.line(f"listed {summary} at revision {position['revision']}; watching for changes (Ctrl-C stops)")

    def open_stream() -> Stream:
        request = sync_service_pb2.WatchChangesRequest(
            since_revision=position["revision"], kinds=kinds, cluster_id=cluster, bookmark_interval=interval
        )
        return client.stream(client.sync.WatchChanges, request)

    def handle(response: sync_service_pb2.WatchChangesResponse) -> None:
        if response.HasField("bookmark"):
            position["revision"] = max(position["revision"], response.bookmark.revision)
            if bookmarks:
                text = f"{fmt_clock(response.bookmark.time)} rev {response.bookmark.revision:<6} bookmark"
                _emit(output, text, {"bookmark": message_to_dict(response.bookmark)}, style="dim")
            return
        change = response.change
        position["revision"] = change.revision
        if change.HasField("host"):
            host_names[change.host.uuid] = change.host.name
        text = f"{fmt_clock(change.commit_time)} rev {change.revision:<6} {describe_change(change, host_names)}"
        _emit(output, text, {"change": message_to_dict(change)}, style=_CHANGE_STYLES.get(change.type))
        watch.counted()

    def out_of_range() -> None:
        output.line(f"revision {position['revision']} is no longer retained; listing again", style="yellow")
        relist()

    if since is None:
        relist()
    else:
        position["revision"] = since
    watch.run(open_stream, handle, out_of_range)


def latest_event_revision(client: Client, cluster: str) -> int:
    request = ha_service_pb2.ListHaActionsRequest(cluster_id=cluster, page_size=1)
    return int(client.call(client.ha.ListHaActions, request).revision)


@app.command("events")
def watch_events(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
    since: Annotated[
        int | None, typer.Option(min=0, help="Show events after this revision (0: all retained); default: new ones.")
    ] = None,
    skip_pending: Annotated[bool, typer.Option(help="Do not resend unacknowledged actions first.")] = False,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    duration: Annotated[str | None, typer.Option(help="Stop after this long, e.g. 30s, 5m.")] = None,
    bookmark_interval: Annotated[str, typer.Option(help="How often the service sends bookmarks.")] = "5s",
) -> None:
    """Follow HA actions and notifications (VM_RESTARTED_BY_HYPERVISOR, RESTART_VM, ...)."""
    state = get_state(ctx)
    client, output = state.client, state.output
    interval = duration_proto(bookmark_interval, option="--bookmark-interval")
    watch = _Watch(max_events, parse_seconds(duration, option="--duration") if duration else None)
    position = {"revision": latest_event_revision(client, cluster) if since is None else since}
    output.line(f"watching HA events after revision {position['revision']} (Ctrl-C stops)")

    def open_stream() -> Stream:
        request = ha_service_pb2.WatchHaEventsRequest(
            since_revision=position["revision"],
            cluster_id=cluster,
            skip_pending_actions=skip_pending,
            bookmark_interval=interval,
        )
        return client.stream(client.ha.WatchHaEvents, request)

    def handle(response: ha_service_pb2.WatchHaEventsResponse) -> None:
        if response.HasField("bookmark"):
            position["revision"] = max(position["revision"], response.bookmark.revision)
            return
        event = response.event
        position["revision"] = max(position["revision"], event.revision)
        created = event.action.create_time if event.HasField("action") else event.notification.create_time
        text = f"{fmt_clock(created)} rev {event.revision:<6} {describe_ha_event(event)}"
        style = "yellow" if event.HasField("action") else "cyan"
        _emit(output, text, {"event": message_to_dict(event)}, style=style)
        watch.counted()

    def out_of_range() -> None:
        position["revision"] = latest_event_revision(client, cluster)
        output.line(f"events before revision {position['revision']} are no longer retained; continuing from there")

    watch.run(open_stream, handle, out_of_range)
