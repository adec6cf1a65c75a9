"""The in-process simulator: pools from a scenario, one HTTP endpoint per host, started and stopped as a unit."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from xapi_sim import control  # registers the sim.* methods
from xapi_sim.pool import SimPool
from xapi_sim.scenario import BuiltPool, build
from xapi_sim.server import HostEndpoint, PoolEndpoints


class Simulator:
    """Run with `Simulator.from_scenario(path_or_dict).start()`; `.stop()` (or a `with` block) ends it."""

    def __init__(self, built: list[BuiltPool]) -> None:
        self._pools: dict[str, SimPool] = {}
        self._endpoints: dict[str, PoolEndpoints] = {}
        for item in built:
            pool = item.pool
            endpoints = {ref: HostEndpoint(pool, ref, listen.ip, listen.port) for ref, listen in item.listen.items()}
            self._pools[pool.name] = pool
            self._endpoints[pool.name] = PoolEndpoints(pool, endpoints)
        self.running = False

    @classmethod
    def from_scenario(cls, scenario: dict[str, Any] | str | Path) -> Simulator:
        return cls(build(scenario))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Simulator:
        for pool in self._pools.values():
            pool.stopping.clear()
        for endpoints in self._endpoints.values():
            endpoints.start()
        self.running = True
        return self

    def stop(self) -> None:
        for pool in self._pools.values():
            pool.stopping.set()
            pool.unstall()
            pool.store.notify()  # wake event.from waiters
        threads = [threading.Thread(target=e.stop, daemon=True) for e in self._endpoints.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.running = False

    def restart(self) -> None:
        """xapi restarted: same state and ports; sessions and event tokens of the previous run are gone."""
        self.stop()
        for pool in self._pools.values():
            pool.xapi_restarted()
        self.start()

    def __enter__(self) -> Simulator:
        return self.start() if not self.running else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def pools(self) -> dict[str, SimPool]:
        return dict(self._pools)

    def pool(self, name: str | None = None) -> SimPool:
        """A pool by name (the only / first pool when name is None)."""
        if name is None:
            return next(iter(self._pools.values()))
        return self._pools[name]

    def host_urls(self, pool: str | None = None) -> list[str]:
        """Every host's URL in host order (`http://127.0.0.1:PORT/`), whether it is alive or not."""
        sim_pool = self.pool(pool)
        endpoints = self._endpoints[sim_pool.name].endpoints
        return [endpoints[h.ref].url for h in sim_pool.hosts]

    def host_url(self, pool: str | None, host: object) -> str:
        sim_pool = self.pool(pool)
        return self._endpoints[sim_pool.name].endpoints[sim_pool.resolve_host(host).ref].url

    def master_url(self, pool: str | None = None) -> str:
        sim_pool = self.pool(pool)
        return self._endpoints[sim_pool.name].endpoints[sim_pool.master_ref].url

    def jsonrpc_url(self, pool: str | None = None, host: object = None) -> str:
        url = self.master_url(pool) if host is None else self.host_url(pool, host)
        return url + "jsonrpc"

    def ready_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "pools": {name: control.pool_info(p) for name, p in self._pools.items()}}

    def write_ready_file(self, path: str | Path) -> None:
        """Atomically, so a parent polling for the file never reads half of it."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=".xapi-sim-ready-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.ready_info(), fh, indent=2)
        os.replace(tmp, target)
