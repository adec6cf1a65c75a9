"""Pure domain logic of the mirror: XAPI records -> domain facts, CloudStack power-state rules, diffs.

Nothing here does I/O; the watcher feeds records in and the repository stores what comes out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from sync_service.xapi.client import Event, as_int

NULL_REF: Final = "OpaqueRef:NULL"
# CloudStack's MAX_CONSECUTIVE_SAME_STATE_UPDATE_COUNT: after 3 identical reports the state stops being written.
MAX_SAME_STATE_REPORTS: Final = 3
HA_RESTART_PRIORITIES: Final = ("restart", "best-effort", "")
WATCHED_CLASSES: Final = ("vm", "host", "host_metrics", "pool")


class XapiPowerState(StrEnum):
    HALTED = "Halted"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    UNKNOWN = ""


class PowerState(StrEnum):
    """CloudStack's VirtualMachine.PowerState."""

    POWER_ON = "PowerOn"
    POWER_OFF = "PowerOff"
    POWER_UNKNOWN = "PowerUnknown"
    POWER_REPORT_MISSING = "PowerReportMissing"


def parse_xapi_power_state(value: Any) -> XapiPowerState:
    try:
        return XapiPowerState(str(value))
    except ValueError:
        return XapiPowerState.UNKNOWN


def cloudstack_power_state(xapi_state: XapiPowerState, *, removed: bool = False) -> PowerState:
    """CitrixResourceBase's mapping: Running -> PowerOn; Halted, Paused, Suspended -> PowerOff; gone ->
    PowerReportMissing; anything else PowerUnknown."""
    if removed:
        return PowerState.POWER_REPORT_MISSING
    if xapi_state is XapiPowerState.RUNNING:
        return PowerState.POWER_ON
    if xapi_state in (XapiPowerState.HALTED, XapiPowerState.PAUSED, XapiPowerState.SUSPENDED):
        return PowerState.POWER_OFF
    return PowerState.POWER_UNKNOWN


@dataclass(frozen=True, slots=True)
class PowerReport:
    state: PowerState
    update_time: dt.datetime
    update_count: int


def next_power_report(
    previous: PowerReport | None, state: PowerState, now: dt.datetime, *, repeated_report: bool
) -> PowerReport:
    """CloudStack's power_state_update_time/count rules.

    A new state sets time=now, count=1. The same state reported again (`repeated_report`: a full list that
    re-reports every VM, the analogue of CloudStack's periodic host report) increments the count up to 3 and
    then stops writing. Events that leave the power state alone are not reports of it and change nothing.
    """
    if previous is None or previous.state is not state:
        return PowerReport(state, now, 1)
    if not repeated_report or previous.update_count >= MAX_SAME_STATE_REPORTS:
        return previous
    return PowerReport(state, now, previous.update_count + 1)


# --------------------------------------------------------------------------------------------- raw records


@dataclass(frozen=True, slots=True)
class VersionFacts:
    api_version_major: int = 0
    api_version_minor: int = 0
    product_brand: str = ""
    product_version: str = ""
    platform_version: str = ""
    build_number: str = ""


@dataclass(frozen=True, slots=True)
class HaFacts:
    ha_enabled: bool = False
    ha_host_failures_to_tolerate: int = 0
    ha_plan_exists_for: int = 0
    ha_allow_overcommit: bool = False
    ha_overcommitted: bool = False


@dataclass(frozen=True, slots=True)
class RawVm:
    ref: str
    uuid: str
    name: str
    power_state: XapiPowerState
    resident_on: str
    ha_restart_priority: str
    order: int
    start_delay: int
    ha_always_run: bool
    memory_static_max: int


@dataclass(frozen=True, slots=True)
class RawHost:
    ref: str
    uuid: str
    name: str
    address: str
    enabled: bool
    metrics_ref: str
    version: VersionFacts


@dataclass(frozen=True, slots=True)
class RawHostMetrics:
    ref: str
    live: bool
    memory_total: int
    memory_free: int


