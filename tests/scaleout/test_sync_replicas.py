"""Scale-out (SPEC section 7): sync_service replicas share pools through database leases with fencing epochs."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select

from sync_service.store.models import VERSION_TABLE, PoolLeaseRow
from sync_service.testing import (
    RunningSyncService,
    SyncServiceProcess,
    WatchRecorder,
    mirror_diff,
    spawn,
    wait_for,
)
from xapi_sim import Simulator
from xsha_common.db import create_engine_for, upgrade_to_head
from xsha_common.leases import db_now

POOLS = 30
LEASE = 2.0
WAIT = 60.0


def tiny_pools(count: int) -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": f"p{i}",
                "version": "citrix-hypervisor-8.2",
                "hosts": {"count": 1, "memory_gib": 16},
                "vms": [{"name": f"vm-{i}", "power_state": "Running", "host": 0, "memory_mib": 256}],
            }
            for i in range(count)
        ]
    }


@pytest.fixture
def shared_db(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite means one replica (see test_sqlite_second_replica_refused)")
    upgrade_to_head("sync_service", db_url, VERSION_TABLE)
    return db_url


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator.from_scenario(tiny_pools(POOLS)).start()
    yield simulator
    simulator.stop()


class Replicas:
    def __init__(self, db_url: str, key: str) -> None:
        self.db_url = db_url
        self.key = key
        self.procs: dict[str, SyncServiceProcess] = {}
        self.engine: Engine = create_engine_for(db_url)

    def spawn(self, name: str) -> SyncServiceProcess:
        proc = spawn(
            self.db_url,
            credentials_key=self.key,
            extra_args=[
                "--replica-id", name, "--lease-period-seconds", str(LEASE), "--event-timeout-seconds", "1",
                "--watch-poll-seconds", "0.1", "--backoff-cap-seconds", "0.5", "--backoff-base-seconds", "0.05",
            ],
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def client(self, name: str) -> RunningSyncService:
        proc = self.procs[name]
        return RunningSyncService(
            app=None,  # type: ignore[arg-type]
            database_url=self.db_url,
            credentials_key=self.key,
            auth_token="",
            channel=proc.channel,
            stub=proc.stub,
        )

    def owners(self) -> dict[str, str]:
        """cluster_id -> replica name, for live leases only (database clock)."""
        with self.engine.connect() as connection:
            now = db_now(connection)
            rows = connection.execute(
                select(PoolLeaseRow.cluster_id, PoolLeaseRow.owner).where(PoolLeaseRow.expire_time > now)
            ).all()
        return {str(cluster): str(owner).split("#")[0] for cluster, owner in rows if owner}

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGCONT)
            proc.stop()
        self.engine.dispose()


def balanced(replicas: Replicas, names: set[str]) -> dict[str, int] | None:
    owners = replicas.owners()
    counts = collections.Counter(owners.values())
    if len(owners) != POOLS or set(counts) != names:
        return None
    share = POOLS / len(names)
    return dict(counts) if all(abs(count - share) <= 1 for count in counts.values()) else None


def all_converged(client: RunningSyncService, sim: Simulator) -> list[str]:
    problems: list[str] = []
    for i in range(POOLS):
        problems += mirror_diff(client, sim.pool(f"p{i}"), f"c{i}")
    return problems


def start_replicas(db_url: str, sim: Simulator) -> Replicas:
    replicas = Replicas(db_url, Fernet.generate_key().decode())
    try:
        for name in ("r0", "r1", "r2"):
            replicas.spawn(name)
        admin = replicas.client("r0")
        for i in range(POOLS):
            admin.register_pool(f"c{i}", sim.master_url(f"p{i}"), "root", "password")
        counts = wait_for(lambda: balanced(replicas, {"r0", "r1", "r2"}), WAIT, 0.2, "10/10/10 pool shares")
        assert sorted(counts.values()) == [10, 10, 10]
        wait_for(lambda: not all_converged(admin, sim) or None, WAIT, 0.2, "every pool mirrored")
    except BaseException:
        replicas.close()  # else the replica processes outlive the test and load every test after it
        raise
    return replicas


def test_three_replicas_share_pools_and_take_over_a_killed_one(shared_db: str, sim: Simulator) -> None:
    replicas = start_replicas(shared_db, sim)
    try:
        reader = replicas.client("r1")
        _, revision = reader.list_all_vms()
        recorder = WatchRecorder(lambda: reader, revision)
        victim = replicas.owners()
        orphaned = sorted(c for c, owner in victim.items() if owner == "r0")
        killed_at = time.monotonic()
        replicas.procs["r0"].process.kill()  # SIGKILL: no lease is released
        # Changes during the takeover, in pools the dead replica watched and in others.
        for i in range(0, POOLS, 3):
            pool = sim.pool(f"p{i}")
            pool.shutdown_vm(pool.vm_by_name(f"vm-{i}"), hard=True)
        wait_for(lambda: balanced(replicas, {"r1", "r2"}), WAIT, 0.1, "the dead replica's pools taken over")
        takeover = time.monotonic() - killed_at
        print(f"takeover of {len(orphaned)} pools after kill -9: {takeover:.2f}s (lease period {LEASE}s)")
        wait_for(lambda: not all_converged(reader, sim) or None, WAIT, 0.2, "every pool converged after takeover")
        # No change lost for a WatchChanges client: every halted VM was seen halted in the stream.
        _, now_revision = reader.list_all_vms()
        recorder.wait_position(now_revision)
        recorder.stop()
        assert recorder.errors == []
        halted = {c.vm.name for c in recorder.changes if c.HasField("vm") and c.vm.power_state == 2}
        assert halted >= {f"vm-{i}" for i in range(0, POOLS, 3)}
        assert recorder.revisions() == sorted(set(recorder.revisions()))
    finally:
        replicas.close()


def test_frozen_replica_is_fenced_and_steps_down(shared_db: str, sim: Simulator) -> None:
    replicas = start_replicas(shared_db, sim)
    try:
        frozen = replicas.procs["r2"]
        held = sorted(c for c, owner in replicas.owners().items() if owner == "r2")
        frozen.process.send_signal(signal.SIGSTOP)
        # While it sleeps, its pools change in XAPI; its watchers' next batches are already on their way.
        for cluster in held:
            i = int(cluster[1:])
            pool = sim.pool(f"p{i}")
            pool.shutdown_vm(pool.vm_by_name(f"vm-{i}"), hard=True)
        wait_for(lambda: balanced(replicas, {"r0", "r1"}), WAIT, 0.1, "the frozen replica's pools taken over")
        for cluster in held:  # and change again under the new owners
            i = int(cluster[1:])
            pool = sim.pool(f"p{i}")
            pool.start_vm(pool.vm_by_name(f"vm-{i}"))
        reader = replicas.client("r0")
        wait_for(lambda: not all_converged(reader, sim) or None, WAIT, 0.2, "converged under the new owners")
        frozen.process.send_signal(signal.SIGCONT)
        # It wakes up, its writes are refused (stale epoch) and it steps down; shares rebalance to 10/10/10.
        wait_for(
            lambda: any("write refused" in line for line in frozen.log_lines) or None,
            WAIT,
            0.1,
            "a refused write logged by the resumed replica",
        )
        refused = sum("write refused" in line for line in frozen.log_lines)
        print(f"stale writes refused after SIGCONT: {refused}")
        wait_for(lambda: balanced(replicas, {"r0", "r1", "r2"}), WAIT, 0.2, "shares rebalanced after resume")
        time.sleep(LEASE)  # let anything the woken replica still had in flight land (or be refused)
        assert all_converged(reader, sim) == []
    finally:
        replicas.close()
