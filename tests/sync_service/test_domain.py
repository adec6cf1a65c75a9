"""Pure domain logic: record mapping, CloudStack power-state rules, the watcher's view, backoff, addresses."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from sync_service.domain import (
    MAX_SAME_STATE_REPORTS,
    NULL_REF,
    PoolView,
    PowerReport,
    PowerState,
    XapiPowerState,
    cloudstack_power_state,
    is_mirrored_vm,
    next_power_report,
    observe_vm,
    vm_from_record,
    vm_gone,
)
from sync_service.watcher import backoff_delay, url_for_address
from sync_service.xapi.client import Event, as_int, parse_event_batch

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def _vm(uuid: str = "u1", **fields: Any) -> dict[str, Any]:
    record = {
        "uuid": uuid,
        "name_label": "i-2-10-VM",
        "power_state": "Running",
        "resident_on": "OpaqueRef:h1",
        "ha_restart_priority": "restart",
        "order": "2",  # XML-RPC: ints arrive as strings
        "start_delay": "5",
        "ha_always_run": True,
        "memory_static_max": "1073741824",
        "is_a_template": False,
        "is_a_snapshot": False,
        "is_control_domain": False,
    }
    record.update(fields)
    return record


@pytest.mark.parametrize(
    ("xapi", "removed", "expected"),
    [
        (XapiPowerState.RUNNING, False, PowerState.POWER_ON),
        (XapiPowerState.HALTED, False, PowerState.POWER_OFF),
        (XapiPowerState.PAUSED, False, PowerState.POWER_OFF),
        (XapiPowerState.SUSPENDED, False, PowerState.POWER_OFF),
        (XapiPowerState.UNKNOWN, False, PowerState.POWER_UNKNOWN),
        (XapiPowerState.RUNNING, True, PowerState.POWER_REPORT_MISSING),
    ],
)
def test_cloudstack_power_state(xapi: XapiPowerState, removed: bool, expected: PowerState) -> None:
    assert cloudstack_power_state(xapi, removed=removed) is expected


def test_power_state_update_count_follows_cloudstack() -> None:
    first = next_power_report(None, PowerState.POWER_ON, T0, repeated_report=False)
    assert first == PowerReport(PowerState.POWER_ON, T0, 1)
    # An event that leaves the power state alone is not a report of it.
    assert next_power_report(first, PowerState.POWER_ON, T0 + dt.timedelta(1), repeated_report=False) == first
    report = first
    for count in range(2, MAX_SAME_STATE_REPORTS + 1):
        later = T0 + dt.timedelta(seconds=count)
        report = next_power_report(report, PowerState.POWER_ON, later, repeated_report=True)
        assert (report.update_count, report.update_time) == (count, later)
    # After 3 identical reports, nothing is written any more.
    assert next_power_report(report, PowerState.POWER_ON, T0 + dt.timedelta(hours=1), repeated_report=True) == report
    changed = next_power_report(report, PowerState.POWER_OFF, T0 + dt.timedelta(hours=2), repeated_report=True)
    assert changed == PowerReport(PowerState.POWER_OFF, T0 + dt.timedelta(hours=2), 1)


def test_records_from_both_wires_map_to_the_same_facts() -> None:
    xml = vm_from_record("OpaqueRef:v", _vm())
    json_ = vm_from_record("OpaqueRef:v", _vm(order=2, start_delay=5, memory_static_max=1073741824))
    assert xml == json_
    assert (xml.order, xml.start_delay, xml.memory_static_max) == (2, 5, 1073741824)
    assert as_int("oops", 7) == 7 and as_int(None) == 0 and as_int(True) == 1 and as_int("3.0") == 3


def test_templates_snapshots_and_control_domains_are_not_vms() -> None:
    assert is_mirrored_vm(_vm())
    for flag in ("is_a_template", "is_a_snapshot", "is_control_domain"):
        assert not is_mirrored_vm({**_vm(), flag: True})


def _host(uuid: str, metrics: str, **fields: Any) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "name_label": uuid,
        "address": "10.0.0.1",
        "enabled": True,
        "metrics": metrics,
        "API_version_major": "2",
        "API_version_minor": "15",
        "software_version": {"product_brand": "XenServer", "product_version": "8.2.0"},
        **fields,
    }


def _full_view() -> PoolView:
    view = PoolView()
    view.apply(
        [
            Event("vm", "add", "OpaqueRef:v1", _vm("vm-1")),
            Event("vm", "add", "OpaqueRef:t1", _vm("tpl-1", is_a_template=True)),
            Event("host", "add", "OpaqueRef:h1", _host("host-1", "OpaqueRef:m1")),
            Event("host_metrics", "add", "OpaqueRef:m1", {"live": True, "memory_total": "100", "memory_free": "40"}),
            Event("pool", "add", "OpaqueRef:p", {"uuid": "pool-1", "name_label": "p", "master": "OpaqueRef:h1"}),
        ]
    )
    return view


def test_view_resolves_refs_and_liveness_within_one_batch() -> None:
    view = _full_view()
    [vm] = view.all_vms()
    assert vm.resident_host_uuid == "host-1"  # resolved although the host came later in the batch
    [host] = view.all_hosts()
    assert host.live and host.is_master and host.memory_free == 40 and host.version.api_version_minor == 15
    facts = view.pool_facts()
    assert facts is not None and facts.master_host_uuid == "host-1" and facts.version.product_version == "8.2.0"
    assert view.ref_counts() == {"vm": 2, "host": 1, "host_metrics": 1, "pool": 1}  # the template counts too
    assert view.counts_mismatch({"vm": 2, "host": 1}) == {}
    assert view.counts_mismatch({"vm": 3}) == {"vm": (3, 2)}


def test_view_deltas_for_mod_del_and_liveness() -> None:
    view = _full_view()
    delta = view.apply([Event("host_metrics", "mod", "OpaqueRef:m1", {"live": False})])
    assert [host.live for host in view.changed_hosts(delta)] == [False]
    assert view.changed_vms(delta) == []
    delta = view.apply([Event("vm", "mod", "OpaqueRef:v1", _vm("vm-1", power_state="Halted", resident_on=NULL_REF))])
    [vm] = view.changed_vms(delta)
    assert vm.xapi_power_state is XapiPowerState.HALTED and vm.resident_host_uuid == ""
    # A VM turned into a template is gone as a VM.
    delta = view.apply([Event("vm", "mod", "OpaqueRef:v1", _vm("vm-1", is_a_template=True))])
    assert view.removed_vm_uuids(delta) == ["vm-1"] and view.ref_counts()["vm"] == 2
    delta = view.apply([Event("vm", "del", "OpaqueRef:v1", None), Event("vm", "del", "OpaqueRef:t1", None)])
    assert view.ref_counts()["vm"] == 0
    delta = view.apply([Event("host", "del", "OpaqueRef:h1", None)])
    assert view.removed_host_uuids(delta) == ["host-1"]


def test_view_survives_a_restart_through_its_persisted_state() -> None:
    view = _full_view()
    restored = PoolView.restore(view.watch_state(), [(ref, view.vm_facts(raw)) for ref, raw in view.vms.items()])
    assert restored.all_vms() == view.all_vms()
    assert restored.all_hosts() == view.all_hosts()
    assert restored.pool_facts() == view.pool_facts()
    assert restored.ref_counts() == view.ref_counts()


def test_observe_and_remove_vm() -> None:
    view = _full_view()
    [facts] = view.all_vms()
    added = observe_vm(None, facts, cluster_id="c", pool_uuid="p", now=T0, full_report=True)
    assert (added.power_state, added.power_state_update_count, added.removed) == (PowerState.POWER_ON, 1, False)
    gone = vm_gone(added, T0 + dt.timedelta(seconds=1))
    assert gone.removed and gone.power_state is PowerState.POWER_REPORT_MISSING and gone.power_state_update_count == 1
    back = observe_vm(gone, facts, cluster_id="c", pool_uuid="p", now=T0 + dt.timedelta(seconds=2), full_report=True)
    assert not back.removed and back.power_state_update_count == 1
    assert added.same_content(observe_vm(added, facts, cluster_id="c", pool_uuid="p", now=T0, full_report=False))


def test_same_content_compares_every_field_but_revision_and_update_time() -> None:
    view = _full_view()
    [facts] = view.all_vms()
    vm = observe_vm(None, facts, cluster_id="c", pool_uuid="p", now=T0, full_report=True)
    assert vm.same_content(dataclasses.replace(vm, revision=7, update_time=T0 + dt.timedelta(seconds=1)))
    changed: dict[str, Any] = {
        "cluster_id": "other",
        "pool_uuid": "other",
        "facts": dataclasses.replace(facts, name="renamed"),
        "power_state": PowerState.POWER_OFF,
        "power_state_update_time": T0 + dt.timedelta(seconds=5),
        "power_state_update_count": 9,
        "removed": True,
    }
    # A new field must be added here and to same_content.
    assert set(changed) | {"revision", "update_time"} == {f.name for f in dataclasses.fields(vm)}
    for name, value in changed.items():
        assert not vm.same_content(dataclasses.replace(vm, **{name: value})), name


def test_event_batches_normalise_both_wires() -> None:
    batch = parse_event_batch(
        {
            "events": [{"id": "1", "class": "VM", "operation": "mod", "ref": "OpaqueRef:x", "snapshot": {"uuid": "u"}}],
            "valid_ref_counts": {"VM": "12", "host": 3},
            "token": "00000000000000000001,00000000000000000002",
        }
    )
    assert batch.events[0].cls == "vm" and batch.valid_ref_counts == {"vm": 12, "host": 3}


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    assert backoff_delay(0, 0.5, 30, rng=lambda low, high: high) == 0.5
    assert backoff_delay(3, 0.5, 30, rng=lambda low, high: high) == 4.0
    assert backoff_delay(50, 0.5, 30, rng=lambda low, high: high) == 30
    assert backoff_delay(5, 0.5, 30, rng=lambda low, high: low) == 0.0
    assert all(0 <= backoff_delay(4, 0.5, 30) <= 8 for _ in range(100))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.2", "https://10.0.0.2:8443"),
        ("127.0.0.1:4567", "https://127.0.0.1:4567"),
        ("http://h:1", "http://h:1"),
        ("fe80::1", "https://[fe80::1]:8443"),
    ],
)
def test_host_addresses_become_urls_like_the_master_url(address: str, expected: str) -> None:
    assert url_for_address(address, "https://master:8443") == expected