@dataclass(frozen=True, slots=True)
class RawPool:
    ref: str
    uuid: str
    name: str
    master_ref: str
    ha: HaFacts


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true" or value == "1"
    return bool(value)


def is_mirrored_vm(record: Mapping[str, Any]) -> bool:
    """Templates, snapshots and control domains are not VMs (rule R6)."""
    return not (
        _bool(record.get("is_a_template", False))
        or _bool(record.get("is_a_snapshot", False))
        or _bool(record.get("is_control_domain", False))
    )


def vm_from_record(ref: str, record: Mapping[str, Any]) -> RawVm:
    return RawVm(
        ref=ref,
        uuid=str(record.get("uuid", "")),
        name=str(record.get("name_label", "")),
        power_state=parse_xapi_power_state(record.get("power_state", "")),
        resident_on=str(record.get("resident_on") or NULL_REF),
        ha_restart_priority=str(record.get("ha_restart_priority") or ""),
        order=as_int(record.get("order")),
        start_delay=as_int(record.get("start_delay")),
        ha_always_run=_bool(record.get("ha_always_run", False)),
        memory_static_max=as_int(record.get("memory_static_max")),
    )


def version_from_host_record(record: Mapping[str, Any]) -> VersionFacts:
    software = record.get("software_version") or {}
    if not isinstance(software, Mapping):
        software = {}
    return VersionFacts(
        api_version_major=as_int(record.get("API_version_major")),
        api_version_minor=as_int(record.get("API_version_minor")),
        product_brand=str(software.get("product_brand", "")),
        product_version=str(software.get("product_version", "")),
        platform_version=str(software.get("platform_version", "")),
        build_number=str(software.get("build_number", "")),
    )


def host_from_record(ref: str, record: Mapping[str, Any]) -> RawHost:
    return RawHost(
        ref=ref,
        uuid=str(record.get("uuid", "")),
        name=str(record.get("name_label", "")),
        address=str(record.get("address", "")),
        enabled=_bool(record.get("enabled", False)),
        metrics_ref=str(record.get("metrics") or NULL_REF),
        version=version_from_host_record(record),
    )


def host_metrics_from_record(ref: str, record: Mapping[str, Any]) -> RawHostMetrics:
    return RawHostMetrics(
        ref=ref,
        live=_bool(record.get("live", False)),
        memory_total=as_int(record.get("memory_total")),
        memory_free=as_int(record.get("memory_free")),
    )


def pool_from_record(ref: str, record: Mapping[str, Any]) -> RawPool:
    return RawPool(
        ref=ref,
        uuid=str(record.get("uuid", "")),
        name=str(record.get("name_label", "")),
        master_ref=str(record.get("master") or NULL_REF),
        ha=HaFacts(
            ha_enabled=_bool(record.get("ha_enabled", False)),
            ha_host_failures_to_tolerate=as_int(record.get("ha_host_failures_to_tolerate")),
            ha_plan_exists_for=as_int(record.get("ha_plan_exists_for")),
            ha_allow_overcommit=_bool(record.get("ha_allow_overcommit", False)),
            ha_overcommitted=_bool(record.get("ha_overcommitted", False)),
        ),
    )


# ------------------------------------------------------------------------------------------ mirrored facts


@dataclass(frozen=True, slots=True)
class VmFacts:
    """A VM as XAPI reports it, refs resolved to uuids: what the mirror compares and stores."""

    uuid: str
    name: str
    xapi_power_state: XapiPowerState
    resident_host_uuid: str
    ha_restart_priority: str
    order: int
    start_delay: int
    ha_always_run: bool
    memory_static_max: int


def vm_facts_from_raw(raw: RawVm, resident_host_uuid: str) -> VmFacts:
    return VmFacts(
        uuid=raw.uuid,
        name=raw.name,
        xapi_power_state=raw.power_state,
        resident_host_uuid=resident_host_uuid,
        ha_restart_priority=raw.ha_restart_priority,
        order=raw.order,
        start_delay=raw.start_delay,
        ha_always_run=raw.ha_always_run,
        memory_static_max=raw.memory_static_max,
    )


