"""Fixtures for sync_service tests: simulated pools on both wire formats and in-process sync services."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sync_service.testing import RunningSyncService, start
from xapi_sim import Simulator

ORIGINATOR = "xsha-sync"
WIRES = ("json", "xml")


def small_pool(*, jsonrpc: bool = True, ha_enabled: bool = True, name: str = "p") -> dict[str, Any]:
    """Three hosts, a protected VM, a halted one, a few running ones, templates and a snapshot (to filter)."""
    return {
        "pools": [
            {
                "name": name,
                "version": "citrix-hypervisor-8.2",
                "jsonrpc": jsonrpc,
                "ha_enabled": ha_enabled,
                "ha_host_failures_to_tolerate": 1,
                "time_scale": 0.01,
                "vm_boot_seconds": 1,
                "ha_retry_seconds": 1,
                "hosts": {"count": 3, "memory_gib": 64},
                "vms": [
                    {"name": "web-1", "power_state": "Running", "ha_restart_priority": "restart", "host": 0},
                    {"name": "db-1", "power_state": "Running", "ha_restart_priority": "restart", "order": 1,
                     "start_delay": 2, "host": 0},
                    {"name": "halted-1", "power_state": "Halted"},
                    {"count": 3, "name_pattern": "bulk-{i}", "power_state": "Running", "memory_mib": 512},
                ],
                "snapshots": 1,
            }
        ]
    }  # fmt: skip


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(scenario: dict[str, Any] | None = None, **options: Any) -> Simulator:
        sim = Simulator.from_scenario(copy.deepcopy(scenario or small_pool(**options))).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
    # Rule R6, checked after every test that ran a simulator: no power operation ever left sync_service.
    for sim in started:
        assert forbidden_calls_from_sync(sim) == []


@pytest.fixture
def make_sync() -> Iterator[Callable[..., RunningSyncService]]:
    started: list[RunningSyncService] = []

    def make(database_url: str, **options: Any) -> RunningSyncService:
        sync = start(database_url, **options)
        started.append(sync)
        return sync

    yield make
    for sync in reversed(started):
        sync.stop()


def forbidden_calls_from_sync(sim: Simulator) -> list[dict[str, Any]]:
    """Calls made by sync_service (recognised by its originator) outside its allow-list: VM power operations
    above all. Must always be empty (rule R6)."""
    from sync_service.xapi.allowed import ALLOWED_METHODS, canonical_method

    return [
        entry
        for entry in sync_calls(sim)
        if not entry["method"].startswith("sim.") and canonical_method(entry["method"]) not in ALLOWED_METHODS
    ]


def sync_calls(sim: Simulator) -> list[dict[str, Any]]:
    return [entry for pool in sim.pools.values() for entry in pool.calls_since(0) if entry["originator"] == ORIGINATOR]
