"""Figure 7: many pools. One sync_service replica watching 200 pools x 50 VMs (one host each) while xapi_sim
changes 200 VMs a second spread over all pools (power-state flips, `sim.mutate_vms` at 1/s per pool). Lag: probe
renames spread over the pools, timed until visible in the database (10 ms polls). CPU: utime + stime of the
sync_service child over the window, in cores."""

from __future__ import annotations

import time

from bench.common import (
    BenchOptions,
    FigureResult,
    SimProcess,
    SyncProcess,
    cpu_seconds,
    fresh_database,
    log,
    percentile,
    pool_scenario,
    rounded,
)
from bench.fig_ingest import DbObserver, Probe, probe_lags


def run(options: BenchOptions) -> list[FigureResult]:
    pools = options.size("many_pools", 200, 40)
    per_pool = options.size("many_pool_vms", 50, 50)
    rate = options.size("many_pools_rate", 200, 200)
    window = float(options.size("many_pools_seconds", 30, 8))
    db = options.primary_db
    names = [f"mp{i:03d}" for i in range(1, pools + 1)]
    scenario = {"time_scale": 0.01, "pools": [pool_scenario(name, vms=per_pool, hosts=1) for name in names]}
    log(f"figure 7: {pools} pools x {per_pool} VMs, {rate} changes/s for {window:.0f} s on {db}")
    with (
        SimProcess(scenario, options.work_dir, "many") as sim,
        fresh_database(db, options.work_dir, "many") as url,
        SyncProcess(url, options.work_dir, "many", event_timeout=30.0) as sync,
    ):
        started = time.perf_counter()
        for name in names:
            sync.register(name, sim.master_url(name))
        for name in names:
            sync.wait_watching(name, timeout=600)
        mirror_s = time.perf_counter() - started
        probes: list[Probe] = []
        for name in names:
            control = sim.control(name)
            ref = control.xapi("VM.get_by_name_label", f"{name}-vm-1")[0]
            probes.append(Probe(ref, control.xapi("VM.get_uuid", ref)))
        observer = DbObserver(url, "sync_vms", probes)
        time.sleep(2.0)
        per_pool_rate = rate / pools
        count = max(1, int(per_pool_rate * window))
        cpu_before = cpu_seconds(sync.pid)
        began = time.time()
        for name in names:
            sim.control(name).sim("mutate_vms", count, per_pool_rate, "power_state")
        sent: list[tuple[int, str, float]] = []
        interval = 0.05
        steps = int(window / interval)
        for i in range(steps):
            delay = began + i * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            index = (i * 7) % pools
            name = f"probe-{i}"
            at = time.time()
            sim.control(names[index]).sim("change_vm", probes[index].ref, "name_label", name)
            sent.append((index, name, at))
        elapsed = time.time() - began
        cpu = (cpu_seconds(sync.pid) - cpu_before) / elapsed
        deadline = time.time() + 5.0
        while time.time() < deadline and probe_lags(observer, sent).lost:
            time.sleep(0.05)
        polls = observer.polls
        observer.close()
    reflected = probe_lags(observer, sent)
    lags = reflected.lags
    p99 = percentile(lags, 99)
    log(f"  lag p50 {percentile(lags, 50) * 1000:.0f} ms p99 {p99 * 1000:.0f} ms, CPU {cpu:.2f} cores")
    return [
        FigureResult(
            figure=7,
            name=f"many pools: lag p99 with {pools} pools x {per_pool} VMs at {rate} changes/s",
            target="lag p99 <= 1 s and CPU <= 1 core",
            unit="s",
            values=[p99],
            met=p99 <= 1.0 and cpu <= 1.0,
            db=db,
            details={
                "lag_p50_s": rounded(percentile(lags, 50)),
                "lag_max_s": rounded(max(lags)),
                "cpu_cores": round(cpu, 3),
                "probes": len(sent),
                "lost": reflected.lost,
                "superseded": reflected.superseded,
                "observer_polls": polls,
                "window_s": window,
                "initial_mirror_s": round(mirror_s, 2),
            },
        )
    ]
