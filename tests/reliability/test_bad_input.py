"""Bad input (issue 9): hypothesis-generated requests for every RPC of both services, against the real services
(child processes) with xapi_sim pools registered, so known cluster ids, VM uuids, instance names, action and
migration ids exist and are mixed in. Oversized fields, wrong and unknown enums, unknown ids, empty and odd unicode
strings, absurd numbers and times: every answer is a documented status code with a message (never UNKNOWN or
INTERNAL, never a stack trace, never a secret), neither service crashes, and afterwards the database is consistent
(Alembic heads unchanged, every pool registered by a valid request, settings valid, the mirror still equals XAPI).

At least 10,000 requests per run, counted and printed in the summary. Seeded: XSHA_FAULT_SEED.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from sync_service.testing import mirror_diff
from tests.harness.invariants import check_outcome
from tests.harness.proto_strategies import MethodDescriptor, all_rpc_methods, invoke, request_strategy
from tests.reliability.stack import CREDENTIALS, ChildStack, DatabaseTarget, child_stack, wait_for
from tests.reliability.summary import report
from xsha_api.v1 import common_pb2, ha_service_pb2, sync_service_pb2
from xsha_common.procs import health_status

DEFAULT_SEED = 20261125
REQUESTS_PER_EXAMPLE = 6
EXAMPLES_PER_RPC = 62  # 28 RPCs x 62 x 6 = 10,416 requests
MIN_REQUESTS = 10_000
CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NATIVE, LEGACY = "bad-nat", "bad-61"
VICTIMS = ("victim-1", "victim-2")  # what DeregisterPool / UpdatePool may really change


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.codes: Counter[str] = Counter()
        self.per_rpc: Counter[str] = Counter()
        self.problems: list[str] = []
        self.registered: dict[str, sync_service_pb2.RegisterPoolRequest] = {}
        self.passwords: set[str] = set()
        self.rpcs_done: set[str] = set()


TALLY = Tally()


def _scenario() -> dict[str, Any]:
    def pool(name: str, version: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "credentials": dict(CREDENTIALS),
            "hosts": {"count": 2, "memory_gib": 64},
            "vms": [{"count": 20, "name_pattern": "i-2-{n}-VM", "memory_gib": 1}],
            **extra,
        }

    return {
        "time_scale": 0.01,
        "vm_boot_seconds": 0.05,
        "pools": [pool("xs82", "citrix-hypervisor-8.2", ha_enabled=True), pool("xs61", "xenserver-6.1")],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildStack]:
    directory = tmp_path_factory.mktemp("bad-input")
    with child_stack(
        directory,
        _scenario(),
        database=DatabaseTarget.choose(directory, "sqlite"),
        # Generated registrations point anywhere: back off slowly so a hundred dead pools cost little.
        sync_args=("--backoff-base-seconds", "1", "--backoff-cap-seconds", "10"),
    ) as running:
        running.register_pools({NATIVE: "xs82", LEGACY: "xs61"})
        for victim in VICTIMS:
            running.sync.stub.RegisterPool(
                sync_service_pb2.RegisterPoolRequest(
                    cluster_id=victim,
                    master_url="http://127.0.0.1:9",
                    credentials=sync_service_pb2.XapiCredentials(username="root", password="victim-password"),
                ),
                metadata=running.sync.metadata,
                timeout=10,
            )
        yield running


@pytest.fixture(scope="module")
def known(stack: ChildStack) -> dict[str, st.SearchStrategy[Any]]:
    """Ids that exist on the services under test: managed VMs, HA actions, a migration."""
    ha = stack.ha
    ha.call("UpdateSettings", _native_on())
    names = [f"i-2-{n}-VM" for n in range(1, 6)]
    for cluster in (NATIVE, LEGACY):
        for name in names:
            ha.call(
                "DecideVmDeployment",
                ha_service_pb2.DecideVmDeploymentRequest(
                    cluster_id=cluster, instance_name=name, vm_type=common_pb2.VM_TYPE_USER, offering_ha_enabled=True
                ),
            )
    for name in names:
        ha.call(
            "SetVmWantedState",
            ha_service_pb2.SetVmWantedStateRequest(
                cluster_id=LEGACY, instance_name=name, wanted_state=ha_service_pb2.WANTED_STATE_RUNNING
            ),
        )
    # A dead host in the 6.1 pool: RESTART_VM actions, so acknowledgements name real actions.
    legacy = stack.sim.pool("xs61")
    legacy.crash_host(legacy.hosts[1])
    actions = wait_for(lambda: stack.ha.all_actions()[0], 60, what="RESTART_VM actions")
    migration_ids: list[str] = []
    try:
        plan = ha.call(
            "PlanMigration",
            ha_service_pb2.PlanMigrationRequest(cluster_id=NATIVE, target_mode=common_pb2.HA_MODE_CLOUDSTACK),
        )
        migration_ids.append(plan.migration.migration_id)
    except grpc.RpcError:
        pass  # not offered by this version: unknown migration ids only
    vms, _ = stack.sync.list_all_vms()
    hosts = stack.sync.stub.ListHosts(
        sync_service_pb2.ListHostsRequest(page_size=100), metadata=stack.sync.metadata, timeout=10
    ).hosts
    clusters = st.sampled_from([NATIVE, LEGACY])
    return {
        "cluster_id": clusters,
        "uuid": st.sampled_from([vm.uuid for vm in vms]),
        "vm_uuid": st.sampled_from([vm.uuid for vm in vms]),
        "resident_host_uuid": st.sampled_from([h.uuid for h in hosts]),
        "instance_name": st.sampled_from(names),
        "name": st.sampled_from(names),
        "action_id": st.sampled_from([a.action_id for a in actions]),
        "migration_id": st.sampled_from(migration_ids or ["00000000-0000-4000-8000-000000000000"]),
        "master_url": st.sampled_from([stack.sim.master_url("xs82").rstrip("/"), "http://127.0.0.1:9"]),
    }


def _native_on() -> ha_service_pb2.UpdateSettingsRequest:
    request = ha_service_pb2.UpdateSettingsRequest()
    getattr(request, "global").native_ha_enabled = True
    return request


def _service_of(method: MethodDescriptor) -> str:
    return str(method.containing_service.name)


METHODS = all_rpc_methods()


def _is_valid_registration(request: sync_service_pb2.RegisterPoolRequest) -> bool:
    if not CLUSTER_ID.match(request.cluster_id) or not request.credentials.username:
        return False
    try:
        parts = urlsplit(request.master_url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", [m for _, m in METHODS], ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_generated_requests_get_documented_answers(
    method: MethodDescriptor, stack: ChildStack, known: dict[str, st.SearchStrategy[Any]]
) -> None:
    values = dict(known)
    if method.name in ("DeregisterPool", "UpdatePool"):
        values["cluster_id"] = st.sampled_from(VICTIMS)  # the pools the other RPCs rely on stay registered
    view = stack.sync if _service_of(method) == "HypervisorSyncService" else stack.ha
    channel = view.channel
    metadata = view.metadata
    forbidden = [s for s in stack.secrets]
    # Streams are read until a short deadline: twice as many at once, half as many examples (same request count).
    per_example = REQUESTS_PER_EXAMPLE * (2 if method.server_streaming else 1)
    examples = EXAMPLES_PER_RPC // (2 if method.server_streaming else 1)
    pool = ThreadPoolExecutor(per_example)
    key = f"{_service_of(method)}/{method.name}"

    def call(request: Message) -> None:
        outcome = invoke(channel, method, request, metadata, timeout=20, max_items=3, stream_timeout=0.3)
        problems = check_outcome(method, outcome, secrets=forbidden)
        with TALLY.lock:
            TALLY.requests += 1
            TALLY.per_rpc[key] += 1
            TALLY.codes[outcome.code.name] += 1
            if isinstance(request, sync_service_pb2.RegisterPoolRequest) and outcome.ok:
                TALLY.registered[request.cluster_id] = request
            if isinstance(request, sync_service_pb2.RegisterPoolRequest | sync_service_pb2.UpdatePoolRequest):
                password = request.credentials.password
                if len(password) >= 12 and password.isprintable() and password.strip() == password:
                    TALLY.passwords.add(password)
            TALLY.problems.extend(problems)
        assert not problems, "\n".join(problems)

    @seed(int(os.environ.get("XSHA_FAULT_SEED", DEFAULT_SEED)))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        batch=st.lists(request_strategy(method, known_values=values), min_size=per_example, max_size=per_example),
        nonce=st.integers(0, 2**31),  # keeps examples distinct for requests without fields (GetSettings)
    )
    def run(batch: list[Message], nonce: int) -> None:
        for future in [pool.submit(call, request) for request in batch]:
            future.result()

    try:
        run()
    finally:
        pool.shutdown(wait=True)
    assert stack.check_alive() == [], "a service exited by itself"
    TALLY.rpcs_done.add(key)


@pytest.mark.timeout(300)
def test_after_the_generated_requests_everything_is_consistent(stack: ChildStack) -> None:
    if len(TALLY.rpcs_done) < len(METHODS):
        pytest.skip("runs after the generated requests of every RPC (run the whole module)")
    report(
        "xsha bad input (tests/reliability/test_bad_input.py)",
        [
            f"generated requests: {TALLY.requests} across {len(TALLY.per_rpc)} RPCs "
            f"(seed {os.environ.get('XSHA_FAULT_SEED', DEFAULT_SEED)})",
            "answers by code: " + ", ".join(f"{c}={n}" for c, n in TALLY.codes.most_common()),
            f"UNKNOWN/INTERNAL answers: {TALLY.codes['UNKNOWN'] + TALLY.codes['INTERNAL']}; "
            f"contract problems: {len(TALLY.problems)}",
        ],
    )
    assert TALLY.requests >= MIN_REQUESTS
    assert TALLY.codes["UNKNOWN"] == 0 and TALLY.codes["INTERNAL"] == 0
    # Neither service crashed; both still serve.
    assert stack.check_alive() == []
    assert health_status(stack.sync_run.address) == "SERVING"
    assert health_status(stack.ha_run.address) == "SERVING"
    # Schema untouched: the Alembic heads are the ones the services created.
    versions = stack.db.alembic_versions()
    assert len(versions) == 2 and all(len(v) == 1 for v in versions.values()), versions
    # Every registered pool came from a valid request that was accepted (or from the fixture).
    pools = stack.sync.stub.ListPools(
        sync_service_pb2.ListPoolsRequest(page_size=1000), metadata=stack.sync.metadata, timeout=10
    ).pools
    for pool in pools:
        if pool.cluster_id in (NATIVE, LEGACY, *VICTIMS):
            continue
        accepted = TALLY.registered.get(pool.cluster_id)
        assert accepted is not None, f"pool {pool.cluster_id!r} registered without an accepted request"
        assert _is_valid_registration(accepted), f"an invalid registration was accepted: {accepted}"
        assert pool.master_url == accepted.master_url.rstrip("/") or pool.master_url == accepted.master_url
        assert pool.has_credentials
    # Settings are still valid.
    current = stack.ha.call("GetSettings", ha_service_pb2.GetSettingsRequest()).settings
    general = getattr(current, "global")
    for name in (
        "restart_overdue_grace",
        "agent_disconnected_grace",
        "heartbeat_interval",
        "heartbeat_timeout",
        "unprotected_retry_interval",
    ):
        duration = getattr(general, name)
        assert 0 < duration.ToTimedelta().total_seconds() <= 366 * 86400, f"{name} = {duration}"
    assert general.drift_repair_mode in (
        ha_service_pb2.DRIFT_REPAIR_MODE_REPAIR,
        ha_service_pb2.DRIFT_REPAIR_MODE_REPORT_ONLY,
    )
    for override in current.cluster_overrides:
        assert CLUSTER_ID.match(override.cluster_id), override
    # The mirror still follows XAPI for the real pool (SetVmHaConfig wrote through it meanwhile).
    stack.sim.pool("xs61").restore_host(stack.sim.pool("xs61").hosts[1])
    for cluster, pool_name in ((NATIVE, "xs82"), (LEGACY, "xs61")):
        wait_for(
            lambda c=cluster, p=pool_name: not mirror_diff(stack.sync, stack.sim.pool(p), c),  # type: ignore[arg-type]
            60,
            what=f"the mirror of {cluster} to equal XAPI",
        )
    # No credential or token in the services' logs: ours, nor any generated password.
    logs = stack.logs()
    for secret in [*stack.secrets, "victim-password", *TALLY.passwords]:
        assert secret not in logs, f"a secret ({secret[:4]}...) appears in the service logs"
