"""Native HA failover when a host dies, and the fault-injection control interface."""

from __future__ import annotations

import http.client
import threading
import time
import xml.parsers.expat
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import XenAPI

from xapi_sim.testing import (
    XAPI_FAILURES,
    JsonRpcClient,
    SimControl,
    event_from,
    user_vms,
    wait_until,
    xmlrpc_proxy,
)

NULL = "OpaqueRef:NULL"

HA_POOL = {
    "pools": [
        {
            "name": "ha",
            "ha_enabled": True,
            "ha_host_failures_to_tolerate": 1,
            "time_scale": 0.01,
            "vm_boot_seconds": 30,  # 0.3 s: ample time for a watcher to see Halted before Running
            "ha_retry_seconds": 5,
            "hosts": {"count": 3, "memory_gib": 32},
            "vms": [
                {"name": "db-1", "ha_restart_priority": "restart", "order": 1, "start_delay": 30, "host": 2},
                {"name": "db-2", "ha_restart_priority": "restart", "order": 1, "start_delay": 10, "host": 2},
                {"name": "app-1", "ha_restart_priority": "restart", "order": 2, "host": 2},
                {"name": "cache-1", "ha_restart_priority": "best-effort", "host": 2},
                {"name": "batch-1", "ha_restart_priority": "", "host": 2},
                {"name": "elsewhere", "ha_restart_priority": "restart", "host": 1},
            ],
        }
    ]
}


