"""Wire semantics over real sockets: envelopes, types, names, sessions and errors (XML-RPC and JSON-RPC)."""

from __future__ import annotations

import http.client
import re
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit

import pytest
import XenAPI

from xapi_sim.model import ObjectStore, record_for_wire
from xapi_sim.records import vm_record
from xapi_sim.testing import XAPI_FAILURES, JsonRpcClient, JsonRpcHttpError, SimControl, user_vms, xmlrpc_proxy
from xapi_sim.wire_xml import encode, object_fragment

REF = re.compile(r"^OpaqueRef:[0-9a-f-]{36}$")


def raw(url: str) -> Any:
    return xmlrpc_proxy(url)


def login_raw(url: str) -> str:
    reply = raw(url).session.login_with_password("root", "password", "1.0", "raw")
    assert reply["Status"] == "Success"
    return str(reply["Value"])


def post(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "text/xml"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_status_envelope_on_success_and_failure(sim):
    url = sim.master_url()
    session = login_raw(url)
    ok = raw(url).VM.get_all(session)
    assert ok["Status"] == "Success" and isinstance(ok["Value"], list)
    bad = raw(url).VM.get_record(session, "OpaqueRef:nope")
    assert bad == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]}


def test_ints_are_strings_and_refs_are_opaque_on_xmlrpc(sim):
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password", "1.0", "t")
    vms = user_vms(session.xenapi.VM.get_all_records())
    halted = next(r for r in vms.values() if r["name_label"] == "halted-1")
    assert halted["order"] == "0" and halted["start_delay"] == "0"
    assert isinstance(halted["memory_static_max"], str) and int(halted["memory_static_max"]) > 0
    assert halted["resident_on"] == "OpaqueRef:NULL" and halted["power_state"] == "Halted"
    assert isinstance(halted["ha_always_run"], bool) and isinstance(halted["HVM_shadow_multiplier"], float)
    assert isinstance(halted["snapshot_time"], xmlrpc.client.DateTime)
    assert all(REF.match(ref) for ref in vms)
    running = next(r for r in vms.values() if r["name_label"] == "web-1")
    assert REF.match(running["resident_on"]) and running["power_state"] == "Running"
    assert len(halted) >= 85  # the full field set of a real VM record


def test_ints_are_numbers_in_jsonrpc(sim):
    client = JsonRpcClient(sim.master_url())
    session = client.call("session.login_with_password", "root", "password", "1.0", "t")
    pool = client.call("pool.get_all", session)[0]
    assert client.call("pool.get_ha_host_failures_to_tolerate", session, pool) == 1
    host = client.call("pool.get_master", session, pool)
    assert client.call("host.get_API_version_major", session, host) == 2
    assert client.call("host.get_API_version_minor", session, host) == 15


def test_dotted_and_underscore_method_names(sim):
    url = sim.master_url()
    session = login_raw(url)
    dotted = raw(url).VM.get_all(session)["Value"]
    underscored = raw(url).VM_get_all(session)["Value"]
    metrics = raw(url).host_metrics_get_all(session)["Value"]
    assert sorted(dotted) == sorted(underscored) and len(metrics) == 3
    reply = raw(url).event_from(session, ["pool"], "", 0.0)
    assert reply["Status"] == "Success" and len(reply["Value"]["events"]) == 1


def test_errors_unknown_method_handle_uuid_and_parameter_count(sim, clients):
    session = clients.session(sim.master_url())
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.no_such_method()
    assert exc.value.details == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_method"]
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.get_record("OpaqueRef:00000000-0000-0000-0000-000000000000")
    assert exc.value.details == ["HANDLE_INVALID", "VM", "OpaqueRef:00000000-0000-0000-0000-000000000000"]
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.get_by_uuid("not-a-uuid")
    assert exc.value.details == ["UUID_INVALID", "VM", "not-a-uuid"]
    with pytest.raises(XAPI_FAILURES) as exc:
        session.xenapi.VM.get_all("extra")
    assert exc.value.details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_all", "1", "2"]


def test_login_logout_and_session_invalid(sim):
    url = sim.master_url()
    session = login_raw(url)
    assert REF.match(session)
    assert raw(url).session.logout(session)["Status"] == "Success"
    assert raw(url).VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]
    assert raw(url).VM.get_all("OpaqueRef:bogus")["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:bogus"]


