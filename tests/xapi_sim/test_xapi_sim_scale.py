"""A pool of 10,000 VMs over both wire formats; prints times and sizes (run with -s), asserts only correctness."""

from __future__ import annotations

import http.client
import time
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit

import pytest
import XenAPI

from xapi_sim import Simulator
from xapi_sim.testing import JsonRpcClient, event_from, user_vms

N = 10_000
KIB = 1024


@pytest.fixture(scope="module")
def big():
    started = time.perf_counter()
    sim = Simulator.from_scenario(
        {
            "pools": [
                {
                    "name": "big",
                    "version": "xcp-ng-8.2",
                    "hosts": {"count": 16, "memory_gib": 1024},
                    "vms": [
                        {"count": N - 1000, "name_pattern": "i-2-{n}-VM", "ha_restart_priority": "restart"},
                        {"count": 1000, "name_pattern": "i-3-{n}-VM", "power_state": "Halted"},
                    ],
                }
            ]
        }
    )
    print(f"\nbuild {N} VMs: {time.perf_counter() - started:.2f} s")
    sim.start()
    yield sim
    sim.stop()


def post_xml(url: str, method: str, *params: Any) -> tuple[bytes, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("POST", "/", xmlrpc.client.dumps(params, method).encode())
        body = conn.getresponse().read()
        return body, time.perf_counter() - started
    finally:
        conn.close()


@pytest.mark.slow
def test_vm_record_sizes_match_a_real_pool(big):
    session = XenAPI.Session(big.master_url())
    session.xenapi.login_with_password("root", "password")
    ref = big.pool().vm_by_name("i-2-5-VM").ref  # `{n}` counts from 1
    xml_body, _ = post_xml(big.master_url(), "VM.get_record", session.handle, ref)
    client = JsonRpcClient(big.master_url())
    client.call("VM.get_record", client.call("session.login_with_password", "root", "password"), ref)
    print(f"\nVM record: XML-RPC {len(xml_body)} bytes, JSON-RPC {client.last_response_size} bytes")
    assert 9 * KIB <= len(xml_body) <= 12 * KIB
    assert 3 * KIB <= client.last_response_size <= 4 * KIB


@pytest.mark.slow
def test_get_all_records_and_event_from_over_xmlrpc(big):
    session = XenAPI.Session(big.master_url())
    session.xenapi.login_with_password("root", "password")
    body, server_time = post_xml(big.master_url(), "VM.get_all_records", session.handle)
    started = time.perf_counter()
    records = session.xenapi.VM.get_all_records()
    sdk_time = time.perf_counter() - started
    print(f"\nXML-RPC VM.get_all_records: {len(body) / 1e6:.1f} MB, transfer {server_time:.2f} s, SDK {sdk_time:.2f} s")
    assert len(user_vms(records)) == N
    started = time.perf_counter()
    result = event_from(session, ["vm"], "", 30.0)
    print(f"XML-RPC event.from(''): SDK {time.perf_counter() - started:.2f} s")
    assert len(user_vms({e["ref"]: e["snapshot"] for e in result["events"]})) == N
    assert {e["operation"] for e in result["events"]} == {"add"}


@pytest.mark.slow
def test_get_all_records_and_event_from_over_jsonrpc(big):
    client = JsonRpcClient(big.master_url())
    session = client.call("session.login_with_password", "root", "password")
    started = time.perf_counter()
    records = client.call("VM.get_all_records", session)
    print(
        f"\nJSON-RPC VM.get_all_records: {client.last_response_size / 1e6:.1f} MB, "
        f"{time.perf_counter() - started:.2f} s incl. orjson decode"
    )
    assert len(user_vms(records)) == N
    started = time.perf_counter()
    result = client.call("event.from", session, ["vm"], "", 30.0)
    print(f"JSON-RPC event.from(''): {client.last_response_size / 1e6:.1f} MB, {time.perf_counter() - started:.2f} s")
    assert len(user_vms({e["ref"]: e["snapshot"] for e in result["events"]})) == N
    assert result["valid_ref_counts"]["vm"] == len(records)
    # A burst of changes: each changed VM once, coalesced.
    big.pool().mutate_vms(5000)
    started = time.perf_counter()
    burst = client.call("event.from", session, ["vm"], result["token"], 30.0)
    print(f"JSON-RPC event.from after 5,000 changes: {time.perf_counter() - started:.2f} s")
    assert len(burst["events"]) == 5000 and {e["operation"] for e in burst["events"]} == {"mod"}