class Watcher:
    """An event.from loop in a thread, recording every vm / message event it receives."""

    def __init__(self, session: Any, classes: tuple[str, ...] = ("vm", "message")) -> None:
        self.session = session
        self.classes = list(classes)
        self.events: list[dict[str, Any]] = []
        self.token = event_from(session, self.classes, "", 5.0)["token"]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            result = event_from(self.session, self.classes, self.token, 0.5)
            self.token = result["token"]
            self.events.extend(result["events"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def states(self, ref: str) -> list[tuple[int, str, str]]:
        return [
            (int(e["id"]), e["snapshot"]["power_state"], e["snapshot"]["resident_on"])
            for e in self.events
            if e["ref"] == ref and e["class"] == "vm" and e["operation"] == "mod"
        ]

    def running_since(self, ref: str) -> int:
        """Event id at which the VM came back Running after being Halted (0: not yet)."""
        seen_halted = False
        for event_id, state, _ in self.states(ref):
            seen_halted = seen_halted or state == "Halted"
            if seen_halted and state == "Running":
                return event_id
        return 0


def test_host_crash_with_pool_ha_restarts_vms_by_order_then_best_effort(make_sim, clients):
    sim = make_sim(HA_POOL)
    pool = sim.pool()
    session = clients.session(sim.master_url())
    refs = {r["name_label"]: ref for ref, r in user_vms(session.xenapi.VM.get_all_records()).items()}
    dead = pool.hosts[2]
    watcher = Watcher(clients.session(sim.master_url()))
    try:
        SimControl(sim.master_url()).crash_host(dead.rec["uuid"])
        protected = ("db-1", "db-2", "app-1", "cache-1")
        wait_until(lambda: all(watcher.running_since(refs[n]) for n in protected), 20, what="restarts")
    finally:
        watcher.close()
    for name in protected:
        states = watcher.states(refs[name])
        halted = [s for s in states if s[1] == "Halted"]
        assert halted and halted[0][2] == NULL, (name, states)  # Running -> Halted/NULL -> Running elsewhere
        final = session.xenapi.VM.get_record(refs[name])
        assert final["power_state"] == "Running" and final["resident_on"] not in (dead.ref, NULL)
    order1 = max(watcher.running_since(refs[n]) for n in ("db-1", "db-2"))
    assert watcher.running_since(refs["app-1"]) > order1  # the next order group waited for the first
    assert watcher.running_since(refs["cache-1"]) > watcher.running_since(refs["app-1"])  # best-effort last
    batch = session.xenapi.VM.get_record(refs["batch-1"])
    assert batch["power_state"] == "Halted" and batch["resident_on"] == NULL  # unprotected: reset, not restarted
    assert session.xenapi.VM.get_resident_on(refs["elsewhere"]) == pool.hosts[1].ref  # untouched
    assert session.xenapi.host_metrics.get_live(dead.rec["metrics"]) is False
    failed = [m for m in session.xenapi.message.get_all_records().values() if m["name"] == "HA_HOST_FAILED"]
    assert len(failed) == 1 and failed[0]["obj_uuid"] == dead.rec["uuid"]
    assert any(e["class"] == "message" and e["snapshot"]["name"] == "HA_HOST_FAILED" for e in watcher.events)
    with pytest.raises(OSError):
        XenAPI.Session(sim.host_urls()[2]).xenapi.login_with_password("root", "password")  # the host is gone


def test_too_little_capacity_raises_the_restart_failed_alert(make_sim, clients):
    sim = make_sim(
        {
            "pools": [
                {
                    "name": "small",
                    "ha_enabled": True,
                    "ha_allow_overcommit": True,
                    "time_scale": 0.01,
                    "vm_boot_seconds": 1,
                    "ha_retry_seconds": 1,
                    "hosts": {"count": 2, "memory_gib": 8},  # 3.75 GiB usable each
                    "vms": [
                        {
                            "count": 3,
                            "name_pattern": "p-{i}",
                            "memory_mib": 1536,
                            "ha_restart_priority": "restart",
                            "host": 1,
                        }
                    ],
                }
            ]
        }
    )
    session = clients.session(sim.master_url())
    sim.pool().crash_host(sim.pool().hosts[1])

    def alerts() -> list[Any]:
        records = session.xenapi.message.get_all_records().values()
        return [m for m in records if m["name"] == "HA_PROTECTED_VM_RESTART_FAILED"]

    found = wait_until(alerts, 20, what="HA_PROTECTED_VM_RESTART_FAILED")
    vms = user_vms(session.xenapi.VM.get_all_records())
    halted = [r for r in vms.values() if r["power_state"] == "Halted"]
    running = [r for r in vms.values() if r["power_state"] == "Running"]
    assert len(running) == 2 and len(halted) == 1  # two fit on the survivor, the third cannot
    assert len(found) == 1 and found[0]["obj_uuid"] == halted[0]["uuid"] and found[0]["cls"] == "VM"
    assert halted[0]["uuid"] in found[0]["body"]


def test_host_crash_without_pool_ha_leaves_vms_running_on_the_dead_host(make_sim, clients):
    scenario = {"pools": [{**HA_POOL["pools"][0], "ha_enabled": False}]}
    sim = make_sim(scenario)
    session = clients.session(sim.master_url())
    dead = sim.pool().hosts[2]
    sim.pool().crash_host(dead)
    wait_until(lambda: session.xenapi.host_metrics.get_live(dead.rec["metrics"]) is False, 5)
    db = session.xenapi.VM.get_record(session.xenapi.VM.get_by_name_label("db-1")[0])
    assert db["power_state"] == "Running" and db["resident_on"] == dead.ref
    assert session.xenapi.message.get_all() == []


def test_master_crash_with_ha_elects_a_new_master(make_sim):
    sim = make_sim(HA_POOL)
    old = sim.master_url()
    sim.pool().crash_host(sim.pool().hosts[0])
    new = wait_until(lambda: sim.master_url() != old and sim.master_url(), 5)
    session = XenAPI.Session(new)
    session.xenapi.login_with_password("root", "password")
    with pytest.raises(XAPI_FAILURES) as exc:
        XenAPI.Session(sim.host_urls()[2]).xenapi.login_with_password("root", "password")
    assert exc.value.details == ["HOST_IS_SLAVE", urlsplit(new).netloc]


def test_failover_master_invalidates_sessions_and_old_master_is_slave(sim):
    old_url = sim.master_url()
    proxy = xmlrpc_proxy(old_url)
    session = proxy.session.login_with_password("root", "password")["Value"]
    new_host = sim.pool().hosts[1]
    SimControl(old_url).failover_master(new_host.rec["uuid"])
    assert sim.master_url() == sim.host_urls()[1]
    assert proxy.VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]
    reply = proxy.session.login_with_password("root", "password")
    assert reply["ErrorDescription"] == ["HOST_IS_SLAVE", urlsplit(sim.host_urls()[1]).netloc]
    assert xmlrpc_proxy(sim.master_url()).session.login_with_password("root", "password")["Status"] == "Success"


def test_restore_host_brings_the_endpoint_back(sim):
    control = SimControl(sim.master_url())
    host = sim.pool().hosts[1]
    url = sim.host_urls()[1]
    control.crash_host(host.ref)
    with pytest.raises(OSError):
        xmlrpc_proxy(url).session.login_with_password("root", "password")
    control.restore_host(host.ref)
    assert sim.host_urls()[1] == url
    reply = xmlrpc_proxy(url).session.login_with_password("root", "password")
    assert reply["ErrorDescription"][0] == "HOST_IS_SLAVE"
    assert sim.pool().is_host_live(host)


def test_drop_connections_closes_open_sockets(sim):
    parts = urlsplit(sim.master_url())
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    conn.request("POST", "/", xmlrpc.client.dumps(("root", "password"), "session.login_with_password").encode())
    conn.getresponse().read()
    assert int(SimControl(sim.host_urls()[1]).drop_connections()) >= 1
    assert conn.sock.recv(1) == b""  # the server closed our keep-alive connection
    session = XenAPI.Session(sim.master_url())  # and new connections work
    session.xenapi.login_with_password("root", "password")


def test_stall_holds_calls_until_cleared_and_latency_applies(sim):
    control = SimControl(sim.master_url())
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password")
    control.stall(0)
    result = []
    caller = threading.Thread(target=lambda: result.append(session.xenapi.pool.get_all()))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and not result  # held
    control.unstall()
    caller.join(5)
    assert len(result) == 1
    control.set_latency(0.01)
    assert session.xenapi.pool.get_all() == result[0]
    control.set_latency(0)


def test_serve_malformed_records(sim):
    control = SimControl(sim.master_url())
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password")
    ref = session.xenapi.VM.get_by_name_label("web-1")[0]
    control.serve_malformed("web-1", "missing_fields")
    assert "power_state" not in session.xenapi.VM.get_record(ref)
    control.serve_malformed(ref, "unknown_power_state")
    assert session.xenapi.VM.get_record(ref)["power_state"] == "Exploded"
    control.serve_malformed(ref, "wrong_types")
    record = session.xenapi.VM.get_record(ref)
    assert record["memory_static_max"] == "lots" and record["other_config"] == ["not", "a", "map"]
    control.serve_malformed(ref, "garbage")
    with pytest.raises(xml.parsers.expat.ExpatError):
        session.xenapi.VM.get_all_records()
    client = JsonRpcClient(sim.master_url())
    json_session = client.call("session.login_with_password", "root", "password")
    with pytest.raises(orjson.JSONDecodeError):
        client.call("VM.get_record", json_session, ref)
    control.serve_malformed(ref, "none")
    assert session.xenapi.VM.get_record(ref)["power_state"] == "Running"


def test_change_vm_add_vms_mutate_and_stats(sim):
    control = SimControl(sim.master_url())
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password")
    token = event_from(session, ["vm"], "", 5.0)["token"]
    control.change_vm("web-1", "ha_restart_priority", "best-effort")  # a change made behind the client's back
    events = event_from(session, ["vm"], token, 5.0)
    assert [e["snapshot"]["ha_restart_priority"] for e in events["events"]] == ["best-effort"]
    refs = control.add_vms(50, {"name_pattern": "extra-{i}", "power_state": "Halted", "memory_mib": 256})
    assert len(refs) == 50 and session.xenapi.VM.get_name_label(refs[49]) == "extra-49"
    token = event_from(session, ["vm"], events["token"], 5.0)["token"]
    before = int(control.stats()["changes_made"])
    assert int(control.mutate_vms(30)) == 30
    assert len(event_from(session, ["vm"], token, 5.0)["events"]) == 30
    stats = control.stats()
    assert int(stats["changes_made"]) >= before + 30 and int(stats["mutations"]) == 30
    control.set_time_scale(0.5)
    assert sim.pool().time_scale == 0.5


class _RecordingEvent(threading.Event):
    """A stop event that records the timeout of every wait, to count how often a background thread wakes."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_mutate_vms_at_rate_paces_changes_and_sleeps_until_each_is_due(sim):
    pool = sim.pool()
    stopping = _RecordingEvent()
    pool.stopping = stopping
    count, rate = 4, 20.0
    started = time.monotonic()
    pool.mutate_vms_at_rate(count, rate, "other_config")
    deadline = started + 10.0
    while pool.stats["mutations"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert pool.stats["mutations"] == count
    # Paced: the last change is due (count - 1) / rate after the first, not made in one burst.
    assert elapsed >= (count - 1) / rate
    # About one sleep per change still to come, each until that change is due (a wait may end a hair early and
    # sleep again): not a 10 ms poll, which wakes 15 times here.
    assert count - 1 <= len(stopping.timeouts) <= 2 * (count - 1)
    assert all(t is not None and t >= 0.01 for t in stopping.timeouts)


def test_control_interface_over_jsonrpc(sim):
    client = JsonRpcClient(sim.master_url())
    info = client.call("sim.info")
    assert info["name"] == "p" and len(info["hosts"]) == 3 and info["hosts"][0]["master"] is True
    assert client.call("sim.expire_sessions") >= 0


def test_change_vm_power_state_keeps_host_memory_consistent(sim):
    """What an operator's power-state reset looks like: two direct edits, memory given back exactly once."""
    pool = sim.pool()
    vm = pool.vm_by_name("web-1")
    host = pool.store.by_ref[vm.rec["resident_on"]]
    free_before = pool.free_memory(host)
    control = SimControl(sim.master_url())
    control.change_vm("web-1", "power_state", "Halted")
    control.change_vm("web-1", "resident_on", "OpaqueRef:NULL")
    assert vm.rec["power_state"] == "Halted" and vm.rec["resident_on"] == NULL
    assert vm.ref not in host.rec["resident_VMs"]
    assert pool.free_memory(host) == free_before + int(vm.rec["memory_static_max"])
    assert pool.metrics_of(host).rec["memory_free"] == pool.free_memory(host)
