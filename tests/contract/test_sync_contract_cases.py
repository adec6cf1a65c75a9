"""Consumer-driven contract between ha_service (consumer) and sync_service (provider).

The cases in tests/contract/cases/sync_service_calls.json were recorded from ha_service's real SyncClient: a
recording interceptor wraps its channel while ha_service runs a small scenario (a native pool, an HA VM deployed,
the controller applying its HA config, cluster status and fencing read). Each case holds the request, with the
values of that run replaced by placeholders (``${cluster}``, ``${vm_uuid}``...), and the response fields ha_service
received (and so may rely on).

- `test_recorded_cases_replay_against_a_real_sync_service`: each request replayed against a real sync_service
  answers OK with every recorded response field present.
- `test_the_cases_cover_what_ha_service_calls_today`: the same scenario recorded again must not call an RPC or set
  a request field the cases lack (re-record with XSHA_RECORD_CONTRACT_CASES=1 after a deliberate change).
`buf breaking` (tests/contract/test_contract.py) guards the wire format itself.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

import ha_service.app
from ha_service.sync_client import SyncClient, SyncClientConfig
from ha_service.testing import running_ha_service
from ha_service.testing import wait_for as ha_wait_for
from sync_service import testing as sync_testing
from tests.harness.proto_strategies import invoke, method_by_name, request_class
from xapi_sim import Simulator
from xsha_api.v1 import common_pb2, ha_service_pb2

CASES_FILE = Path(__file__).parent / "cases" / "sync_service_calls.json"
CLUSTER = "contract-1"
HA_VM = "i-2-1-VM"
SCENARIO = {
    "time_scale": 0.01,
    "vm_boot_seconds": 0.05,
    "pools": [
        {
            "name": "xs82",
            "version": "citrix-hypervisor-8.2",
            "ha_enabled": True,
            "hosts": {"count": 2, "memory_gib": 64},
            "vms": [{"count": 4, "name_pattern": "i-2-{n}-VM", "memory_gib": 1}],
        }
    ],
}


# ------------------------------------------------------------------------------------------------------ recording


class Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc,type-arg]
    """Keeps each call's method, request and first responses (of a stream, the first few of each kind)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Message, list[Message]]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Message) -> Any:
        outcome = continuation(details, request)
        try:
            response = outcome.result()
        except grpc.RpcError:
            return outcome
        with self.lock:
            self.calls.append((details.method, request, [response]))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Message) -> Any:
        call = continuation(details, request)
        entry: tuple[str, Message, list[Message]] = (details.method, request, [])
        with self.lock:
            self.calls.append(entry)

        kinds: dict[str, int] = {}

        class Recording:
            def __iter__(self) -> Iterator[Message]:
                for item in call:
                    # A few of each kind (bookmark, change, changes...), however the stream interleaves them.
                    kind = ",".join(sorted(field.name for field, _ in item.ListFields()))
                    if kinds.get(kind, 0) < 3:
                        kinds[kind] = kinds.get(kind, 0) + 1
                        entry[2].append(item)
                    yield item

            def __getattr__(self, name: str) -> Any:
                return getattr(call, name)

        return Recording()


def _record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Runs the scenario with ha_service's SyncClient recorded; the cases and the run's placeholder values."""
    recorder = Recorder()

    class RecordingSyncClient(SyncClient):
        def __init__(self, config: SyncClientConfig, *, channel: grpc.Channel | None = None) -> None:
            wrapped = grpc.intercept_channel(channel or grpc.insecure_channel(config.address), recorder)
            super().__init__(config, channel=wrapped)

    sim = Simulator.from_scenario(SCENARIO).start()
    monkeypatch.setattr(ha_service.app, "SyncClient", RecordingSyncClient)
    try:
        with sync_testing.start_sync_service(f"sqlite:///{tmp_path / 'sync.sqlite'}", event_timeout=1.0) as sync:
            sync.register_pool(CLUSTER, sim.master_url("xs82"), "root", "password")
            sync.wait_watching(CLUSTER)
            with running_ha_service(f"sqlite:///{tmp_path / 'ha.sqlite'}", sync.address, token=None) as ha:
                stub = ha.stub()
                request = ha_service_pb2.UpdateSettingsRequest()
                getattr(request, "global").native_ha_enabled = True
                stub.UpdateSettings(request)
                stub.DecideVmDeployment(
                    ha_service_pb2.DecideVmDeploymentRequest(
                        cluster_id=CLUSTER,
                        instance_name=HA_VM,
                        vm_type=common_pb2.VM_TYPE_USER,
                        offering_ha_enabled=True,
                    )
                )
                ha_wait_for(
                    lambda: (
                        stub.GetManagedVm(
                            ha_service_pb2.GetManagedVmRequest(cluster_id=CLUSTER, instance_name=HA_VM)
                        ).vm.observed_ha_restart_priority
                        == "restart"
                    ),
                    30,
                    what="the HA config applied through sync_service",
                )
                stub.GetClusterHaStatus(ha_service_pb2.GetClusterHaStatusRequest(cluster_id=CLUSTER))
                stub.ListClusterHaStatuses(ha_service_pb2.ListClusterHaStatusesRequest())
                stub.GetHostFencingPolicy(ha_service_pb2.GetHostFencingPolicyRequest(cluster_id=CLUSTER))
            values = {
                "cluster": CLUSTER,
                "vm_uuid": sim.pool("xs82").vm_by_name(HA_VM).uuid,
                "pool_uuid": sim.pool("xs82").pool_obj.rec["uuid"],
            }
    finally:
        monkeypatch.undo()
        sim.stop()
    with recorder.lock:
        calls = list(recorder.calls)
    cases: dict[str, dict[str, Any]] = {}
    for path, sent, responses in calls:
        method = path.rsplit("/", 1)[1]
        fields = sorted({f for response in responses for f in _field_paths(response)})
        body = _symbolize(json_format.MessageToDict(sent, preserving_proto_field_name=True), values)
        key = json.dumps([method, body], sort_keys=True)
        case = cases.setdefault(key, {"method": method, "request": body, "response_fields": []})
        case["response_fields"] = sorted(set(case["response_fields"]) | set(fields))
    return sorted(cases.values(), key=lambda c: json.dumps(c, sort_keys=True)), values


def _field_paths(message: Message, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of the fields set in `message` (nested messages three levels deep; of a repeated field, the
    union over its first 50 items, so a batch of mixed changes shows every kind's fields)."""
    paths: list[str] = []
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        paths.append(path)
        if descriptor.message_type is None or depth >= 3:
            continue
        if not descriptor.message_type.full_name.startswith("cloudstack."):
            continue
        children = list(value[:50]) if descriptor.is_repeated else [value]
        for child in children:
            paths.extend(_field_paths(child, f"{path}.", depth + 1))
    return sorted(set(paths))