@dataclass(frozen=True, slots=True)
class HostFacts:
    uuid: str
    name: str
    address: str
    live: bool
    enabled: bool
    is_master: bool
    memory_total: int
    memory_free: int
    version: VersionFacts


@dataclass(frozen=True, slots=True)
class PoolFacts:
    uuid: str
    name: str
    master_host_uuid: str
    master_address: str
    version: VersionFacts
    ha: HaFacts


@dataclass
class PoolView:
    """The watcher's picture of one pool, by XAPI ref, including what it filters out (for valid_ref_counts)."""

    vms: dict[str, RawVm] = field(default_factory=dict)
    ignored_vms: set[str] = field(default_factory=set)
    hosts: dict[str, RawHost] = field(default_factory=dict)
    host_metrics: dict[str, RawHostMetrics] = field(default_factory=dict)
    pool: RawPool | None = None

    def ref_counts(self) -> dict[str, int]:
        return {
            "vm": len(self.vms) + len(self.ignored_vms),
            "host": len(self.hosts),
            "host_metrics": len(self.host_metrics),
            "pool": 1 if self.pool is not None else 0,
        }

    def counts_mismatch(self, valid_ref_counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Classes whose count XAPI reports differs from what the view holds: {class: (xapi, held)}."""
        held = self.ref_counts()
        return {
            cls: (count, held[cls]) for cls, count in valid_ref_counts.items() if cls in held and held[cls] != count
        }

    def host_uuid(self, ref: str) -> str:
        host = self.hosts.get(ref)
        return host.uuid if host is not None else ""

    def vm_facts(self, raw: RawVm) -> VmFacts:
        return vm_facts_from_raw(raw, "" if raw.resident_on == NULL_REF else self.host_uuid(raw.resident_on))

    def host_facts(self, raw: RawHost) -> HostFacts:
        metrics = self.host_metrics.get(raw.metrics_ref)
        return HostFacts(
            uuid=raw.uuid,
            name=raw.name,
            address=raw.address,
            live=metrics.live if metrics is not None else False,
            enabled=raw.enabled,
            is_master=self.pool is not None and self.pool.master_ref == raw.ref,
            memory_total=metrics.memory_total if metrics is not None else 0,
            memory_free=metrics.memory_free if metrics is not None else 0,
            version=raw.version,
        )

    def pool_facts(self) -> PoolFacts | None:
        if self.pool is None:
            return None
        master = self.hosts.get(self.pool.master_ref)
        return PoolFacts(
            uuid=self.pool.uuid,
            name=self.pool.name,
            master_host_uuid=master.uuid if master is not None else "",
            master_address=master.address if master is not None else "",
            version=master.version if master is not None else VersionFacts(),
            ha=self.pool.ha,
        )

    def host_addresses(self) -> list[str]:
        return sorted({host.address for host in self.hosts.values() if host.address})

    def apply(self, events: Iterable[Event]) -> ViewDelta:
        """Fold one event batch into the view; returns what the mirror must rewrite. Pool, hosts and metrics
        first, so VMs of the same batch resolve their host."""
        delta = ViewDelta()
        by_class: dict[str, list[Event]] = {}
        for event in events:
            by_class.setdefault(event.cls, []).append(event)
        for event in by_class.get("pool", ()):
            if event.operation == "del" or event.snapshot is None:
                if self.pool is not None and self.pool.ref == event.ref:
                    self.pool = None
                continue
            previous_master = self.pool.master_ref if self.pool is not None else None
            self.pool = pool_from_record(event.ref, event.snapshot)
            if self.pool.master_ref != previous_master:
                delta.host_refs.update(self.hosts)
        for event in by_class.get("host", ()):
            if event.operation == "del" or event.snapshot is None:
                gone = self.hosts.pop(event.ref, None)
                if gone is not None:
                    delta.removed_hosts[event.ref] = gone.uuid
                continue
            raw_host = host_from_record(event.ref, event.snapshot)
            if not raw_host.uuid:
                continue
            if event.ref not in self.hosts:
                # VMs listed before their host (another batch) now resolve their resident host.
                delta.vm_refs.update(ref for ref, vm in self.vms.items() if vm.resident_on == event.ref)
            self.hosts[event.ref] = raw_host
            delta.host_refs.add(event.ref)
            delta.removed_hosts.pop(event.ref, None)
        for event in by_class.get("host_metrics", ()):
            if event.operation == "del" or event.snapshot is None:
                self.host_metrics.pop(event.ref, None)
            else:
                self.host_metrics[event.ref] = host_metrics_from_record(event.ref, event.snapshot)
            delta.host_refs.update(ref for ref, host in self.hosts.items() if host.metrics_ref == event.ref)
        for event in by_class.get("vm", ()):
            if event.operation == "del" or event.snapshot is None:
                self.ignored_vms.discard(event.ref)
                gone_vm = self.vms.pop(event.ref, None)
                if gone_vm is not None:
                    delta.removed_vms[event.ref] = gone_vm.uuid
                    delta.vm_refs.discard(event.ref)
                continue
            snapshot = event.snapshot
            if not is_mirrored_vm(snapshot) or not snapshot.get("uuid"):
                # A VM turned into a template is gone as a VM.
                self.ignored_vms.add(event.ref)
                gone_vm = self.vms.pop(event.ref, None)
                if gone_vm is not None:
                    delta.removed_vms[event.ref] = gone_vm.uuid
                    delta.vm_refs.discard(event.ref)
                continue
            self.ignored_vms.discard(event.ref)
            self.vms[event.ref] = vm_from_record(event.ref, snapshot)
            delta.vm_refs.add(event.ref)
            delta.removed_vms.pop(event.ref, None)
        return delta

    def changed_vms(self, delta: ViewDelta) -> list[VmFacts]:
        return [self.vm_facts(self.vms[ref]) for ref in delta.vm_refs if ref in self.vms]

    def removed_vm_uuids(self, delta: ViewDelta) -> list[str]:
        if not delta.removed_vms:  # the usual batch: no set of every live uuid to build
            return []
        live = {vm.uuid for vm in self.vms.values()}
        return [uuid for uuid in delta.removed_vms.values() if uuid not in live]

    def changed_hosts(self, delta: ViewDelta) -> list[HostFacts]:
        return [self.host_facts(self.hosts[ref]) for ref in delta.host_refs if ref in self.hosts]

    def removed_host_uuids(self, delta: ViewDelta) -> list[str]:
        if not delta.removed_hosts:
            return []
        live = {host.uuid for host in self.hosts.values()}
        return [uuid for uuid in delta.removed_hosts.values() if uuid not in live]

    def all_vms(self) -> list[VmFacts]:
        return [self.vm_facts(raw) for raw in self.vms.values()]

    def all_hosts(self) -> list[HostFacts]:
        return [self.host_facts(raw) for raw in self.hosts.values()]

    def vm_refs_by_uuid(self, delta: ViewDelta | None = None) -> dict[str, str]:
        refs = self.vms if delta is None else {ref: self.vms[ref] for ref in delta.vm_refs if ref in self.vms}
        return {raw.uuid: ref for ref, raw in refs.items()}

    # The part of the view the mirror tables do not hold, persisted with the token so a restart can resume.
    def watch_state(self) -> dict[str, Any]:
        return {
            "ignored_vms": sorted(self.ignored_vms),
            "hosts": {ref: _raw_host_to_json(host) for ref, host in self.hosts.items()},
            "host_metrics": {
                ref: [metrics.live, metrics.memory_total, metrics.memory_free]
                for ref, metrics in self.host_metrics.items()
            },
            "pool": _raw_pool_to_json(self.pool) if self.pool is not None else None,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any], vms: Iterable[tuple[str, VmFacts]]) -> PoolView:
        """The view as persisted: `state` from `watch_state()`, VMs (ref, facts) from the mirror."""
        view = cls()
        view.ignored_vms = set(state.get("ignored_vms") or ())
        view.hosts = {ref: _raw_host_from_json(ref, item) for ref, item in (state.get("hosts") or {}).items()}
        view.host_metrics = {
            ref: RawHostMetrics(ref, bool(item[0]), int(item[1]), int(item[2]))
            for ref, item in (state.get("host_metrics") or {}).items()
        }
        pool_state = state.get("pool")
        view.pool = _raw_pool_from_json(pool_state) if pool_state else None
        host_ref_by_uuid = {host.uuid: ref for ref, host in view.hosts.items()}
        for ref, facts in vms:
            if not ref:
                continue
            view.vms[ref] = RawVm(
                ref=ref,
                uuid=facts.uuid,
                name=facts.name,
                power_state=facts.xapi_power_state,
                resident_on=host_ref_by_uuid.get(facts.resident_host_uuid, NULL_REF),
                ha_restart_priority=facts.ha_restart_priority,
                order=facts.order,
                start_delay=facts.start_delay,
                ha_always_run=facts.ha_always_run,
                memory_static_max=facts.memory_static_max,
            )
        return view


@dataclass
class ViewDelta:
    vm_refs: set[str] = field(default_factory=set)
    removed_vms: dict[str, str] = field(default_factory=dict)  # ref -> uuid
    host_refs: set[str] = field(default_factory=set)
    removed_hosts: dict[str, str] = field(default_factory=dict)


def _raw_host_to_json(host: RawHost) -> dict[str, Any]:
    version = host.version
    return {
        "uuid": host.uuid,
        "name": host.name,
        "address": host.address,
        "enabled": host.enabled,
        "metrics": host.metrics_ref,
        "version": [
            version.api_version_major,
            version.api_version_minor,
            version.product_brand,
            version.product_version,
            version.platform_version,
            version.build_number,
        ],
    }


def _raw_host_from_json(ref: str, item: Mapping[str, Any]) -> RawHost:
    major, minor, brand, product, platform, build = item["version"]
    return RawHost(
        ref=ref,
        uuid=str(item["uuid"]),
        name=str(item["name"]),
        address=str(item["address"]),
        enabled=bool(item["enabled"]),
        metrics_ref=str(item["metrics"]),
        version=VersionFacts(int(major), int(minor), str(brand), str(product), str(platform), str(build)),
    )


def _raw_pool_to_json(pool: RawPool) -> dict[str, Any]:
    ha = pool.ha
    return {
        "ref": pool.ref,
        "uuid": pool.uuid,
        "name": pool.name,
        "master": pool.master_ref,
        "ha": [
            ha.ha_enabled,
            ha.ha_host_failures_to_tolerate,
            ha.ha_plan_exists_for,
            ha.ha_allow_overcommit,
            ha.ha_overcommitted,
        ],
    }


def _raw_pool_from_json(item: Mapping[str, Any]) -> RawPool:
    enabled, tolerate, plan, overcommit, overcommitted = item["ha"]
    return RawPool(
        ref=str(item["ref"]),
        uuid=str(item["uuid"]),
        name=str(item["name"]),
        master_ref=str(item["master"]),
        ha=HaFacts(bool(enabled), int(tolerate), int(plan), bool(overcommit), bool(overcommitted)),
    )


# ------------------------------------------------------------------------------------------------- mirror


@dataclass(frozen=True, slots=True)
class MirrorVm:
    """A VM row of the mirror: XAPI's facts plus CloudStack's power-state bookkeeping."""

    cluster_id: str
    pool_uuid: str
    facts: VmFacts
    power_state: PowerState
    power_state_update_time: dt.datetime | None
    power_state_update_count: int
    removed: bool
    revision: int = 0
    update_time: dt.datetime | None = None

    @property
    def uuid(self) -> str:
        return self.facts.uuid

    def report(self) -> PowerReport | None:
        if self.power_state_update_time is None:
            return None
        return PowerReport(self.power_state, self.power_state_update_time, self.power_state_update_count)

    def stamped(self, revision: int, update_time: dt.datetime) -> MirrorVm:
        """This row as written at `revision` (dataclasses.replace costs several times more, per VM)."""
        return MirrorVm(
            self.cluster_id,
            self.pool_uuid,
            self.facts,
            self.power_state,
            self.power_state_update_time,
            self.power_state_update_count,
            self.removed,
            revision,
            update_time,
        )

    def same_content(self, other: MirrorVm) -> bool:
        """Equal in everything the change log tracks (revision and update time excluded). Field by field, no
        copies: this runs for every VM of every batch. Keep in step with the fields above."""
        return (
            self.facts == other.facts
            and self.power_state == other.power_state
            and self.power_state_update_time == other.power_state_update_time
            and self.power_state_update_count == other.power_state_update_count
            and self.removed == other.removed
            and self.cluster_id == other.cluster_id
            and self.pool_uuid == other.pool_uuid
        )


@dataclass(frozen=True, slots=True)
class MirrorHost:
    cluster_id: str
    pool_uuid: str
    facts: HostFacts
    removed: bool
    revision: int = 0
    update_time: dt.datetime | None = None

    @property
    def uuid(self) -> str:
        return self.facts.uuid

    def same_content(self, other: MirrorHost) -> bool:
        return (
            self.facts == other.facts
            and self.removed == other.removed
            and self.cluster_id == other.cluster_id
            and self.pool_uuid == other.pool_uuid
        )


def observe_vm(
    previous: MirrorVm | None,
    facts: VmFacts,
    *,
    cluster_id: str,
    pool_uuid: str,
    now: dt.datetime,
    full_report: bool,
) -> MirrorVm:
    """The mirror row after XAPI reported `facts` for a VM (`full_report`: it came from a full list)."""
    state = cloudstack_power_state(facts.xapi_power_state)
    revived = previous is not None and previous.removed
    report = next_power_report(
        None if previous is None or revived else previous.report(), state, now, repeated_report=full_report
    )
    return MirrorVm(
        cluster_id=cluster_id,
        pool_uuid=pool_uuid,
        facts=facts,
        power_state=report.state,
        power_state_update_time=report.update_time,
        power_state_update_count=report.update_count,
        removed=False,
        revision=previous.revision if previous is not None else 0,
        update_time=previous.update_time if previous is not None else None,
    )


def vm_gone(previous: MirrorVm, now: dt.datetime) -> MirrorVm:
    """The mirror row of a VM XAPI no longer has: kept, marked removed, PowerReportMissing."""
    report = next_power_report(previous.report(), PowerState.POWER_REPORT_MISSING, now, repeated_report=False)
    return replace(
        previous,
        removed=True,
        power_state=report.state,
        power_state_update_time=report.update_time,
        power_state_update_count=report.update_count,
    )


@dataclass(frozen=True, slots=True)
class SyncStatusInfo:
    state: str = "IDLE"
    connected: bool = False
    wire_format: str = ""
    connected_url: str = ""
    last_event_time: dt.datetime | None = None
    lag_ms: int = 0
    last_full_sync_time: dt.datetime | None = None
    events_applied: int = 0
    reconnects: int = 0
    last_error: str = ""
    last_error_time: dt.datetime | None = None
    owner: str = ""


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A registered pool as the RPCs show it: registration (without credentials), XAPI facts, sync status."""

    cluster_id: str
    master_url: str
    tls_ca_bundle_pem: str
    tls_fingerprint: str
    tls_insecure: bool
    has_credentials: bool
    pool_uuid: str
    name: str
    version: VersionFacts
    ha: HaFacts
    master_host_uuid: str
    status: SyncStatusInfo
    revision: int
    create_time: dt.datetime | None
    update_time: dt.datetime | None


def utcnow() -> dt.datetime:
    """Naive UTC, as stored in the database."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
