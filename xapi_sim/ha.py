"""Native HA failover, as xapi_ha_vm_failover does it when a host leaves the live set.

1. host_metrics.live=false and an HA_HOST_FAILED message;
2. every VM resident on the dead host reset to Halted with resident_on NULL;
3. protected VMs ("restart" + ha_always_run) restarted on live hosts, `order` groups ascending; a group starts in
   parallel and the next group waits until each VM of the group has booted and its start_delay has passed;
4. a failed restart is retried once, then an HA_PROTECTED_VM_RESTART_FAILED alert;
5. "best-effort" VMs afterwards if capacity allows (up to 2 retries, no alert).
Without pool HA the host is only marked not live: its VMs stay Running on it, as xapi last knew them.
"""

from __future__ import annotations

import threading
from itertools import groupby
from typing import TYPE_CHECKING

from xapi_sim import records
from xapi_sim.errors import XapiError
from xapi_sim.model import SimObject

if TYPE_CHECKING:
    from xapi_sim.pool import SimPool

PROTECTED_ATTEMPTS = 2  # first try + one retry
BEST_EFFORT_ATTEMPTS = 3  # first try + two retries


class HaEngine:
    def __init__(self, pool: SimPool) -> None:
        self.pool = pool
        self.threads: list[threading.Thread] = []

    def host_failed(self, host: SimObject) -> None:
        pool = self.pool
        store = pool.store
        with store.lock:
            metrics = pool.metrics_of(host)
            store.modify(metrics, {"live": False, "last_updated": records.XapiDateTime.now()})
            if not pool.pool_obj.rec["ha_enabled"]:
                return  # no HA: VMs stay "Running" on the dead host until someone resets them
            pool.add_message(
                "HA_HOST_FAILED",
                1,
                "Host",
                host.rec["uuid"],
                f"Server '{host.rec['name_label']}' has failed and has been fenced",
            )
            if host.ref == pool.master_ref:
                survivors = [h for h in pool.hosts if pool.is_host_live(h)]
                if survivors:
                    # The survivors elect a new master; the old master's sessions and tokens are gone.
                    store.modify(pool.pool_obj, {"master": survivors[0].ref})
                    pool.xapi_restarted()
            victims = [
                vm
                for vm in store.by_class["VM"].values()
                if vm.rec["resident_on"] == host.ref and not vm.rec["is_control_domain"]
            ]
            for vm in victims:
                pool._unplace(vm, "Halted", ha_always_run=None)
            store.notify()
            protected = [vm for vm in victims if vm.rec["ha_restart_priority"] == "restart" and vm.rec["ha_always_run"]]
            best_effort = [vm for vm in victims if vm.rec["ha_restart_priority"] == "best-effort"]
        thread = pool.run_later(lambda: self._restart_all(protected, best_effort), "ha-failover")
        self.threads.append(thread)

    def _restart_all(self, protected: list[SimObject], best_effort: list[SimObject]) -> None:
        pool = self.pool
        by_order = sorted(protected, key=lambda vm: int(vm.rec["order"]))
        for _, group in groupby(by_order, key=lambda vm: int(vm.rec["order"])):
            if pool.stopping.is_set():
                return
            self._run_parallel(list(group), PROTECTED_ATTEMPTS, alert=True)
        if best_effort and not pool.stopping.is_set():
            self._run_parallel(best_effort, BEST_EFFORT_ATTEMPTS, alert=False)
        pool.refresh_ha_plan()

    def _run_parallel(self, vms: list[SimObject], attempts: int, alert: bool) -> None:
        threads = [
            threading.Thread(target=self._restart_one, args=(vm, attempts, alert), daemon=True, name="xapi-sim-ha")
            for vm in vms
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _restart_one(self, vm: SimObject, attempts: int, alert: bool) -> None:
        pool = self.pool
        last_error: XapiError | None = None
        for attempt in range(attempts):
            with pool.store.lock:
                if pool.store.by_ref.get(vm.ref) is not vm or vm.rec["power_state"] != "Halted":
                    return  # deleted or started by someone else meanwhile
            try:
                pool.start_vm(vm)
            except XapiError as exc:
                last_error = exc
                if attempt + 1 < attempts and not pool.sleep(pool.ha_retry_seconds):
                    return
                continue
            pool.stats["ha_restarts"] += 1
            pool.sleep(float(vm.rec["start_delay"]))  # the next order group waits for this
            return
        pool.stats["ha_restart_failures"] += 1
        if alert:
            pool.add_message(
                "HA_PROTECTED_VM_RESTART_FAILED",
                2,
                "VM",
                vm.rec["uuid"],
                f"The protected VM '{vm.rec['name_label']}' (uuid {vm.rec['uuid']}) could not be restarted: "
                f"{last_error.description if last_error else ''}",
            )
