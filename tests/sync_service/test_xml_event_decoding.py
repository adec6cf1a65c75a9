"""The typed event.from decoder (XML-RPC): the same records as xmlrpc.client, and anything unusual left to it."""

from __future__ import annotations

import http.client
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit

import pytest

from sync_service.domain import PoolView
from sync_service.xapi import XapiEndpoint, XapiError, connect
from sync_service.xapi.client import EventBatch, parse_event_batch
from sync_service.xapi.event_decoding import RECORD_FIELDS
from sync_service.xapi.xml_event_decoding import decode_xml_event_from
from xapi_sim.errors import XapiError as SimXapiError
from xapi_sim.wire_xml import failure, success

CLASSES = ["vm", "host", "host_metrics", "pool"]


def _raw_answer(url: str, method: str, *params: Any) -> bytes:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        connection.request("POST", "/", xmlrpc.client.dumps(params, method).encode(), {"Content-Type": "text/xml"})
        return connection.getresponse().read()
    finally:
        connection.close()


def _loads(payload: bytes) -> Any:
    (answer,), _ = xmlrpc.client.loads(payload)
    return answer


def _full(payload: bytes) -> EventBatch:
    answer = _loads(payload)
    assert answer["Status"] == "Success"
    return parse_event_batch(answer["Value"])


def _assert_same_as_full_decode(payload: bytes) -> EventBatch:
    """The typed batch carries exactly the read fields of the full decode, with the same values and types."""
    typed, full = decode_xml_event_from(payload), _full(payload)
    assert typed is not None
    assert (typed.token, typed.valid_ref_counts) == (full.token, full.valid_ref_counts)
    assert len(typed.events) == len(full.events)
    for fast, slow in zip(typed.events, full.events, strict=True):
        assert (fast.cls, fast.operation, fast.ref) == (slow.cls, slow.operation, slow.ref)
        if slow.snapshot is None:
            assert fast.snapshot is None
            continue
        assert fast.snapshot is not None
        expected = {key: value for key, value in slow.snapshot.items() if key in RECORD_FIELDS}
        assert dict(fast.snapshot) == expected
        assert {key: type(value) for key, value in fast.snapshot.items()} == {
            key: type(value) for key, value in expected.items()
        }
    return typed


def _vm_event(ref: str, **snapshot: Any) -> dict[str, Any]:
    record = {"uuid": f"uuid-{ref}", "name_label": ref, "power_state": "Running", "other_config": {}, **snapshot}
    return {"id": "1", "timestamp": "1.0", "class": "VM", "operation": "mod", "ref": ref, "snapshot": record}


def _answer(*events: dict[str, Any], token: str = "t2", counts: dict[str, Any] | None = None) -> bytes:
    return success({"events": list(events), "valid_ref_counts": counts or {"VM": "2"}, "token": token})


@pytest.fixture
def full_list_answer(make_sim: Any) -> bytes:
    """xapi_sim's raw XML-RPC answer to event.from("") for the small pool (VMs, templates, hosts, metrics)."""
    sim = make_sim()
    url = sim.master_url()
    login = _loads(_raw_answer(url, "session.login_with_password", "root", "password", "1.0", "t"))
    return _raw_answer(url, "event.from", login["Value"], CLASSES, "", "1.0")


def test_the_typed_decoder_gives_the_same_mirror_as_a_full_decode(full_list_answer: bytes) -> None:
    typed = _assert_same_as_full_decode(full_list_answer)
    full = _full(full_list_answer)
    typed_view, full_view = PoolView(), PoolView()
    typed_view.apply(typed.events)
    full_view.apply(full.events)
    assert typed_view.all_vms() == full_view.all_vms() and len(full_view.all_vms()) > 3
    assert typed_view.all_hosts() == full_view.all_hosts() and len(full_view.all_hosts()) == 3
    assert typed_view.pool_facts() == full_view.pool_facts() and full_view.pool_facts() is not None
    assert typed_view.watch_state() == full_view.watch_state()
    assert typed_view.ignored_vms == full_view.ignored_vms and full_view.ignored_vms


