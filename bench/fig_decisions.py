"""Figure 4: DecideVmDeployment throughput and p99 at 32 concurrent clients, against an empty unary RPC (the
standard health Check) on the same ha_service, in the same run. The load comes from `bench.rpc_load`, a separate
process (grpc.aio), so the client never shares the server's GIL; ha_service and sync_service are child processes
and the pool is registered and mirrored, so each decision reads the real pool facts."""

from __future__ import annotations

from typing import Any

from bench.common import (
    TOKEN,
    BenchOptions,
    FigureResult,
    HaProcess,
    SimProcess,
    SyncProcess,
    fresh_database,
    log,
    pool_scenario,
    run_child_json,
    summary,
)

POOL = "decide"


def load(options: BenchOptions, target: str, method: str, clients: int, seconds: float, **extra: str) -> dict[str, Any]:
    args = ["--target", target, "--method", method, "--clients", str(clients), "--seconds", str(seconds)]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return run_child_json("bench.rpc_load", args, options.work_dir, f"rpc-load-{method}", timeout=seconds + 600)


def run(options: BenchOptions) -> list[FigureResult]:
    repeats = options.repeat_count(3)
    seconds = float(options.size("decision_seconds", 8, 3))
    clients = options.size("decision_clients", 32, 32)
    db = options.primary_db
    scenario = {"time_scale": 0.01, "pools": [pool_scenario(POOL, vms=20, hosts=3, ha_enabled=True)]}
    log(f"figure 4: decisions, {clients} clients, {seconds:.0f} s x {repeats} on {db}")
    runs: list[dict[str, Any]] = []
    with (
        SimProcess(scenario, options.work_dir, "decide") as sim,
        fresh_database(db, options.work_dir, "decide-sync") as sync_db,
        fresh_database(db, options.work_dir, "decide-ha") as ha_db,
        SyncProcess(sync_db, options.work_dir, "decide") as sync,
    ):
        sync.register(POOL, sim.master_url(POOL))
        sync.wait_watching(POOL)
        with HaProcess(ha_db, sync.address, options.work_dir, "decide") as ha:
            ha.set_native(True)
            for repeat in range(repeats):
                empty = load(options, ha.address, "health", clients, seconds)
                decide = load(
                    options,
                    ha.address,
                    "decide",
                    clients,
                    seconds,
                    cluster=POOL,
                    token=TOKEN,
                    name_prefix=f"i-{repeat}-",
                )
                log(
                    f"  repeat {repeat + 1}: empty {empty['per_second']}/s p99 {empty['p99_ms']} ms; "
                    f"decide {decide['per_second']}/s p99 {decide['p99_ms']} ms"
                )
                runs.append({"empty_rpc": empty, "decide": decide})
    decide_rates = [float(r["decide"]["per_second"]) for r in runs]
    empty_rates = [float(r["empty_rpc"]["per_second"]) for r in runs]
    decide_p99 = [float(r["decide"]["p99_ms"]) for r in runs]
    empty_p99 = [float(r["empty_rpc"]["p99_ms"]) for r in runs]
    rate_ratio = summary([d / e for d, e in zip(decide_rates, empty_rates, strict=True)])["median"]
    p99_ratio = summary([d / e for d, e in zip(decide_p99, empty_p99, strict=True)])["median"]
    met = rate_ratio >= 0.5 and p99_ratio <= 2.0 and all(not r["decide"]["errors"] for r in runs)
    return [
        FigureResult(
            figure=4,
            name=f"decisions: DecideVmDeployment throughput at {clients} concurrent clients",
            target=">= 0.5 x the empty RPC's throughput and p99 <= 2 x its p99 (same server, same run)",
            unit="decisions/s",
            values=decide_rates,
            met=met,
            db=db,
            wire="grpc",
            details={
                "decide_p99_ms": summary(decide_p99),
                "empty_rpc_per_s": summary(empty_rates),
                "empty_rpc_p99_ms": summary(empty_p99),
                "throughput_ratio": round(rate_ratio, 3),
                "p99_ratio": round(p99_ratio, 3),
                "seconds_per_run": seconds,
                "runs": runs,
            },
        )
    ]
