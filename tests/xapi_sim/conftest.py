"""Fixtures: simulators on real sockets, XML-RPC (real XenAPI SDK) and JSON-RPC clients."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import XenAPI

from xapi_sim import Simulator
from xapi_sim.testing import JsonXapiSession

SMALL_POOL: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "version": "citrix-hypervisor-8.2",
            "ha_enabled": True,
            "ha_host_failures_to_tolerate": 1,
            "time_scale": 0.01,
            "vm_boot_seconds": 1,
            "ha_retry_seconds": 1,
            "hosts": {"count": 3, "memory_gib": 64},
            "vms": [
                {"name": "web-1", "power_state": "Running", "ha_restart_priority": "restart", "host": 0},
                {"name": "halted-1", "power_state": "Halted"},
                {"count": 4, "name_pattern": "bulk-{i}", "power_state": "Running", "memory_mib": 512},
            ],
            "snapshots": 1,
        }
    ]
}


@pytest.fixture
def make_sim() -> Iterator[Callable[[dict[str, Any]], Simulator]]:
    started: list[Simulator] = []

    def make(scenario: dict[str, Any]) -> Simulator:
        sim = Simulator.from_scenario(copy.deepcopy(scenario)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return make_sim(SMALL_POOL)


class Clients:
    """Opens logged-in sessions of one wire format against a simulator."""

    def __init__(self, wire: str) -> None:
        self.wire = wire
        self.opened: list[Any] = []

    def session(self, url: str, user: str = "root", password: str = "password", originator: str = "tests") -> Any:
        if self.wire == "xmlrpc":
            session: Any = XenAPI.Session(url)
        else:
            session = JsonXapiSession(url, "2.0" if self.wire == "jsonrpc" else "1.0")
        if self.wire == "xmlrpc":
            session.xenapi.login_with_password(user, password, "1.0", originator)
        else:
            session.login_with_password(user, password, "1.0", originator)
        self.opened.append(session)
        return session

    def int_(self, value: Any) -> int:
        """XAPI ints: strings on XML-RPC, JSON numbers in JSON-RPC; asserts the wire type."""
        if self.wire == "xmlrpc":
            assert isinstance(value, str), value
        else:
            assert isinstance(value, int) and not isinstance(value, bool), value
        return int(value)


@pytest.fixture(params=["xmlrpc", "jsonrpc", "jsonrpc-v1"])
def clients(request: pytest.FixtureRequest) -> Clients:
    return Clients(request.param)