def test_values_decode_as_xmlrpc_client_decodes_them() -> None:
    """Entities, newlines, booleans, numbers, maps and arrays; a read field's name used as a map key inside a
    record is not taken for the field; unknown members and a deletion without a snapshot are passed over."""
    answer = _answer(
        _vm_event(
            "r1",
            name_label="a & <b> \"c\" 'd'",
            power_state="Halted",
            ha_always_run=True,
            is_a_template=False,
            order=3,
            start_delay=2.5,
            memory_static_max="1073741824",
            ha_restart_priority="",
            other_config={"uuid": "not-the-uuid", "power_state": "Paused", "name_label": "nested"},
            VCPUs_params={},
            consoles=["OpaqueRef:a", "OpaqueRef:b"],
            blocked_operations={},
        ),
        _vm_event("r2", name_label="line one\r\nline two", software_version={"product_version": "8.2.0"}),
        {"id": "2", "timestamp": "2.0", "class": "VM", "operation": "del", "ref": "r3"},
        counts={"VM": "2", "host": "3"},
    )
    batch = _assert_same_as_full_decode(answer)
    first, second, deleted = batch.events
    assert first.snapshot is not None and first.snapshot["uuid"] == "uuid-r1"
    assert first.snapshot["power_state"] == "Halted" and first.snapshot["name_label"] == "a & <b> \"c\" 'd'"
    assert first.snapshot["ha_always_run"] is True and first.snapshot["order"] == "3"  # ints travel as strings
    assert "other_config" not in first.snapshot and "consoles" not in first.snapshot
    assert second.snapshot is not None and second.snapshot["name_label"] == "line one\nline two"
    assert second.snapshot["software_version"] == {"product_version": "8.2.0"}
    assert (deleted.operation, deleted.snapshot) == ("del", None)
    assert batch.valid_ref_counts == {"vm": 2, "host": 3}


def test_an_empty_batch_decodes() -> None:
    for answer in (_answer(), _answer().replace(b"<data></data>", b"<data/>")):
        batch = decode_xml_event_from(answer)
        assert batch is not None and batch.events == [] and batch.token == "t2"


@pytest.mark.parametrize(
    "answer",
    [
        failure(SimXapiError("EVENTS_LOST", [])),
        # Whitespace between elements, as xmlrpc.client writes: valid XML-RPC, not the shape XAPI sends.
        xmlrpc.client.dumps(({"Status": "Success", "Value": {"events": [], "token": "t"}},), methodresponse=True)
        .encode(),
        _answer(_vm_event("r1", other_config={"nested": {"deeper": "x"}})),  # a map inside a map
        _answer(_vm_event("r1", tags=[["a"]])),  # an array inside an array
        _answer(_vm_event("r1", ha_always_run=True)).replace(b"<boolean>1</boolean>", b"<boolean>2</boolean>"),
        _answer(_vm_event("r1", name_label="x")).replace(b"<value>x</value>", b"<value>&undefined;</value>"),
        _answer(_vm_event("r1"))[:-40],  # cut short
        _answer(_vm_event("r1")).replace(b"<?xml version='1.0'?>", b"<?xml version='1.0' encoding='latin-1'?>"),
        _answer(_vm_event("r1")).replace(b"<name>token</name>", b"<name>other</name>"),  # no token
        _answer(token="t").replace(b"<value>t</value>", b"<value><int>5</int></value>"),  # a token not a string
        _answer(_vm_event("r1")).replace(b"<name>events</name><value><array>", b"<name>events</name><value><struct>"),
        _answer(_vm_event("r1")) + b"<trailing/>",
        b"\xff\xfe not utf-8", b"", b"<methodResponse>",
    ],
)  # fmt: skip
def test_anything_unusual_is_left_to_the_full_decode(answer: bytes) -> None:
    assert decode_xml_event_from(answer) is None


def test_the_xml_client_uses_it_and_errors_still_raise(make_sim: Any) -> None:
    sim = make_sim()
    client = connect(XapiEndpoint(sim.master_url()), "root", "password", wire="xml")
    try:
        batch = client.event_from(CLASSES, "", 1.0)
        snapshots = [event.snapshot for event in batch.events if event.snapshot is not None]
        # Only the read fields: the full decode would carry every field of each record.
        assert snapshots and all(set(snapshot) <= RECORD_FIELDS for snapshot in snapshots)
        assert any(event.cls == "vm" and event.snapshot and event.snapshot.get("power_state") for event in batch.events)
        with pytest.raises(XapiError) as info:
            client.event_from(["vm"], "not-a-token", 1.0)
        assert info.value.code == "EVENT_FROM_TOKEN_PARSE_FAILURE"
        assert client.call("pool.get_all")  # other calls still go through xmlrpc.client
    finally:
        client.close()