def _symbolize(value: Any, values: dict[str, str], key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _symbolize(v, values, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_symbolize(v, values, key) for v in value]
    for name, actual in values.items():
        if value == actual:
            return f"${{{name}}}"
    if "revision" in key:  # a revision of that run: replayed from the start of the change log
        return "${revision}"
    return value


def _resolve(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return values.get(value[2:-1], "0")
    return value


def _request_fields(case: dict[str, Any]) -> set[str]:
    return {f"{case['method']}.{name}" for name in case["request"]}


# -------------------------------------------------------------------------------------------------------- tests


def test_the_cases_cover_what_ha_service_calls_today(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, _ = _record(tmp_path, monkeypatch)
    if os.environ.get("XSHA_RECORD_CONTRACT_CASES") == "1":
        CASES_FILE.parent.mkdir(parents=True, exist_ok=True)
        CASES_FILE.write_text(json.dumps({"provider": "HypervisorSyncService", "consumer": "ha_service",
                                          "cases": recorded}, indent=2, sort_keys=True) + "\n")  # fmt: skip
    stored = json.loads(CASES_FILE.read_text())["cases"]
    assert {c["method"] for c in recorded} <= {c["method"] for c in stored}, "ha_service calls an RPC with no case"
    assert set().union(*map(_request_fields, recorded)) <= set().union(*map(_request_fields, stored)), (
        "ha_service sets a request field no case covers: re-record with XSHA_RECORD_CONTRACT_CASES=1"
    )
    relied = {(c["method"], f) for c in recorded for f in c["response_fields"]}
    covered = {(c["method"], f) for c in stored for f in c["response_fields"]}
    assert relied <= covered, f"response fields ha_service now receives that no case checks: {sorted(relied - covered)}"


def test_recorded_cases_replay_against_a_real_sync_service(tmp_path: Path) -> None:
    stored = json.loads(CASES_FILE.read_text())["cases"]
    assert len(stored) >= 5 and {"WatchChanges", "SetVmHaConfig", "GetPool", "ListVms"} <= {c["method"] for c in stored}
    sim = Simulator.from_scenario(SCENARIO).start()
    try:
        with sync_testing.start_sync_service(f"sqlite:///{tmp_path / 'sync.sqlite'}") as sync:
            sync.register_pool(CLUSTER, sim.master_url("xs82"), "root", "password")
            sync.wait_watching(CLUSTER)
            values = {
                "cluster": CLUSTER,
                "vm_uuid": sim.pool("xs82").vm_by_name(HA_VM).uuid,
                "pool_uuid": sim.pool("xs82").pool_obj.rec["uuid"],
                "revision": "0",
            }
            for case in stored:
                method = method_by_name(f"HypervisorSyncService.{case['method']}")
                replayed = json_format.ParseDict(_resolve(case["request"], values), request_class(method)())
                outcome = invoke(
                    sync.channel, method, replayed, sync.metadata, timeout=20, max_items=500, stream_timeout=3
                )
                assert outcome.ok or outcome.stream_was_open, (case["method"], outcome.code, outcome.details)
                got = {f for response in outcome.responses for f in _field_paths(response)}
                missing = set(case["response_fields"]) - got
                assert not missing, f"{case['method']}: fields ha_service relies on are missing: {sorted(missing)}"
    finally:
        sim.stop()
