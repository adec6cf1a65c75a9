"""VM power operations, HA setters with their validation, pool HA configuration, create/clone/destroy."""

from __future__ import annotations

from typing import Any

import pytest

from xapi_sim.testing import XAPI_FAILURES

GIB = 1024**3


def n(clients: Any, value: int) -> Any:
    """An XAPI int parameter as the wire carries it."""
    return str(value) if clients.wire == "xmlrpc" else value


def vm(session: Any, name: str) -> str:
    return str(session.xenapi.VM.get_by_name_label(name)[0])


def test_set_ha_restart_priority_validates_and_sets_ha_always_run(sim, clients):
    session = clients.session(sim.master_url())
    running, halted = vm(session, "bulk-0"), vm(session, "halted-1")
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.set_ha_restart_priority(running, "always")
    assert exc.value.details == ["INVALID_VALUE", "ha_restart_priority", "always"]
    session.xenapi.VM.set_ha_restart_priority(running, "restart")
    assert session.xenapi.VM.get_ha_always_run(running) is True
    session.xenapi.VM.set_ha_restart_priority(running, "best-effort")
    assert session.xenapi.VM.get_ha_restart_priority(running) == "best-effort"
    assert session.xenapi.VM.get_ha_always_run(running) is False
    session.xenapi.VM.set_ha_restart_priority(halted, "restart")  # a halted VM keeps ha_always_run
    assert session.xenapi.VM.get_ha_always_run(halted) is False
    session.xenapi.VM.set_ha_restart_priority(halted, "")
    assert session.xenapi.VM.get_ha_restart_priority(halted) == ""


def test_order_and_start_delay_reject_negatives(sim, clients):
    session = clients.session(sim.master_url())
    ref = vm(session, "halted-1")
    session.xenapi.VM.set_order(ref, n(clients, 3))
    session.xenapi.VM.set_start_delay(ref, n(clients, 20))
    assert clients.int_(session.xenapi.VM.get_order(ref)) == 3
    assert clients.int_(session.xenapi.VM.get_start_delay(ref)) == 20
    for setter, field in ((session.xenapi.VM.set_order, "order"), (session.xenapi.VM.set_start_delay, "start_delay")):
        with pytest.raises(XAPI_FAILURES) as exc:
            setter(ref, n(clients, -1))
        assert exc.value.details == ["INVALID_VALUE", field, "-1"]


def test_restart_priority_that_would_break_the_failover_plan(make_sim, clients):
    sim = make_sim(
        {
            "pools": [
                {
                    "name": "tight",
                    "ha_enabled": True,
                    "ha_host_failures_to_tolerate": 1,
                    "hosts": {"count": 2, "memory_gib": 16},  # 11.75 GiB usable each
                    "vms": [
                        {"name": "big-1", "memory_gib": 8, "ha_restart_priority": "restart", "host": 0},
                        {"name": "big-2", "memory_gib": 8, "host": 1},
                        {"name": "off", "memory_gib": 8, "power_state": "Halted"},
                    ],
                }
            ]
        }
    )
    session = clients.session(sim.master_url())
    pool = session.xenapi.pool.get_all()[0]
    assert clients.int_(session.xenapi.pool.ha_compute_max_host_failures_to_tolerate()) == 1
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.set_ha_restart_priority(vm(session, "big-2"), "restart")
    assert exc.value.details == ["HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"]
    assert session.xenapi.VM.get_ha_restart_priority(vm(session, "big-2")) == ""
    session.xenapi.VM.set_ha_restart_priority(vm(session, "off"), "restart")  # halted: no plan check
    session.xenapi.pool.set_ha_allow_overcommit(pool, True)
    session.xenapi.VM.set_ha_restart_priority(vm(session, "big-2"), "restart")  # overcommit allowed
    assert session.xenapi.pool.get_ha_overcommitted(pool) is True
    assert clients.int_(session.xenapi.pool.ha_compute_max_host_failures_to_tolerate()) == 0
    session.xenapi.pool.disable_ha()
    session.xenapi.pool.set_ha_allow_overcommit(pool, False)
    session.xenapi.VM.set_ha_restart_priority(vm(session, "big-2"), "restart")  # HA off: no plan check


def test_enable_disable_ha_and_failures_to_tolerate(sim, clients):
    session = clients.session(sim.master_url())
    pool = session.xenapi.pool.get_all()[0]
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.pool.enable_ha([], {})
    assert exc.value.details == ["HA_IS_ENABLED"]
    session.xenapi.pool.disable_ha()
    assert session.xenapi.pool.get_ha_enabled(pool) is False
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.pool.disable_ha()
    assert exc.value.details == ["HA_NOT_ENABLED"]
    session.xenapi.pool.enable_ha([], {"timeout": "60"})
    record = session.xenapi.pool.get_record(pool)
    assert record["ha_enabled"] is True and record["ha_statefiles"] and record["ha_configuration"] == {"timeout": "60"}
    session.xenapi.pool.set_ha_host_failures_to_tolerate(pool, n(clients, 2))
    assert clients.int_(session.xenapi.pool.get_ha_host_failures_to_tolerate(pool)) == 2
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.pool.set_ha_host_failures_to_tolerate(pool, n(clients, -1))
    assert exc.value.details[0] == "INVALID_VALUE"
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.pool.set_ha_host_failures_to_tolerate(pool, n(clients, 3))  # only 3 hosts
    assert exc.value.details == ["HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"]


