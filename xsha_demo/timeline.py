"""The demo's timeline: one readable line per thing that happened, from the demo's own steps and from the two
services' watch streams (sync_service's mirror changes and ha_service's HA events), printed as they arrive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from rich.console import Console
from rich.text import Text

from xsha_api.v1 import common_pb2, ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_cli.output import enum_label, fmt_duration

# Who did something, and the colour of its column.
ACTORS = {
    "demo": "bold white",
    "CloudStack": "magenta",
    "XenServer": "green",
    "sync_service": "blue",
    "ha_service": "cyan",
    "xapi_sim": "red",
}


class Timeline:
    """Prints timestamped lines (thread-safe) and remembers them, so the demo can wait for what it expects."""

    def __init__(self, console: Console, cluster_labels: dict[str, str]) -> None:
        self.console = console
        self.cluster_labels = cluster_labels
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def add(self, cluster_id: str, actor: str, text: str, *, style: str = "") -> None:
        elapsed = time.monotonic() - self.started
        label = self.cluster_labels.get(cluster_id, cluster_id or "-")
        line = Text()
        line.append(f"+{elapsed:6.1f}s  ", style="dim")
        line.append(f"{label:<22}", style="bold")
        line.append(f"{actor:<13}", style=ACTORS.get(actor, ""))
        line.append(text, style=style)
        with self._lock:
            self.console.print(line, soft_wrap=True)
            self.lines.append(line.plain)
            self._changed.notify_all()

    def note(self, text: str, *, style: str = "bold") -> None:
        with self._lock:
            self.console.print(Text(text, style=style), soft_wrap=True)

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float) -> bool:
        """Until `condition(lines)` holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
            return True


class StreamFollower:
    """Follows one server stream in a thread; `stop()` cancels it."""

    def __init__(self, name: str, open_call: Callable[[], Any], handle: Callable[[Any], None]) -> None:
        self._open_call = open_call
        self._handle = handle
        self._stopped = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> StreamFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                if self._stopped.is_set():
                    return
                self._call = self._open_call()
            try:
                for response in self._call:
                    self._handle(response)
            except grpc.RpcError as error:
                if self._stopped.is_set():
                    return
                self.error = str(error)
            time.sleep(0.2)

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._call is not None:
                self._call.cancel()
        self._thread.join(5)


class MirrorChanges:
    """sync_service's mirror changes, as timeline lines: host liveness, and the demo VMs' power state and host."""

    def __init__(self, timeline: Timeline, vm_names: Iterable[str], host_names: dict[str, str]) -> None:
        self.timeline = timeline
        self.vm_names = set(vm_names)
        self.host_names = dict(host_names)
        self._seen_vms: dict[str, tuple[int, str, str]] = {}
        self._seen_hosts: dict[str, bool] = {}

    def handle(self, response: sync_service_pb2.WatchChangesResponse) -> None:
        if not response.HasField("change"):
            return
        change = response.change
        if change.HasField("host"):
            self._host(change.cluster_id, change.host)
        elif change.HasField("vm") and change.vm.name in self.vm_names:
            self._vm(change.cluster_id, change.vm)

    def _host(self, cluster_id: str, host: sync_service_pb2.Host) -> None:
        self.host_names[host.uuid] = host.name
        before = self._seen_hosts.get(host.uuid)
        self._seen_hosts[host.uuid] = host.live
        if before is None or before == host.live:
            return
        if host.live:
            self.timeline.add(cluster_id, "sync_service", f"mirror: host {host.name} is live again")
        else:
            self.timeline.add(cluster_id, "sync_service", f"mirror: host {host.name} is no longer live", style="red")

    def _vm(self, cluster_id: str, vm: sync_service_pb2.Vm) -> None:
        host = self.host_names.get(vm.resident_host_uuid, "")
        state = (vm.xapi_power_state, host, vm.ha_restart_priority)
        before = self._seen_vms.get(vm.uuid)
        self._seen_vms[vm.uuid] = state
        if before == state:
            return
        power = enum_label(common_pb2.XapiPowerState, vm.xapi_power_state).capitalize()
        where = f" on {host}" if host else ""
        if before is not None and before[2] != vm.ha_restart_priority:
            priority = vm.ha_restart_priority or "(none)"
            self.timeline.add(cluster_id, "sync_service", f"mirror: {vm.name} ha_restart_priority is now {priority}")
        if before is None or before[:2] != state[:2]:
            self.timeline.add(cluster_id, "sync_service", f"mirror: {vm.name} {power}{where}")