def test_authentication_failure(sim, clients):
    with pytest.raises(XAPI_FAILURES) as exc:
        clients.session(sim.master_url(), password="wrong")
    assert exc.value.details[:2] == ["SESSION_AUTHENTICATION_FAILED", "root"]


def test_login_to_slave_answers_host_is_slave_with_master_address(sim, clients):
    master_url = sim.master_url()
    slave_url = sim.host_urls()[1]
    assert slave_url != master_url
    with pytest.raises(XAPI_FAILURES) as exc:
        clients.session(slave_url)
    code, address = exc.value.details
    assert code == "HOST_IS_SLAVE"
    assert f"http://{address}/" == master_url  # "127.0.0.1:PORT": a client can connect there
    session = clients.session(f"http://{address}/")
    pool = session.xenapi.pool.get_all()[0]
    master = session.xenapi.pool.get_master(pool)
    assert session.xenapi.host.get_address(master) == address


def test_sessions_are_shared_between_wire_formats(sim):
    url = sim.master_url()
    xml_session = login_raw(url)
    client = JsonRpcClient(url)
    assert sorted(client.call("VM.get_all", xml_session)) == sorted(raw(url).VM.get_all(xml_session)["Value"])
    json_session = client.call("session.login_with_password", "root", "password", "1.0", "json")
    assert raw(url).pool.get_all(json_session)["Status"] == "Success"


def test_sdk_api_version_and_session_methods(sim):
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password", "1.0", "t")
    assert session.API_version == "2.15"  # pool.get_all, pool.get_master, host.get_API_version_*
    host = session.xenapi.session.get_this_host(session.handle)
    assert host == sim.pool().master_ref
    session.xenapi.session.logout()


def test_slave_local_login_is_accepted_on_a_slave(sim):
    reply = raw(sim.host_urls()[2]).session.slave_local_login_with_password("root", "password")
    assert reply["Status"] == "Success" and REF.match(reply["Value"])


def test_malformed_requests_get_http_500(sim):
    url = sim.master_url()
    assert post(url, "/", b"<methodCall><methodName>VM.get_all")[0] == 500
    assert post(url, "/RPC2", b"not xml at all")[0] == 500
    assert post(url, "/jsonrpc", b"{not json")[0] == 500
    assert post(url, "/jsonrpc", b'["an", "array"]')[0] == 500
    assert post(url, "/elsewhere", b"")[0] == 404


def test_rpc2_path_serves_xmlrpc(sim):
    status, body = post(
        sim.master_url(), "/RPC2", xmlrpc.client.dumps(("root", "password"), "session.login_with_password").encode()
    )
    assert status == 200 and b"Success" in body


def test_keep_alive_reuses_one_connection(sim):
    parts = urlsplit(sim.master_url())
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    body = xmlrpc.client.dumps(("root", "password"), "session.login_with_password").encode()
    conn.request("POST", "/", body)
    conn.getresponse().read()
    first_socket = conn.sock
    for _ in range(5):
        conn.request("POST", "/", body)
        response = conn.getresponse()
        assert response.status == 200
        response.read()
        assert conn.sock is first_socket
    conn.close()


def test_jsonrpc_switched_off_answers_404(make_sim):
    sim = make_sim({"pools": [{"name": "old", "version": "xenserver-6.1", "jsonrpc": False, "hosts": 1}]})
    with pytest.raises(JsonRpcHttpError) as exc:
        JsonRpcClient(sim.master_url()).call("session.login_with_password", "root", "password")
    assert exc.value.status == 404
    session = XenAPI.Session(sim.master_url())  # XML-RPC still serves
    session.xenapi.login_with_password("root", "password")
    assert session.API_version == "1.10"


def test_call_log_records_who_did_what(sim):
    control = SimControl(sim.master_url())
    control.clear_call_log()
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password", "1.0", "xsha-sync")
    session.xenapi.VM.get_all()
    client = JsonRpcClient(sim.master_url())
    json_session = client.call("session.login_with_password", "root", "password", "1.0", "other")
    client.call("host.get_all", json_session)
    log = control.call_log(0)
    assert [e["method"] for e in log] == [
        "session.login_with_password",
        "VM.get_all",
        "session.login_with_password",
        "host.get_all",
    ]
    assert log[1]["session"] == session.handle and log[1]["originator"] == "xsha-sync" and log[1]["user"] == "root"
    assert [e["wire"] for e in log] == ["xmlrpc", "xmlrpc", "jsonrpc", "jsonrpc"]
    assert log[3]["originator"] == "other"
    assert control.call_log(int(log[2]["seq"]))[0]["method"] == "host.get_all"
    assert sim.pool().calls_since(0)[-1]["method"] == "host.get_all"  # the same log from Python