def test_power_operations_and_bad_power_state(sim, clients):
    session = clients.session(sim.master_url())
    api = session.xenapi.VM
    ref = vm(session, "halted-1")
    with pytest.raises(XAPI_FAILURES) as exc:
        api.clean_shutdown(ref)
    assert exc.value.details == ["VM_BAD_POWER_STATE", ref, "running", "halted"]
    api.set_ha_restart_priority(ref, "restart")
    api.start(ref, False, False)
    record = api.get_record(ref)
    assert record["power_state"] == "Running" and record["ha_always_run"] is True
    assert record["resident_on"] in session.xenapi.host.get_all()
    assert ref in session.xenapi.host.get_resident_VMs(record["resident_on"])
    with pytest.raises(XAPI_FAILURES) as exc:
        api.start(ref, False, False)
    assert exc.value.details == ["VM_BAD_POWER_STATE", ref, "halted", "running"]
    domid = clients.int_(api.get_domid(ref))
    api.hard_reboot(ref)
    assert clients.int_(api.get_domid(ref)) != domid and api.get_power_state(ref) == "Running"
    hosts = session.xenapi.host.get_all()
    target = next(h for h in hosts if h != record["resident_on"])
    api.pool_migrate(ref, target, {})
    assert api.get_resident_on(ref) == target
    api.suspend(ref)
    assert api.get_power_state(ref) == "Suspended" and api.get_ha_always_run(ref) is False
    api.resume(ref, False, False)
    assert api.get_power_state(ref) == "Running" and api.get_ha_always_run(ref) is True
    api.clean_shutdown(ref)
    record = api.get_record(ref)
    assert record["power_state"] == "Halted" and record["resident_on"] == "OpaqueRef:NULL"
    assert record["ha_always_run"] is False
    api.start_on(ref, target, False, False)
    assert api.get_resident_on(ref) == target
    api.hard_shutdown(ref)
    assert api.get_power_state(ref) == "Halted"


def test_start_needs_host_memory(make_sim, clients):
    sim = make_sim(
        {
            "pools": [
                {
                    "name": "m",
                    "hosts": {"count": 1, "memory_gib": 8},
                    "vms": [{"name": "huge", "memory_gib": 6, "power_state": "Halted"}],
                }
            ]
        }
    )
    session = clients.session(sim.master_url())
    host = session.xenapi.host.get_all()[0]
    free = clients.int_(session.xenapi.host.compute_free_memory(host))
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.start(vm(session, "huge"), False, False)
    assert exc.value.details == ["HOST_NOT_ENOUGH_FREE_MEMORY", str(6 * GIB), str(free)]


def test_memory_free_follows_vm_starts(sim, clients):
    session = clients.session(sim.master_url())
    ref = vm(session, "halted-1")
    host = session.xenapi.host.get_all()[1]
    metrics = session.xenapi.host.get_metrics(host)
    before = clients.int_(session.xenapi.host_metrics.get_memory_free(metrics))
    session.xenapi.VM.start_on(ref, host, False, False)
    after = clients.int_(session.xenapi.host_metrics.get_memory_free(metrics))
    assert before - after == clients.int_(session.xenapi.VM.get_memory_static_max(ref))


def test_templates_and_control_domains_cannot_start(sim, clients):
    session = clients.session(sim.master_url())
    records = session.xenapi.VM.get_all_records()
    template = next(r for r, v in records.items() if v["is_a_template"])
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.start(template, False, False)
    assert exc.value.details[0] == "VM_IS_TEMPLATE"
    dom0 = next(r for r, v in records.items() if v["is_control_domain"])
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.hard_shutdown(dom0)
    assert exc.value.details[0] == "OPERATION_NOT_ALLOWED"


def test_clone_create_and_destroy(sim, clients):
    session = clients.session(sim.master_url())
    api = session.xenapi.VM
    template = next(r for r, v in api.get_all_records().items() if v["is_a_template"])
    clone = api.clone(template, "from-template")
    record = api.get_record(clone)
    assert record["is_a_template"] is False and record["power_state"] == "Halted"
    created = api.create({"name_label": "created", "memory_static_max": n(clients, GIB), "order": n(clients, 2)})
    assert api.get_name_label(created) == "created" and clients.int_(api.get_order(created)) == 2
    api.start(created, False, False)
    with pytest.raises(XAPI_FAILURES) as exc:
        api.destroy(created)
    assert exc.value.details == ["VM_BAD_POWER_STATE", created, "halted", "running"]
    api.hard_shutdown(created)
    api.destroy(created)
    api.destroy(clone)
    with pytest.raises(XAPI_FAILURES) as exc:
        api.get_record(clone)
    assert exc.value.details == ["HANDLE_INVALID", "VM", clone]


def test_map_setters(sim, clients):
    session = clients.session(sim.master_url())
    ref = vm(session, "halted-1")
    session.xenapi.VM.add_to_other_config(ref, "k", "v")
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.add_to_other_config(ref, "k", "w")
    assert exc.value.details[0] == "MAP_DUPLICATE_KEY"
    assert session.xenapi.VM.get_other_config(ref)["k"] == "v"
    session.xenapi.VM.remove_from_other_config(ref, "k")
    assert "k" not in session.xenapi.VM.get_other_config(ref)
