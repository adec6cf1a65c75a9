"""Figure 6: memory. sync_service's RSS mirroring 20 pools x 1,000 VMs, and ha_service's RSS managing every one of
those 20,000 VMs (decided through DecideVmDeployment, seen by its controller). VmRSS and VmHWM from
/proc/PID/status of the child processes."""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    TOKEN,
    BenchError,
    BenchOptions,
    FigureResult,
    HaProcess,
    SimProcess,
    SyncProcess,
    fresh_database,
    log,
    pool_scenario,
    rss_kib,
    run_child_json,
)


def run(options: BenchOptions) -> list[FigureResult]:
    pools = options.size("memory_pools", 20, 4)
    per_pool = options.size("memory_pool_vms", 1_000, 500)
    db = options.primary_db
    names = [f"mem{i:02d}" for i in range(1, pools + 1)]
    scenario = {
        "time_scale": 0.01,
        "pools": [
            pool_scenario(name, vms=per_pool, hosts=2, ha_enabled=True, ha_restart_priority="restart") for name in names
        ],
    }
    log(f"figure 6: memory, {pools} pools x {per_pool} VMs on {db}")
    details: dict[str, Any] = {"pools": pools, "vms_per_pool": per_pool}
    with (
        SimProcess(scenario, options.work_dir, "memory") as sim,
        fresh_database(db, options.work_dir, "memory-sync") as sync_db,
        fresh_database(db, options.work_dir, "memory-ha") as ha_db,
        SyncProcess(sync_db, options.work_dir, "memory") as sync,
    ):
        details["sync_idle_rss_mib"] = round(rss_kib(sync.pid)[0] / 1024, 1)
        started = time.perf_counter()
        for name in names:
            sync.register(name, sim.master_url(name))
        for name in names:
            sync.wait_watching(name, timeout=600)
        details["sync_mirror_s"] = round(time.perf_counter() - started, 2)
        time.sleep(2.0)
        sync_rss, sync_hwm = rss_kib(sync.pid)
        log(f"  sync_service RSS {sync_rss / 1024:.0f} MiB (peak {sync_hwm / 1024:.0f} MiB)")
        with HaProcess(ha_db, sync.address, options.work_dir, "memory") as ha:
            ha.set_native(True)
            details["ha_idle_rss_mib"] = round(rss_kib(ha.pid)[0] / 1024, 1)
            started = time.perf_counter()
            for name in names:
                result = run_child_json(
                    "bench.rpc_load",
                    [
                        *("--target", ha.address, "--method", "decide", "--cluster", name, "--token", TOKEN),
                        *("--count", str(per_pool), "--clients", "32", "--name-prefix", f"{name}-vm-"),
                    ],
                    options.work_dir,
                    "memory-decide",
                    timeout=900,
                )
                if result["errors"]:
                    raise BenchError(f"decisions failed: {result['errors']}")
            details["decide_s"] = round(time.perf_counter() - started, 2)
            details["decisions_per_s"] = round(pools * per_pool / details["decide_s"], 1)
            time.sleep(3.0)
            ha_rss, ha_hwm = rss_kib(ha.pid)
            sync_rss2, sync_hwm2 = rss_kib(sync.pid)
            log(f"  ha_service RSS {ha_rss / 1024:.0f} MiB (peak {ha_hwm / 1024:.0f} MiB)")
    vms = pools * per_pool
    details.update(
        {
            "sync_rss_mib": round(sync_rss / 1024, 1),
            "sync_hwm_mib": round(sync_hwm / 1024, 1),
            "sync_rss_with_ha_client_mib": round(sync_rss2 / 1024, 1),
            "sync_hwm_with_ha_client_mib": round(sync_hwm2 / 1024, 1),
        }
    )
    return [
        FigureResult(
            figure=6,
            name=f"memory: sync_service RSS mirroring {pools} pools x {per_pool} VMs",
            target="<= 250 MB",
            unit="MiB",
            values=[sync_rss / 1024],
            met=sync_hwm / 1024 <= 250,
            db=db,
            details={**details, "met_on": "VmHWM (peak)"},
        ),
        FigureResult(
            figure=6,
            name=f"memory: ha_service RSS with {vms} managed VMs",
            target="<= 200 MB",
            unit="MiB",
            values=[ha_rss / 1024],
            met=ha_hwm / 1024 <= 200,
            db=db,
            details={"ha_rss_mib": round(ha_rss / 1024, 1), "ha_hwm_mib": round(ha_hwm / 1024, 1), "vms": vms},
        ),
    ]
