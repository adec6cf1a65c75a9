"""The typed event.from decoder (JSON-RPC): the same mirror as a full decode, and anything unusual left to it."""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from sync_service.domain import (
    PoolView,
    host_from_record,
    host_metrics_from_record,
    is_mirrored_vm,
    pool_from_record,
    vm_from_record,
)
from sync_service.xapi import XapiEndpoint, XapiError, connect
from sync_service.xapi.client import EventBatch, parse_event_batch
from sync_service.xapi.event_decoding import RECORD_FIELDS, Record, decode_event_from

CLASSES = ["vm", "host", "host_metrics", "pool"]


def _raw_answer(url: str, method: str, *params: Any) -> bytes:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})
        connection.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
        return connection.getresponse().read()
    finally:
        connection.close()


@pytest.fixture
def full_list_answer(make_sim: Any) -> tuple[bytes, Any]:
    """xapi_sim's raw answer to event.from("") for the small pool (VMs, templates, a snapshot, hosts, metrics)."""
    sim = make_sim()
    url = sim.master_url()
    session = orjson.loads(_raw_answer(url, "session.login_with_password", "root", "password", "1.0", "t"))["result"]
    return _raw_answer(url, "event.from", session, CLASSES, "", 1.0), sim


def _view(batch: EventBatch) -> PoolView:
    view = PoolView()
    view.apply(batch.events)
    return view


def test_the_typed_decoder_gives_the_same_mirror_as_a_full_decode(full_list_answer: tuple[bytes, Any]) -> None:
    payload, _sim = full_list_answer
    typed = decode_event_from(payload)
    assert typed is not None
    full = parse_event_batch(orjson.loads(payload)["result"])
    assert typed.token == full.token
    assert typed.valid_ref_counts == full.valid_ref_counts
    assert [(e.cls, e.operation, e.ref) for e in typed.events] == [(e.cls, e.operation, e.ref) for e in full.events]
    typed_view, full_view = _view(typed), _view(full)
    assert typed_view.all_vms() == full_view.all_vms() and len(full_view.all_vms()) > 3
    assert typed_view.all_hosts() == full_view.all_hosts() and len(full_view.all_hosts()) == 3
    assert typed_view.pool_facts() == full_view.pool_facts() and full_view.pool_facts() is not None
    assert typed_view.watch_state() == full_view.watch_state()
    assert typed_view.ignored_vms == full_view.ignored_vms and full_view.ignored_vms  # templates, snapshot, dom0


class _KeyRecorder(Mapping[str, Any]):
    """A record that notes every key the domain asks for."""

    def __init__(self, record: Mapping[str, Any], asked: set[str]) -> None:
        self.record = record
        self.asked = asked

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return self.record[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return self.record.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)


def test_every_field_the_domain_reads_is_decoded(full_list_answer: tuple[bytes, Any]) -> None:
    """Should the domain start reading another field, the typed decoder must carry it too."""
    payload, _sim = full_list_answer
    asked: set[str] = set()
    readers = {
        "vm": lambda ref, record: (is_mirrored_vm(record), vm_from_record(ref, record)),
        "host": host_from_record,
        "host_metrics": host_metrics_from_record,
        "pool": pool_from_record,
    }
    for event in orjson.loads(payload)["result"]["events"]:
        readers[event["class"].lower()](event["ref"], _KeyRecorder(event["snapshot"], asked))
    assert asked and asked <= RECORD_FIELDS, sorted(asked - RECORD_FIELDS)


def test_a_record_is_a_read_only_mapping_of_the_fields_present() -> None:
    record = Record(uuid="u1", power_state="Running", order=0)
    assert isinstance(record, Mapping)
    assert record.get("uuid") == "u1" and record["order"] == 0
    assert record.get("name_label") is None and record.get("name_label", "x") == "x"
    assert "power_state" in record and "name_label" not in record and "not_a_field" not in record
    assert sorted(record) == ["order", "power_state", "uuid"] and len(record) == 3
    assert dict(record.items()) == {"uuid": "u1", "power_state": "Running", "order": 0}
    with pytest.raises(KeyError):
        record["name_label"]
    with pytest.raises(KeyError):
        record["not_a_field"]


@pytest.mark.parametrize(
    "answer",
    [
        b'{"jsonrpc": "2.0", "error": {"code": 1, "message": "SESSION_INVALID", "data": ["x"]}, "id": 1}',
        b'{"result": null, "error": ["EVENTS_LOST"], "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": [], "valid_ref_counts": {}}, "id": 1}',  # no token
        b'{"jsonrpc": "2.0", "result": {"events": [{"class": 7}], "token": "t"}, "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": [{"class": "vm", "snapshot": "x"}], "token": "t"}, "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": {}, "token": "t"}, "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": [], "valid_ref_counts": null, "token": "t"}, "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": [], "token": 5}, "id": 1}',
        b'{"jsonrpc": "2.0", "result": {"events": [', b"not json", b"[]",
    ],
)  # fmt: skip
def test_anything_unusual_is_left_to_the_full_decode(answer: bytes) -> None:
    assert decode_event_from(answer) is None


def test_a_usual_answer_with_unknown_fields_and_deletions_decodes() -> None:
    answer = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "result": {
                "token": "t2",
                "valid_ref_counts": {"VM": 2},
                "events": [
                    {"class": "VM", "operation": "mod", "ref": "r1", "id": "9", "timestamp": "x",
                     "snapshot": {"uuid": "u1", "power_state": "Halted", "other_config": {"a": "b"}, "VCPUs_max": 4}},
                    {"class": "vm", "operation": "del", "ref": "r2"},
                ],
            },
        }
    )  # fmt: skip
    batch = decode_event_from(answer)
    assert batch is not None and batch.token == "t2" and batch.valid_ref_counts == {"vm": 2}
    first, second = batch.events
    assert (first.cls, first.operation, first.ref) == ("vm", "mod", "r1")
    assert first.snapshot is not None and dict(first.snapshot) == {"uuid": "u1", "power_state": "Halted"}
    assert (second.operation, second.snapshot) == ("del", None)


def test_the_json_client_uses_it_and_errors_still_raise(make_sim: Any) -> None:
    sim = make_sim()
    client = connect(XapiEndpoint(sim.master_url()), "root", "password", wire="json")
    try:
        batch = client.event_from(CLASSES, "", 1.0)
        assert any(isinstance(event.snapshot, Record) for event in batch.events)
        with pytest.raises(XapiError) as info:
            client.event_from(["vm"], "not-a-token", 1.0)
        assert info.value.code == "EVENT_FROM_TOKEN_PARSE_FAILURE"
    finally:
        client.close()