@pytest.mark.parametrize("cls", ["pool", "host", "host_metrics", "VM"])
def test_generic_class_methods(sim, clients, cls):
    session = clients.session(sim.master_url())
    api = getattr(session.xenapi, cls)
    refs = api.get_all()
    records = api.get_all_records()
    assert sorted(refs) == sorted(records)
    ref = refs[0]
    record = api.get_record(ref)
    assert record == records[ref]
    assert api.get_by_uuid(record["uuid"]) == ref
    for field in ("uuid", *list(record)[1:6]):
        assert getattr(api, f"get_{field}")(ref) == record[field]


def test_pool_host_and_metrics_facts(sim, clients):
    session = clients.session(sim.master_url())
    pool_ref = session.xenapi.pool.get_all()[0]
    pool = session.xenapi.pool.get_record(pool_ref)
    assert pool["ha_enabled"] is True and clients.int_(pool["ha_host_failures_to_tolerate"]) == 1
    assert clients.int_(pool["ha_plan_exists_for"]) == 1 and pool["ha_overcommitted"] is False
    master = session.xenapi.pool.get_master(pool_ref)
    host = session.xenapi.host.get_record(master)
    assert host["software_version"]["product_version"] == "8.2.0"
    assert host["software_version"]["product_brand"] == "XenServer"
    assert clients.int_(host["API_version_major"]) == 2 and host["enabled"] is True
    metrics = session.xenapi.host_metrics.get_record(host["metrics"])
    assert metrics["live"] is True
    assert clients.int_(metrics["memory_total"]) == 64 * 1024**3
    assert 0 < clients.int_(metrics["memory_free"]) < clients.int_(metrics["memory_total"])
    assert clients.int_(session.xenapi.host.compute_free_memory(master)) == clients.int_(metrics["memory_free"])


def test_templates_snapshots_and_control_domains_are_vm_objects(sim, clients):
    session = clients.session(sim.master_url())
    records = session.xenapi.VM.get_all_records()
    assert sum(r["is_control_domain"] for r in records.values()) == 3  # one dom0 per host
    assert sum(r["is_a_template"] for r in records.values()) >= 1
    snapshots = [r for r in records.values() if r["is_a_snapshot"]]
    assert len(snapshots) == 1 and snapshots[0]["snapshot_of"] in records
    assert len(user_vms(records)) == 6


def test_a_changed_record_is_encoded_as_a_fresh_encoding_would_be() -> None:
    """The XML encoder re-encodes only the members whose value changed; the result must equal a full encoding,
    whatever changed (a value, a container, a new field, a field removed, a fault-injected variant)."""

    def fresh(record: dict[str, Any]) -> str:
        parts: list[str] = []
        encode(record, parts)
        return "".join(parts)

    store = ObjectStore()
    vm = store.add("VM", "OpaqueRef:vm", vm_record(uuid_="u1", name_label="first", power_state="Halted"))
    assert object_fragment(vm) == fresh(vm.rec)
    store.modify(vm, {"power_state": "Running", "resident_on": "OpaqueRef:h1", "other_config": {"k": "a & b"}})
    assert "<name>power_state</name><value>Running</value>" in object_fragment(vm)
    assert object_fragment(vm) == fresh(vm.rec)
    store.modify(vm, {"name_label": "<second>", "brand_new_field": ["x"]})
    assert object_fragment(vm) == fresh(vm.rec)
    vm.rec = {key: value for key, value in vm.rec.items() if key != "name_description"}
    assert object_fragment(vm) == fresh(vm.rec)
    vm.malformed = "unknown_power_state"
    assert object_fragment(vm) == fresh(record_for_wire(vm.rec, "unknown_power_state"))
    vm.malformed = None
    assert object_fragment(vm) == fresh(vm.rec)