class HaEvents:
    """ha_service's actions and notifications, as timeline lines."""

    def __init__(self, timeline: Timeline, host_names: Callable[[], dict[str, str]]) -> None:
        self.timeline = timeline
        self.host_names = host_names
        self.actions: list[ha_service_pb2.HaAction] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def handle(self, response: ha_service_pb2.WatchHaEventsResponse) -> None:
        if not response.HasField("event"):
            return
        event = response.event
        names = self.host_names()
        if event.HasField("notification"):
            note = event.notification
            if note.notification_id in self._seen:
                return
            self._seen.add(note.notification_id)
            kind = enum_label(ha_service_pb2.HaNotificationKind, note.kind)
            if note.kind == ha_service_pb2.HA_NOTIFICATION_KIND_VM_RESTARTED_BY_HYPERVISOR:
                old = names.get(note.old_host_uuid, note.old_host_uuid[:8])
                new = names.get(note.new_host_uuid, note.new_host_uuid[:8])
                down = f", down {fmt_duration(note.downtime)}" if note.HasField("downtime") else ""
                text = f"{kind}: XenServer restarted {note.instance_name} {old} -> {new}{down}; no CloudStack action"
                self.timeline.add(note.cluster_id, "ha_service", text, style="bold green")
            else:
                self.timeline.add(note.cluster_id, "ha_service", f"{kind}: {note.instance_name} {note.message}")
            return
        action = event.action
        if action.action_id in self._seen:
            return
        self._seen.add(action.action_id)
        with self._lock:
            self.actions.append(action)
        kind = enum_label(ha_service_pb2.HaActionKind, action.kind)
        cause = enum_label(ha_service_pb2.RestartCause, action.cause)
        host = names.get(action.host_uuid, action.host_uuid[:8])
        text = f"{kind} action ({cause}, host {host}): CloudStack must restart {action.instance_name}"
        self.timeline.add(action.cluster_id, "ha_service", text, style="bold yellow")

    def pending_actions(self) -> list[ha_service_pb2.HaAction]:
        with self._lock:
            return list(self.actions)


def follow_changes(
    stub: sync_service_pb2_grpc.HypervisorSyncServiceStub,
    metadata: tuple[tuple[str, str], ...],
    since: int,
    handler: MirrorChanges,
) -> StreamFollower:
    position = {"revision": since}

    def open_call() -> Any:
        kinds = [sync_service_pb2.RESOURCE_KIND_HOST, sync_service_pb2.RESOURCE_KIND_VM]
        request = sync_service_pb2.WatchChangesRequest(since_revision=position["revision"], kinds=kinds)
        return stub.WatchChanges(request, metadata=metadata)

    def handle(response: sync_service_pb2.WatchChangesResponse) -> None:
        if response.HasField("change"):
            position["revision"] = response.change.revision
        else:
            position["revision"] = max(position["revision"], response.bookmark.revision)
        handler.handle(response)

    return StreamFollower("demo-changes", open_call, handle).start()


def follow_ha_events(
    stub: ha_service_pb2_grpc.HaPolicyServiceStub,
    metadata: tuple[tuple[str, str], ...],
    since: int,
    handler: HaEvents,
) -> StreamFollower:
    position = {"revision": since}

    def open_call() -> Any:
        request = ha_service_pb2.WatchHaEventsRequest(since_revision=position["revision"])
        return stub.WatchHaEvents(request, metadata=metadata)

    def handle(response: ha_service_pb2.WatchHaEventsResponse) -> None:
        if response.HasField("event"):
            position["revision"] = max(position["revision"], response.event.revision)
        else:
            position["revision"] = max(position["revision"], response.bookmark.revision)
        handler.handle(response)

    return StreamFollower("demo-ha-events", open_call, handle).start()
